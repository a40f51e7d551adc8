"""`python -m experiments.demo --quick` end to end: every stage trained, the report made of real numbers."""

import json
import math

import pytest
import soundfile as sf

from experiments import demo, recipe

FIELDS = ("text_accuracy", "unit_accuracy", "wer", "tokens_per_s", "speedup_vs_ar", "first_chunk_vs_ar",
          "first_packet_vs_ar")


def test_quick_demo_reports_real_numbers_for_every_decoder(demo_run):
    report = json.loads((demo_run / "report.json").read_text())
    assert isinstance(report["device"], str) and report["wall_s"] > 0
    rows = report["rows"]
    assert [r["method"] for r in rows[:2]] == ["ar", "mtp"] and rows[0]["denoise_steps"] is None
    mdm = [r for r in rows if r["method"] == "mdm"]
    assert len({r["denoise_steps"] for r in mdm}) >= 2 and any(r["distill_rounds"] > 0 for r in mdm)
    for r in rows:
        for field in FIELDS:
            assert isinstance(r[field], float) and math.isfinite(r[field]), (r["label"], field)
        assert 0 <= r["text_accuracy"] <= 1 and 0 <= r["unit_accuracy"] <= 1 and r["wer"] >= 0
        assert r["tokens_per_s"] > 0 and r["first_chunk_s"] > 0
        parts = report["first_packet_parts_s"]  # the first packet adds the LLM's and token2wav's shares
        assert r["first_packet_s"] == pytest.approx(parts["text_s"] + r["first_chunk_s"] + parts["token2wav_s"])
        assert min(parts.values()) > 0
    assert rows[0]["speedup_vs_ar"] == rows[0]["first_chunk_vs_ar"] == rows[0]["first_packet_vs_ar"] == 1.0
    assert math.isfinite(report["reference_units_wer"])
    assert len(report["dialogues"]) == report["eval_dialogues"]
    losing = [r["label"] for r in rows if r["method"] == "mdm" and r["unit_accuracy"] < rows[0]["unit_accuracy"]]
    assert ("MDM loses to AR on unit accuracy (decoder alone) at: " + ", ".join(losing) if losing
            else "MDM matches or beats AR on unit accuracy") in report["verdict"]


def test_quick_demo_writes_table_plot_wavs_and_resumable_stages(demo_run):
    table = (demo_run / "report.md").read_text()
    assert table.count("\n| ") >= 6 and "mdm distilled" in table
    assert (demo_run / "quality_vs_speed.png").stat().st_size > 10_000
    wavs = sorted((demo_run / "wavs").rglob("*.wav"))
    assert len(wavs) >= 5
    audio, rate = sf.read(wavs[0])
    assert rate == 16_000 and len(audio) > 0
    for stage in ("stage1", "mdm", "ar", "mtp", "distill"):
        assert (demo_run / stage / "params" / "config.json").exists()
        assert any((demo_run / stage / "checkpoints").iterdir())


def test_a_second_demo_run_reuses_every_stage(demo_run, capsys):
    """`make demo` again after a finished run: every stage's settings match its stamp, nothing retrains."""
    corpus = json.loads((demo_run / "corpus" / "corpus.json").read_text())
    stages = demo.train_stages(demo_run, str(demo_run / "corpus"), corpus, recipe.QUICK, lambda _, fn, *a: fn(*a))
    assert capsys.readouterr().out.count("reusing exported params") == len(stages) == 5
    assert all(path == str((demo_run / name / "params").absolute()) for name, path in stages.items())
