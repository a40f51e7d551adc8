"""`python -m experiments.demo --quick` end to end: every stage trained, the report made of real numbers."""

import json
import math
import re

import jax
import pytest
import soundfile as sf

from experiments import demo, recipe
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.config.train import get_train_config
from mdm_jax.eval.intervals import Counts
from mdm_jax.model.vocalnet import init_params

SPEED = ("tokens_per_s", "speedup_vs_ar", "first_chunk_vs_ar", "first_packet_vs_ar")


def _figure(f, low=0.0, high=1.0):
    assert low <= f["lo"] <= f["value"] <= f["hi"] <= high, f


def test_quick_demo_reports_real_numbers_with_intervals_for_every_decoder(demo_run):
    report = json.loads((demo_run / "report.json").read_text())
    assert isinstance(report["device"], str) and report["wall_s"] > 0 and report["seeds"] == 1
    assert report["preset"] == "quick" and report["eval_dialogues"] == recipe.QUICK.eval_dialogues
    rows = report["rows"]
    assert [r["method"] for r in rows[:2]] == ["ar", "mtp"] and rows[0]["denoise_steps"] is None
    mdm = [r for r in rows if r["method"] == "mdm"]
    steps = recipe.QUICK.denoise_steps
    assert [r["denoise_steps"] for r in mdm] == [*steps, *steps]  # the curve: undistilled, then distilled
    assert [r["distilled"] for r in mdm] == [False] * len(steps) + [True] * len(steps)
    for f in (report["text_accuracy"], report["novel_text_accuracy"]):
        _figure(f)
    _figure(report["reference_units_wer"], high=math.inf)
    parts = report["first_packet_parts_ms"]
    assert set(parts) == {"encoder", "thinker", "vocoder"} and min(parts.values()) > 0
    for r in rows:
        for field in SPEED:
            assert isinstance(r[field], float) and math.isfinite(r[field]) and r[field] > 0, (r["label"], field)
        _figure(r["unit_accuracy"])
        _figure(r["novel_unit_accuracy"])
        assert ("wer" in r) == demo.judged(SamplerConfig(r["method"], r["denoise_steps"] or 1), recipe.QUICK)
        if "wer" in r:
            _figure(r["wer"], high=math.inf)
        packet = r["first_packet_ms"]  # encoder + Thinker + this Talker's first block + vocoder
        assert packet["total"] == pytest.approx(parts["encoder"] + parts["thinker"] + packet["talker"]
                                                + parts["vocoder"])
        assert packet["talker"] == pytest.approx(r["first_chunk_s"] * 1e3)
    _figure(rows[0]["wer_alone"], high=math.inf)
    assert "wer" in rows[0] and "wer" not in rows[1]  # AR always judged; MTP not at the QUICK budget
    assert rows[0]["speedup_vs_ar"] == rows[0]["first_chunk_vs_ar"] == rows[0]["first_packet_vs_ar"] == 1.0
    assert len(report["dialogues"]) == report["eval_dialogues"]
    for r in mdm:  # the verdict names each judged MDM row on the side its interval puts it
        diff = r["vs_ar"]["unit_accuracy"]
        side = "worse" if diff["hi"] < 0 else "better" if diff["lo"] > 0 else "no difference called"
        part = report["verdict"].split("end-to-end WER")[0]
        assert re.search(f"{side} at [^;.]*{re.escape(r['label'])}", part), (r["label"], report["verdict"])
    assert set(report["targets"]) == {"text_accuracy >= 0.6", "AR unit accuracy (alone) >= 0.3",
                                      "AR WER (alone) <= 1.5 x reference-unit WER"}


def test_pooling_two_seeds_widens_nothing_it_should_not(demo_run):
    """`--seeds N` pools the seeds' per-dialogue counts: the same seed twice gives the same figures."""
    seed = json.loads((demo_run / "seed_report.json").read_text())
    one = demo.summarise([seed], Counts.of([(1, 4), (2, 4), (0, 3)]), 0.1)
    two = demo.summarise([seed, seed], Counts.of([(1, 4), (2, 4), (0, 3)]), 0.1)
    for a, b in zip(one["rows"], two["rows"]):
        assert a["unit_accuracy"]["value"] == pytest.approx(b["unit_accuracy"]["value"])
        assert a["tokens_per_s"] == pytest.approx(b["tokens_per_s"])
    assert two["seeds"] == 2 and two["text_accuracy"]["value"] == pytest.approx(one["text_accuracy"]["value"])


def test_quick_demo_writes_table_plot_wavs_and_resumable_stages(demo_run):
    table = (demo_run / "report.md").read_text()
    assert table.count("\n| ") >= 6 and "mdm distilled" in table and "Targets (main split)" in table
    assert (demo_run / "quality_vs_speed.png").stat().st_size > 10_000
    assert (demo_run / "quality_vs_steps.png").stat().st_size > 10_000
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


@pytest.mark.parametrize("preset", sorted(recipe.BUDGETS))
def test_every_preset_gives_valid_stage_configs_and_params(preset):
    """The GPU preset is not run here: at least every stage's config validates and its params build."""
    budget = recipe.BUDGETS[preset]
    base = recipe.model_overrides({"units": {"k": budget.units}}, budget) + recipe.data_overrides("c", budget)
    for stage in ("stage1", "mdm", "ar", "mtp", "distill"):
        cfg = get_train_config(recipe.PRESET, base + recipe.stage_overrides(stage, budget))
        assert cfg.data.batch_size == budget.batch_size
    shapes = jax.eval_shape(lambda: init_params(cfg.model, jax.random.key(0)))
    m = cfg.model
    assert shapes["llm"]["embed"]["embedding"].shape == (m.llm.vocab_size, m.llm.d_model)
    assert shapes["speech_decoder"]["anchor"]["w"].shape == (m.llm.d_model, m.speech_decoder.d_model)
