"""`python -m experiments.learning_curves` and `experiments.diagnose_talker` on the shared quick demo:
every Talker kind (AR, MDM with a variant, a distillation from a teacher checkpoint) trained a few
steps, each checkpoint evaluated with intervals, the wall-seconds axis from the run's own step times,
the plot and tables written; the diagnosis of an AR and an MDM Talker with the sampler options."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import learning_curves
from mdm_jax.config.overrides import ConfigError


def test_variant_and_distill_specs():
    assert learning_curves.parse_variant("eos=mdm-bernoulli:mask.after_eos=eos,seed=3") == (
        "eos", "mdm-bernoulli", ("mask.after_eos=eos", "seed=3"))
    assert learning_curves.parse_distill("mdm-bernoulli@500,1000") == ("mdm-bernoulli", [500, 1000])
    for bad in ("eos", "=mdm:x=1"):
        with pytest.raises(ConfigError, match="NAME=BASE"):
            learning_curves.parse_variant(bad)
    with pytest.raises(ConfigError, match="TALKER@STEP"):
        learning_curves.parse_distill("mdm@five")


def test_train_seconds_skip_compilation_and_resumed_repeats(tmp_path):
    lines = [{"step": 10, "step_time": 0.5}, {"step": 20, "step_time": 0.25}, {"step": 20, "step_time": 9.0},
             {"step": 30, "step_time": 1.0}]  # a resumed run logs step 20 again
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert learning_curves.train_seconds(tmp_path, [0, 5, 10, 20, 25, 30, 40]) == {
        0: 0.0, 5: 2.5, 10: 5.0, 20: 7.5, 25: 12.5, 30: 17.5, 40: None}


def _cli(module: str, args: list[str]):
    """`python -m module args` as a user runs it, in its own process: XLA's CPU compiler segfaulted
    compiling the distillation step late in the full suite's process (twice), not in shorter runs."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_quick_curves_and_diagnosis(demo_run, tmp_path):
    out = tmp_path / "curves"
    corpus = str(demo_run / "corpus")
    _cli("experiments.learning_curves", [
        "--demo", str(demo_run), "--out", str(out), "--corpus", corpus, "--quick", "--talkers", "ar",
        "--variant", "mdm-pad=mdm-bernoulli:mask.after_eos=pad", "--steps", "4", "--every", "2",
        "--distill-from", "mdm-pad@2", "--distill-updates", "2", "--denoise-steps", "1", "--eval-dialogues", "2"])
    result = json.loads((out / "curves.json").read_text())
    points = result["points"]
    by = {(p["talker"], p["step"]) for p in points}
    assert by == {("ar", 2), ("ar", 4), ("mdm-pad", 2), ("mdm-pad", 4), ("mdm-pad-distill@2", 1),
                  ("mdm-pad-distill@2", 2)}
    for p in points:
        assert 0 <= p["unit_accuracy"]["lo"] <= p["unit_accuracy"]["value"] <= p["unit_accuracy"]["hi"] <= 1
        assert p["train_s"] > 0 and ("wer_alone" in p) == (p["step"] == max(q["step"] for q in points
                                                                             if q["talker"] == p["talker"]))
    assert [p["teacher_step"] for p in points if p["talker"] == "mdm-pad-distill@2"] == [2, 2]
    assert json.loads((out / "mdm-pad" / "train_config.json").read_text())["mask"]["after_eos"] == "pad"
    assert set(result["plateau"]) == {"ar ar", "mdm-pad S=1", "mdm-pad-distill@2 S=1"}
    assert (out / "learning_curves.png").stat().st_size > 10_000 and (out / "learning_curves_all.png").exists()
    assert "| mdm-pad | S=1 |" in (out / "curves.md").read_text()

    diag = tmp_path / "diagnosis"
    _cli("experiments.diagnose_talker", [
        "--demo", str(demo_run), "--out", str(diag), "--corpus", corpus, "--eval-dialogues", "2",
        "--talker", f"ar={out / 'ar'}", "--talker", f"mdm={out / 'mdm-pad'}@2",
        "--talker", f"distilled={demo_run / 'distill' / 'params'}", "--denoise-steps", "1,2", "--ratios", "0.5,1.0",
        "--sampler-grid"])
    results = {r["talker"]: r for r in json.loads((diag / "diagnosis.json").read_text())["results"]}
    assert results["ar"]["loss_by_mask_ratio"] is None and [r["sampler"] for r in results["ar"]["rows"]] == ["ar"]
    samplers = [r["sampler"] for r in results["mdm"]["rows"]]
    assert samplers == ["S=1", "S=2", "S=2 calibrated", "S=2 max_prob exit 0.9", "S=2 calibrated exit 0.9"]
    assert set(results["distilled"]["loss_by_mask_ratio"]) == {"0.5", "1.0"}
    assert set(results["mdm"]["end_of_speech"]) == {"pad", "sampler"} and results["ar"]["end_of_speech"] is None
    assert "| mdm | every key |" in (diag / "diagnosis.md").read_text()
    for row in results["mdm"]["rows"]:
        assert 1 <= row["forwards_per_block"] <= int(row["sampler"].split()[0][2:])  # early exit: at most S
    assert (diag / "diagnosis.png").stat().st_size > 10_000
