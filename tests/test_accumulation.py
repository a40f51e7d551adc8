"""Gradient accumulation: one update with `optimizer.accum_steps=2` equals the `accum_steps=1`
update on the same global batch, whose rows have ragged lengths (so micro-batches average over
different token counts, and averaging their means uniformly would be wrong). Sharded: test_sharded_step."""

import jax
import numpy as np
from small_train import small_overrides

from mdm_jax.config.train import get_train_config
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch
from mdm_jax.train.objectives import LOSS_TOKENS
from mdm_jax.train.optimizer import make_optimizer
from mdm_jax.train.step import init_state, make_train_step

SMALL = small_overrides(batch=8)


def two_updates(stage: str, accum: int, params):
    """Params after two steps (the first at warm-up's zero learning rate) and each step's metrics."""
    cfg = get_train_config("tiny", [*SMALL, stage, f"optimizer.accum_steps={accum}"])
    optimizer = make_optimizer(cfg)
    state, step, source = init_state(cfg, optimizer, jax.random.key(0), params), make_train_step(cfg, optimizer), \
        SyntheticSource(cfg)
    metrics = []
    for _ in range(2):
        state, m = step(state, model_batch(next(source), cfg.model, SYNTHETIC_SPEECH_ID))
        metrics.append(jax.device_get(m))
    return jax.device_get(state.trainable), metrics


def test_two_micro_batches_update_as_one_batch():
    """Stage I (stage II's MDM accumulates on a sharded mesh in test_sharded_step)."""
    params = jax.device_get(random_params(get_train_config("tiny", SMALL).model))  # host copy: steps donate
    whole, m1 = two_updates("stage.name=text", 1, params)
    halves, m2 = two_updates("stage.name=text", 2, params)
    for a, b in zip(m1, m2):  # the loss and the gradient's norm, before Adam rescales it
        assert a[LOSS_TOKENS] == b[LOSS_TOKENS] > 0
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-5)
    moved = jax.tree.map(lambda a, p: float(np.abs(a - p).max()), whole["params"], params)
    assert max(jax.tree.leaves(moved)) > 1e-4, "the update moved nothing: the test would be vacuous"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), halves, whole)
