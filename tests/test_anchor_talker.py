"""The anchor Talker (VocalNet-MDM): the Thinker's states added in order at the first Q positions of
each block, prefix-only (no block reads text from its future) and block-causal, through the very
forwards training runs; every stage II objective trains it."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from per_layer import per_layer_map
from small_train import small_overrides

from mdm_jax.config.model import ModelConfig, SpeechDecoderConfig
from mdm_jax.config.train import get_train_config
from mdm_jax.diffusion.attention_masks import autoregressive_mask
from mdm_jax.model.denoiser import denoiser
from mdm_jax.model.init import random_init
from mdm_jax.model.speech_decoder import SpeechDecoder
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train import objectives

SD = SpeechDecoderConfig(talker="anchor", num_units=40, d_model=48, num_heads=4, num_kv_heads=2, ffn_dim=96,
                         prenn_layers=0, num_layers=2, mtp_modules=1, block_size=6, text_per_block=2)
CFG = ModelConfig(speech_decoder=SD)
B, Q, BLOCKS, T = SD.block_size, SD.text_per_block, 4, 7  # text for 3.5 blocks: the last block ends the text
L = B * BLOCKS


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    text = rng.standard_normal((2, T, 64)).astype(np.float32)  # a Thinker wider than the Talker
    valid = np.arange(T)[None] < np.array([[T], [5]])
    params = random_init(SpeechDecoder(SD).init, jnp.asarray(text), jnp.zeros((2, 3), jnp.int32))
    params = per_layer_map(lambda p: p * 3.0 if p.ndim == 2 else p, params)
    units = rng.integers(0, SD.num_units, (2, L))
    return params, text, valid, units


def test_anchors_sit_in_order_at_the_first_q_positions(setup):
    params, text, valid, _ = setup
    out = np.asarray(SpeechDecoder(SD).apply({"params": params}, jnp.asarray(text), jnp.asarray(valid), L,
                                             method=SpeechDecoder.anchors))
    p = params["anchor"]
    for row in range(2):
        for pos in range(L):
            block, r = divmod(pos, B)
            j = block * Q + r
            if r >= Q:
                expected = np.zeros(SD.d_model)
            elif j < T and valid[row, j]:
                expected = text[row, j] @ np.asarray(p["w"]) + np.asarray(p["b"])
            else:  # past the text: the end-of-text vector
                expected = np.asarray(p["end_of_text"])
            np.testing.assert_allclose(out[row, pos], expected, atol=1e-5, err_msg=f"row {row} position {pos}")


@functools.partial(jax.jit, static_argnames="cfg")
def _mdm_logits(params, text, valid, units, x_t, *, cfg=CFG):
    batch = {"text_hidden": text, "text_valid": valid, "streaming": jnp.ones((2,), bool), "units": units,
             "speech_valid": jnp.ones(units.shape, bool)}
    return denoiser(cfg, batch)(params, x_t)


@jax.jit
def _ar_logits(params, text, valid, tokens):
    mask, positions = autoregressive_mask(SD.prefix_text(valid), jnp.ones((2, tokens.shape[1] - 1), bool),
                                          jnp.ones((2,), bool), chunk_size=B, text_per_chunk=Q)
    return SpeechDecoder(SD).apply({"params": params}, text, tokens, mask, positions, valid)[0]


def test_no_block_reads_text_from_its_future(setup):
    """Changing text states >= (c + 1)·Q leaves every block <= c unchanged (MDM and AR forwards)
    and changes the block that carries them."""
    params, text, valid, units = setup
    x_t = np.where(np.random.default_rng(1).random((2, L)) < 0.5, SD.mask_id, units)
    tokens = np.concatenate([np.full((2, 1), SD.sos_id), units], axis=1)
    base_mdm = np.asarray(_mdm_logits(params, text, valid, units, x_t))
    base_ar = np.asarray(_ar_logits(params, text, valid, tokens))
    for c in range(BLOCKS - 1):
        changed = text.copy()
        changed[:, (c + 1) * Q:] += 5.0
        mdm = np.asarray(_mdm_logits(params, changed, valid, units, x_t))
        ar = np.asarray(_ar_logits(params, changed, valid, tokens))
        seen = slice(0, (c + 1) * B)
        np.testing.assert_allclose(mdm[:, seen], base_mdm[:, seen], atol=1e-5)
        np.testing.assert_allclose(ar[:, seen], base_ar[:, seen], atol=1e-5)  # input i predicts unit i
        nxt = slice((c + 1) * B, (c + 2) * B)
        assert np.abs(mdm[0, nxt] - base_mdm[0, nxt]).max() > 1e-3
        assert np.abs(ar[0, nxt] - base_ar[0, nxt]).max() > 1e-3


def test_attention_is_block_causal(setup):
    """x_t block c reads itself and the clean blocks < c: changing clean block c or noisy block c
    leaves every other noisy block <= c (and every noisy block < c) unchanged."""
    params, text, valid, units = setup
    x_t = np.full((2, L), SD.mask_id)
    base = np.asarray(_mdm_logits(params, text, valid, units, x_t))
    for c in range(BLOCKS):
        block = slice(c * B, (c + 1) * B)
        clean = units.copy()
        clean[:, block] = (clean[:, block] + 1) % SD.num_units
        out = np.asarray(_mdm_logits(params, text, valid, clean, x_t))
        np.testing.assert_allclose(out[:, :(c + 1) * B], base[:, :(c + 1) * B], atol=1e-5)
        if c + 1 < BLOCKS:
            assert np.abs(out[:, (c + 1) * B:] - base[:, (c + 1) * B:]).max() > 1e-3
        noisy = x_t.copy()
        noisy[:, block] = units[:, block]
        out = np.asarray(_mdm_logits(params, text, valid, units, noisy))
        others = np.arange(L) // B != c
        np.testing.assert_allclose(out[:, others], base[:, others], atol=1e-5)
        assert np.abs(out[:, block] - base[:, block]).max() > 1e-3


@pytest.mark.parametrize("objective", ["mdm", "ar", "mtp"])
def test_every_stage_ii_objective_trains_the_anchor_talker(objective):
    cfg = get_train_config("tiny", small_overrides() + [
        "model.speech_decoder.talker=anchor", "model.speech_decoder.prenn_layers=0",
        "model.speech_decoder.d_model=16", "model.speech_decoder.mtp_modules=1", f"stage.objective={objective}"])
    sd, b, t, u = cfg.model.speech_decoder, 4, 5, 3 * cfg.model.speech_decoder.block_size
    rng = np.random.default_rng(2)
    batch = {"text_hidden": jnp.asarray(rng.normal(size=(b, t, cfg.model.llm.d_model)), jnp.float32),
             "text_valid": jnp.asarray(np.arange(t)[None] < rng.integers(1, t + 1, (b, 1))),
             "units": jnp.asarray(rng.integers(0, sd.num_units, (b, u)), jnp.int32),
             "speech_valid": jnp.asarray(np.arange(u)[None] < rng.integers(1, u + 1, (b, 1)))}
    params = random_params(cfg.model)["speech_decoder"]
    prepared = objectives.prepare(batch, jax.random.key(0), cfg)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p: objectives.speech_objective(p, prepared, cfg)[0]))
    loss, grads = loss_and_grad(params)
    assert np.isfinite(loss) and float(loss) > 0
    assert float(jnp.abs(grads["anchor"]["w"]).sum()) > 0  # the text reaches the loss through the anchors


def test_a_talker_narrower_than_the_thinker_and_its_errors():
    cfg = dataclasses.replace(CFG, llm=dataclasses.replace(CFG.llm, d_model=64))
    assert random_params(cfg)["speech_decoder"]["anchor"]["w"].shape == (64, SD.d_model)
    with pytest.raises(ValueError, match="prenn_layers=0"):
        dataclasses.replace(SD, prenn_layers=1)
    with pytest.raises(ValueError, match="fit in a block"):
        dataclasses.replace(SD, text_per_block=B + 1)
