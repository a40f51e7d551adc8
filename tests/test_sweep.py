"""`python -m experiments.sweep`: the grids' plans of Talkers, rows and claims, and a 2-point version of
the paper's ablations (a stage 2 Talker and its distillation, two seeds, one claim) that starts from
the shared quick demo run's stage I and LLM states."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments import sweep
from mdm_jax.config.overrides import ConfigError

GRID_2 = """
MASKING = ("bernoulli",)
DENOISE_STEPS = (1,)
BLOCK_SIZE = (16,)
DISTILL = (("hierarchical", 0.7),)
AR_REFERENCE = False
_DISTILLED = "mdm-bernoulli-b16-distill-hierarchical-a0.7"
CLAIMS = (("distillation helps one step", (_DISTILLED, 1), ("mdm-bernoulli-b16", 1), "above"),)
"""


def test_masking_grid_plan():
    grid = sweep.load_grid("experiments/grids/masking.py")
    todo = sweep.decoders(grid, 16)
    assert len(todo) == 1 + 6 * 3 * (1 + 1 + 3) and todo[0].name == "ar-b16"  # stage II, paper's, 3 SDTT
    assert len({d.name for d in todo}) == len(todo)
    for i, d in enumerate(todo):  # every distilled decoder comes after the MDM decoder it starts from
        assert not d.distillation or d.teacher in todo[:i]
    assert len(sweep.evaluated(grid, todo)) == 1 + 6 * 3 * 5 * 5


def test_paper_ablations_grid_plan():
    grid = sweep.load_grid("experiments/grids/paper_ablations.py")
    todo = sweep.decoders(grid, 16)
    assert [d.name for d in todo] == [
        "ar-b16", "mdm-bernoulli-b16", "mdm-bernoulli-b16-distill-hierarchical-a0",
        "mdm-bernoulli-b16-distill-hierarchical-a0.7", "mdm-bernoulli-b16-distill-hierarchical-a0.9",
        "mdm-bernoulli-b16-distill-bernoulli-a0.7", "mdm-hierarchical-b16"]
    assert all(d.teacher.name == "mdm-bernoulli-b16" for d in todo if d.distillation)
    assert len(sweep.evaluated(grid, todo)) == 1 + 6 * 5
    assert len(grid.claims) == 10 and {name for name, _ in grid.paper} == {d.name for d in todo}
    claim1 = sweep.load_grid("experiments/grids/mdm_vs_ar.py")  # its Talkers are the ablations' (same workdirs)
    assert {d.name for d in sweep.decoders(claim1, 16)} < {d.name for d in todo} and len(claim1.claims) == 13


def test_end_of_speech_grid_names_the_option_and_passes_it(monkeypatch, tmp_path):
    grid = sweep.load_grid("experiments/grids/end_of_speech.py")
    todo = sweep.decoders(grid, 16)
    assert [d.name for d in todo] == ["ar-b16", "mdm-bernoulli-b16", "mdm-bernoulli-b16-distill-hierarchical-a0.7",
                                      "mdm-bernoulli-b16-pad", "mdm-bernoulli-b16-pad-distill-hierarchical-a0.7"]
    assert todo[-1].teacher.name == "mdm-bernoulli-b16-pad" and len(grid.claims) == 6
    runs = {}  # each workdir's overrides, caught instead of training
    monkeypatch.setattr(sweep.recipe, "run_stage", lambda workdir, overrides, log: runs.setdefault(
        Path(workdir).name, overrides) and f"{workdir}/params")
    sweep.train(todo, tmp_path, [], sweep.recipe.QUICK, "stage1")
    after = {name: [o for o in overrides if o.startswith("mask.after_eos")] for name, overrides in runs.items()}
    assert after == {"ar-b16": [], "mdm-bernoulli-b16": [], "mdm-bernoulli-b16-distill-hierarchical-a0.7": [],
                     "mdm-bernoulli-b16-pad": ["mask.after_eos=pad"],
                     "mdm-bernoulli-b16-pad-distill-hierarchical-a0.7": ["mask.after_eos=pad"]}
    distilled = runs["mdm-bernoulli-b16-pad-distill-hierarchical-a0.7"]
    assert f"init_from={tmp_path}/mdm-bernoulli-b16-pad/params" in distilled


def test_grid_typos_fail_before_training(tmp_path):
    (tmp_path / "bad.py").write_text(GRID_2.replace("DENOISE_STEPS", "STEPS"))
    with pytest.raises(ConfigError, match="STEP"):
        sweep.load_grid(str(tmp_path / "bad.py"))
    (tmp_path / "bad.py").write_text(GRID_2.replace('"hierarchical"', '"hierarchichal"'))
    with pytest.raises(ConfigError, match="hierarchichal"):
        sweep.load_grid(str(tmp_path / "bad.py"))
    (tmp_path / "bad.py").write_text(GRID_2.replace('("mdm-bernoulli-b16", 1)', '("mdm-bernoulli-b16", 4)'))
    with pytest.raises(ConfigError, match="not rows of this grid"):  # S=4 is not evaluated by this grid
        sweep.load_grid(str(tmp_path / "bad.py"))


def test_quick_sweep_pools_seeds_judges_claims_and_writes_results(demo_run, tmp_path):
    (tmp_path / "grid.py").write_text(GRID_2)
    out = tmp_path / "sweep"
    out.mkdir()
    shutil.copy(demo_run / "token2wav.msgpack", out)  # the sweep reuses a trained token2wav in OUT
    args = ["--grid", str(tmp_path / "grid.py"), "--out", str(out), "--quick", "--corpus", str(demo_run / "corpus"),
            "--stage1", str(demo_run / "stage1" / "params"), "--llm-states", str(demo_run / "llm_states.npz")]
    sweep.main(args + ["--seed", "1"])  # a worker: one seed, no report
    assert not (out / "grid").exists()
    cached = (out / "seed1" / "mdm-bernoulli-b16" / "eval_rows.jsonl").read_text()
    sweep.main(args + ["--seeds", "2"])  # trains seed 0, pools both: seed 1's rows are reused, not recomputed
    assert (out / "seed1" / "mdm-bernoulli-b16" / "eval_rows.jsonl").read_text() == cached
    report = out / "grid"  # named for the grid file
    rows = list(csv.DictReader((report / "results.csv").open()))
    assert [(r["masking"], r["distillation"], r["denoise_steps"], r["block_size"], r["seeds"]) for r in rows] == [
        ("bernoulli", "", "1", "16", "2"), ("bernoulli", "distill-hierarchical-a0.7", "1", "16", "2")]
    for r in rows:
        assert 0 <= float(r["unit_accuracy"]) <= 1 and float(r["length_ratio"]) >= 0 and float(r["wer"]) >= 0
        assert float(r["tokens_per_s"]) > 0 and float(r["first_chunk_s"]) > 0
        assert all(math.isfinite(float(r[k])) for k in ("unit_accuracy", "length_ratio", "wer", "tokens_per_s"))
        assert r["speedup_vs_ar"] == ""  # no AR reference in this grid
    for r, decoder in zip(rows, ("mdm-bernoulli-b16", "mdm-bernoulli-b16-distill-hierarchical-a0.7")):
        per_seed = [json.loads((out / f"seed{k}" / decoder / "eval_rows.jsonl").read_text()) for k in (0, 1)]
        num = sum(np.sum(s["counts"]["unit_accuracy"]["num"]) for s in per_seed)
        den = sum(np.sum(s["counts"]["unit_accuracy"]["den"]) for s in per_seed)
        assert float(r["unit_accuracy"]) == pytest.approx(num / den)  # pooled over both seeds' dialogues
    assert (out / "seed1" / "mdm-bernoulli-b16" / "params").is_dir()  # each seed trains its own Talkers
    result = json.loads((report / "results.json").read_text())
    (claim,) = result["claims"]
    assert claim["a"] == ["mdm-bernoulli-b16-distill-hierarchical-a0.7", 1] and claim["verdict"] in (
        "holds", "reversed", "not separable at our scale")
    d = claim["unit_accuracy"]
    assert d["lo"] <= d["value"] <= d["hi"] and d["value"] == pytest.approx(
        float(rows[1]["unit_accuracy"]) - float(rows[0]["unit_accuracy"]))
    md = (report / "results.md").read_text()
    assert md.count("\n| mdm |") == 2 and "seeds: 2" in md and claim["verdict"] in md
    for name in ("quality_vs_steps.png", "speed_vs_quality.png", "claims.png"):
        assert (report / name).stat().st_size > 10_000
