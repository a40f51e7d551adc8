"""Gradient accumulation: one update with `optimizer.accum_steps=2` equals the `accum_steps=1`
update on the same global batch, whose rows have ragged lengths (so micro-batches average over
different token counts, and averaging their means uniformly would be wrong), for every objective
whose noise is drawn on the global batch; every logged metric too. Sharded: test_sharded_step.
Distillation draws its noise per micro-batch, so its two runs see different noise: not compared."""

import jax
import numpy as np
import pytest
from small_train import small_overrides

from mdm_jax.config.train import get_train_config
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch
from mdm_jax.train.objectives import LOSS_TOKENS
from mdm_jax.train.optimizer import make_optimizer
from mdm_jax.train.step import init_state, make_train_step

SMALL = small_overrides(batch=8) + ["model.speech_decoder.mtp_modules=2"]
OBJECTIVES = {
    "text": ["stage.name=text"],
    "mdm": ["stage.name=speech", "stage.objective=mdm"],
    "mdm_unweighted": ["stage.name=speech", "stage.objective=mdm", "mask.elbo=false"],
    "ar": ["stage.name=speech", "stage.objective=ar"],
    "mtp": ["stage.name=speech", "stage.objective=mtp"],
}


def two_updates(stage: list[str], accum: int, params):
    """Params after two steps (the first at warm-up's zero learning rate) and each step's metrics."""
    cfg = get_train_config("tiny", [*SMALL, *stage, f"optimizer.accum_steps={accum}"])
    optimizer = make_optimizer(cfg)
    state, step, source = init_state(cfg, optimizer, jax.random.key(0), params), make_train_step(cfg, optimizer), \
        SyntheticSource(cfg)
    metrics = []
    for _ in range(2):
        batch = model_batch(next(source), cfg.model, SYNTHETIC_SPEECH_ID)
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    lengths = batch["speech_valid"].sum(1)
    assert len(set(lengths[0::2].tolist() + lengths[1::2].tolist())) > 1, "rows must be ragged"
    return jax.device_get(state.trainable), metrics


@pytest.fixture(scope="module")
def params():
    return jax.device_get(random_params(get_train_config("tiny", SMALL).model))  # host copy: steps donate


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_micro_batches_update_as_one_batch(objective, params):
    whole, m1 = two_updates(OBJECTIVES[objective], 1, params)
    halves, m2 = two_updates(OBJECTIVES[objective], 2, params)
    for a, b in zip(m1, m2):  # the loss, every metric and the gradient's norm, before Adam rescales it
        assert a[LOSS_TOKENS] == b[LOSS_TOKENS] > 0
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
    moved = jax.tree.map(lambda a, p: float(np.abs(a - p).max()), whole["params"], params)
    assert max(jax.tree.leaves(moved)) > 1e-4, "the update moved nothing: the test would be vacuous"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), halves, whole)
