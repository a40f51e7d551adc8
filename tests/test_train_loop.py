"""Trainer: freezing and weight-decay masks, the non-finite guard, metrics, CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from small_train import small_overrides

from mdm_jax.config.train import StageConfig, get_train_config, train_keys
from mdm_jax.train.checkpointing import Checkpointer
from mdm_jax.train.data import SyntheticSource
from mdm_jax.train.loop import TrainingDiverged, train
from mdm_jax.train.optimizer import decays, make_optimizer, trainable
from mdm_jax.train.step import init_state

SMALL = small_overrides(llm_kv_heads=1, steps=20)
CFG = get_train_config("tiny", SMALL)


class NaNSource(SyntheticSource):
    """Synthetic batches whose audio is NaN for the 1-based batch numbers in `bad`."""

    def __init__(self, cfg, bad):
        super().__init__(cfg)
        self.bad = bad

    def __next__(self):
        batch = super().__next__()
        if self.index in self.bad:
            batch["mel"] = np.full_like(batch["mel"], np.nan)
        return batch


def names(path):
    return "/".join(k.key for k in path)


def test_stage_masks_freeze_and_decay_the_right_leaves():
    tree = jax.eval_shape(lambda: init_state(get_train_config("tiny", ["stage.name=text"]), make_optimizer(CFG),
                                             jax.random.key(0))).trainable
    stage1 = {names(p) for p, t in jax.tree_util.tree_leaves_with_path(trainable(tree, StageConfig("text"))) if t}
    assert stage1 and all(n.startswith(("params/adaptor/", "lora/llm/")) for n in stage1)
    assert any(n.startswith("lora/") for n in stage1) and any(n.startswith("params/adaptor") for n in stage1)
    whole_llm = trainable(tree, StageConfig("text", train_llm=True))
    full = {names(p) for p, t in jax.tree_util.tree_leaves_with_path(whole_llm) if t}
    assert full - stage1 and all(n.startswith(("params/adaptor/", "params/llm/", "lora/")) for n in full)
    assert "params/llm/layers/stacked/attn/wq" in full and "params/encoder" not in str(full)
    stage2 = {names(p) for p, t in jax.tree_util.tree_leaves_with_path(trainable(tree, StageConfig("speech"))) if t}
    assert stage2 and all(n.startswith("params/speech_decoder/") for n in stage2)
    decayed = {names(p) for p, d in jax.tree_util.tree_leaves_with_path(decays(tree)) if d}
    assert "params/llm/layers/stacked/attn/wq" in decayed
    assert "lora/llm/layers/stacked/attn/wq/b" in decayed
    assert not any(n.startswith("params/") and n.endswith(("scale", "/b", "embedding", "embed_positions", "bias"))
                   for n in decayed)


def test_nonfinite_updates_are_skipped_counted_and_stop_the_run(tmp_path):
    cfg = get_train_config("tiny", SMALL + ["max_bad_steps=3", "checkpoint.every=1", "checkpoint.max_to_keep=10",
                                            "log_every=1"])
    with pytest.raises(TrainingDiverged, match="3 consecutive non-finite"):
        train(cfg, str(tmp_path), source=NaNSource(cfg, bad={3, 4, 6, 7, 8}), log=lambda *_: None)
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["finite"] for r in lines] == [1, 1, 0, 0, 1, 0, 0, 0]
    assert [r["bad_streak"] for r in lines] == [0, 0, 1, 2, 0, 1, 2, 3] and lines[-1]["skipped"] == 5
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "padding", "mdm/accuracy"} <= set(lines[1])
    ckpt = Checkpointer(tmp_path / "checkpoints", cfg.checkpoint)
    assert ckpt.latest_step() == 7  # the run stopped at step 8, before saving it
    saved = {step: ckpt.saved_state(step) for step in (2, 4, 5, 7)}
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, saved[4]["params"], saved[2]["params"])  # steps 3-4 skipped
    jax.tree.map(np.testing.assert_array_equal, saved[4]["opt_state"], saved[2]["opt_state"])
    assert not np.array_equal(saved[5]["params"]["speech_decoder"]["head"]["w"],
                              saved[4]["params"]["speech_decoder"]["head"]["w"])  # step 5 trained
    assert all(np.isfinite(x).all() for s in saved.values() for x in jax.tree.leaves(s))


def test_distillation_rounds_halve_the_steps_and_promote_the_student(tmp_path):
    overrides = SMALL + ["stage.name=distill", "distill.allocation=schedule", "mask.strategy=sampler_states",
                         "distill.start_denoise_steps=2", "train_steps=3", "distill.round_updates=1",
                         "checkpoint.every=1", "log_every=1"]
    cfg = get_train_config("tiny", overrides)
    # its own process: late in the full suite XLA's CPU compiler segfaulted on this step, never alone
    done = subprocess.run([sys.executable, "-m", "mdm_jax.train", "--workdir", str(tmp_path), *overrides],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["distill/steps"] for r in lines] == [2, 1, 1] and [r["distill_round"] for r in lines] == [0, 1, 1]
    ckpt = Checkpointer(tmp_path / "checkpoints", cfg.checkpoint)
    after_1, after_3 = ckpt.saved_state(1), ckpt.saved_state(3)
    ckpt.close()
    # round 1 began after step 1: its teacher is the student of that moment, frozen since
    jax.tree.map(np.testing.assert_array_equal, after_3["teacher"], after_1["params"]["speech_decoder"])


def test_cli_help_lists_every_key_and_rejects_unknown_ones():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "mdm_jax.train", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and all(key in out.stdout for key in train_keys())
    out = subprocess.run([sys.executable, "-m", "mdm_jax.train", "--workdir", "x", "optimizer.lrate=1"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "unknown config key 'optimizer.lrate'" in out.stderr
