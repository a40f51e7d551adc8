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
    assert set(report["targets"]) == set(demo.targets(rows, report["text_accuracy"]))
    assert len(report["targets"]) == 8 and all(isinstance(v, bool) for v in report["targets"].values())
    for r in mdm:  # the paired distillation effect, distilled minus stage 2 at the same steps
        assert ("vs_undistilled" in r) == r["distilled"]


def test_targets_compare_by_point_values_and_paired_intervals():
    f = lambda v, lo=None, hi=None: {"value": v, "lo": v - 0.05 if lo is None else lo,
                                     "hi": v + 0.05 if hi is None else hi}
    rows = [{"label": "ar", "method": "ar", "unit_accuracy": f(0.9), "length_ratio": 1.0, "speedup_vs_ar": 1.0},
            {"label": "mdm S=1", "method": "mdm", "unit_accuracy": f(0.7), "length_ratio": 1.04},
            {"label": "mdm S=4", "method": "mdm", "unit_accuracy": f(0.86), "length_ratio": 0.97},
            {"label": "mdm distilled S=1", "method": "mdm", "unit_accuracy": f(0.80), "length_ratio": 1.06,
             "speedup_vs_ar": 4.5, "vs_undistilled": {"unit_accuracy": f(0.12, 0.01, 0.2)},
             "vs_ar": {"wer": f(0.1, 0.02, 0.3)}}]
    t = demo.targets(rows, f(0.7))
    assert t["AR unit accuracy >= 0.85"] and t["MDM stage 2 S=4 unit accuracy >= 0.95 x AR"]  # 0.86 >= 0.855
    assert t["distilled S=1 unit accuracy >= 0.90 x AR"] is False  # 0.80 < 0.81
    assert t["distilled S=1 above stage 2 S=1 (paired interval > 0)"]
    assert not t["distilled S=1 end-to-end WER not worse than AR (paired interval reaches <= 0)"]  # lo 0.02 > 0
    assert t["distilled S=1 tokens/s >= 4 x AR"] and not t["every MDM row's length ratio within 1.00 +- 0.05"]


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
