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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eight spoken questions of 0.2-1.2 s noise with one- to four-word answers, and their tokenizer."""
    import json

    import soundfile as sf

    from data_pipelines.tokenizer import train_bpe

    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    answers = [" ".join(["yes", "no", "maybe", "so"][: i % 4 + 1]) for i in range(8)]
    with open(folder / "train.jsonl", "w") as f:
        for i, answer in enumerate(answers):
            sf.write(folder / f"{i}.wav", 0.1 * rng.standard_normal(int((0.2 + 0.14 * i) * 16_000)), 16_000)
            f.write(json.dumps({"id": f"q{i}", "user_audio": f"{i}.wav", "assistant_text": answer,
                                "assistant_units": [i + 1] * 3}) + "\n")
    train_bpe(answers, vocab_size=100, path=str(folder / "tokenizer.json"))
    return folder


def test_packed_dialogues_give_the_bucketed_epochs_answer_ce(corpus):
    """One epoch through Grain packing + the packed cache and one bucketed: the same summed answer CE."""
    from data_pipelines.validation import BadRecords
    from mdm_jax.train.grain_source import grain_source
    from mdm_jax.train.objectives import LOSS_TOKENS

    base = small_overrides(batch=2, vocab=300) + [f"data.manifest={corpus}/train.jsonl", "stage.name=text",
                                                  "data.max_seconds=1.5", "data.max_text=40", "data.pad_multiple=20"]
    params = random_params(get_train_config("tiny", base).model, 0)
    totals = {}
    for batching in ("bucket", "pack"):
        cfg = get_train_config("tiny", base + [f"data.batching={batching}", "data.cache_encoder=true",
                                               "data.pack_text=80", "data.pack_seconds=3"])
        cache = EncoderCache(params["encoder"], cfg.model, pad_multiple=20)
        loss = jax.jit(lambda p, b, cfg=cfg: text_objective(p, b, cfg))
        source, speech_id = grain_source(cfg, BadRecords(strict=True), epochs=1)
        total = tokens = rows = 0.0
        for raw in source:
            batch = model_batch(raw, cfg.model, speech_id, packed=batching == "pack")
            batch = cache.packed(batch) if batching == "pack" else cache(batch, (raw["mel_segment_ids"] > 0).sum(1))
            value, metrics = loss(params, batch)
            total, tokens, rows = total + float(value) * metrics[LOSS_TOKENS], tokens + metrics[LOSS_TOKENS], rows + 2
        totals[batching] = (total, tokens, rows)
    assert totals["pack"][1] == totals["bucket"][1] > 0  # every answer token once in both
    np.testing.assert_allclose(totals["pack"][0], totals["bucket"][0], rtol=1e-5)
    assert totals["pack"][2] < totals["bucket"][2]  # fewer rows


def test_a_packed_stage_i_run_trains_on_the_cache(corpus, tmp_path):
    cfg = get_train_config("tiny", small_overrides(batch=2, vocab=300, steps=3) + [
        f"data.manifest={corpus}/train.jsonl", "stage.name=text", "data.max_seconds=1.5", "data.max_text=40",
        "data.batching=pack", "data.cache_encoder=true", "data.pack_text=80", "data.pack_seconds=3"])
    summary = train(cfg, str(tmp_path), log=lambda *_: None)
    assert summary["step"] == 3 and np.isfinite(summary["loss"])


def test_packing_needs_cached_frames():
    with pytest.raises(ConfigError, match="data.batching=pack needs data.cache_encoder=true"):
        get_train_config("tiny", SMALL + ["data.batching=pack"])
