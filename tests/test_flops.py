"""The FLOPs MFU divides by: XLA counts a scanned stack's body once, so the step is counted unrolled."""

import jax
import pytest
from small_train import small_overrides

from mdm_jax.config.train import get_train_config
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch
from mdm_jax.train.flops import step_flops
from mdm_jax.train.optimizer import make_optimizer
from mdm_jax.train.step import init_state, make_train_step


def counted(layers: int, scanned_count: bool = False) -> float:
    """Stage II FLOPs of the small model with `layers` speech-decoder layers (or XLA's count of the scan)."""
    cfg = get_train_config("tiny", [*small_overrides(), f"model.speech_decoder.num_layers={layers}",
                                    "stage.name=speech"])
    optimizer = make_optimizer(cfg)
    state = jax.eval_shape(lambda: init_state(cfg, optimizer, jax.random.key(0)))
    batch = model_batch(next(SyntheticSource(cfg)), cfg.model, SYNTHETIC_SPEECH_ID)
    if scanned_count:
        return make_train_step(cfg, optimizer).lower(state, batch).cost_analysis()["flops"]
    return step_flops(cfg, optimizer, batch)


def test_step_flops_grow_by_the_same_amount_per_layer():
    one, two, four = counted(1), counted(2), counted(4)
    per_layer = two - one
    assert per_layer > 0
    assert four - two == pytest.approx(2 * per_layer, rel=1e-3)
    # XLA's own count of the scanned step sees one layer's body whatever the depth: what this module corrects
    assert counted(4, scanned_count=True) < four - per_layer
