"""Stage I on cached encoder frames: the same loss as running the encoder, each record encoded once,
and a full training run on the cache."""

import jax
import numpy as np
import pytest

from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import get_train_config
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train.data import SyntheticSource, model_batch
from mdm_jax.train.encoder_cache import EncoderCache
from mdm_jax.train.loop import train
from mdm_jax.train.objectives import text_objective
from tests.small_train import small_overrides

SMALL = small_overrides(steps=6) + ["stage.name=text", "stage.train_llm=true", "data.pad_multiple=20"]
CFG = get_train_config("tiny", SMALL)


def _batch(seed=0):
    raw = next(SyntheticSource(get_train_config("tiny", SMALL + [f"data.seed={seed}"])))
    return raw, model_batch(raw, CFG.model, speech_id=5)


def test_cached_frames_give_the_encoders_loss_and_each_row_is_encoded_once():
    params = random_params(CFG.model, 0)
    raw, batch = _batch()
    frames = (raw["mel_segment_ids"] > 0).sum(1)
    assert len(set(frames.tolist())) > 1  # ragged rows
    batch["mel"] = batch["mel"] * (np.arange(batch["mel"].shape[-1]) < frames[:, None])[:, None]
    cache = EncoderCache(params["encoder"], CFG.model, pad_multiple=CFG.data.pad_multiple)
    cached = cache(batch, frames)
    assert "mel" not in cached and cached["encoded"].shape[:2] == (len(frames), batch["mel"].shape[-1] // 2)
    loss = jax.jit(lambda p, b: text_objective(p, b, CFG)[0])
    # the encoder has no padding mask: rows shorter than the batch see other frames in the mel path, so
    # compare with a batch whose rows are each as long as their padded length: rows one at a time
    for r in range(len(frames)):
        n = min(-(-int(frames[r]) // 20) * 20, batch["mel"].shape[-1])
        one = {k: v[r : r + 1] for k, v in batch.items()} | {"mel": batch["mel"][r : r + 1, :, :n]}
        alone = cache({k: v[r : r + 1] for k, v in batch.items()}, frames[r : r + 1])
        np.testing.assert_allclose(float(loss(params, alone)), float(loss(params, one)), rtol=2e-5)
    assert cache.computed == len(frames)  # the per-row calls were all served from the cache
    cache(batch, frames)
    assert cache.computed == len(frames)


def test_a_stage_i_run_trains_on_the_cache(tmp_path):
    cfg = get_train_config("tiny", SMALL + ["data.cache_encoder=true"])
    summary = train(cfg, str(tmp_path), log=lambda *_: None)
    assert summary["step"] == 6 and np.isfinite(summary["loss"])


def test_the_cache_is_for_stage_i_only():
    with pytest.raises(ConfigError, match="cache_encoder"):
        get_train_config("tiny", SMALL + ["data.cache_encoder=true", "stage.name=speech"])
