"""`python -m experiments.sweep`: the grid's plan of decoders and rows, and a 2-point quick sweep that
starts from the shared quick demo run's stage I and LLM states."""

import csv
import math
import shutil

import pytest

from experiments import sweep
from mdm_jax.config.overrides import ConfigError

GRID_2 = """
MASKING = ("iid", "sampler_states")
DENOISE_STEPS = (1,)
BLOCK_SIZE = (15,)
DISTILL_ROUNDS = (0,)
AR_REFERENCE = False
"""


def test_masking_grid_plan():
    grid = sweep.load_grid("experiments/grids/masking.py")
    todo = sweep.decoders(grid, 15)
    assert len(todo) == 1 + 4 * 3 * 4 and todo[0].name == "ar-b15"
    assert len({d.name for d in todo}) == len(todo)
    for i, d in enumerate(todo):  # every distilled decoder comes after the MDM decoder it starts from
        assert not d.distill_rounds or d.teacher in todo[:i]
    assert len(sweep.evaluated(grid, todo)) == 1 + 4 * 3 * 4 * 5


def test_grid_typos_fail_before_training(tmp_path):
    (tmp_path / "bad.py").write_text(GRID_2.replace("DENOISE_STEPS", "STEPS"))
    with pytest.raises(ConfigError, match="STEP"):
        sweep.load_grid(str(tmp_path / "bad.py"))
    (tmp_path / "bad.py").write_text(GRID_2.replace('"iid"', '"idd"'))
    with pytest.raises(ConfigError, match="idd"):
        sweep.load_grid(str(tmp_path / "bad.py"))


def test_quick_sweep_writes_results_and_plots(demo_run, tmp_path):
    (tmp_path / "grid.py").write_text(GRID_2)
    out = tmp_path / "sweep"
    out.mkdir()
    shutil.copy(demo_run / "token2wav.msgpack", out)  # the sweep reuses a trained token2wav in OUT
    sweep.main(["--grid", str(tmp_path / "grid.py"), "--out", str(out), "--quick", "--corpus", str(demo_run / "corpus"),
                "--stage1", str(demo_run / "stage1" / "params"), "--llm-states", str(demo_run / "llm_states.npz")])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["masking"], r["denoise_steps"], r["block_size"]) for r in rows] == [
        ("iid", "1", "15"), ("sampler_states", "1", "15")]
    for r in rows:
        assert 0 <= float(r["unit_accuracy"]) <= 1 and float(r["length_ratio"]) >= 0 and float(r["wer"]) >= 0
        assert float(r["tokens_per_s"]) > 0 and float(r["first_chunk_s"]) > 0
        assert all(math.isfinite(float(r[k])) for k in ("unit_accuracy", "length_ratio", "wer", "tokens_per_s"))
        assert r["speedup_vs_ar"] == ""  # no AR reference in this grid
    assert (out / "results.md").read_text().count("\n| mdm |") == 2
    for name in ("quality_vs_steps.png", "speed_vs_quality.png"):
        assert (out / name).stat().st_size > 10_000
