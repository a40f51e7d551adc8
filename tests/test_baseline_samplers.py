"""AR and MTP baselines: cached decoding equals an uncached greedy re-run of the teacher-forced pass
(the training form, at the training positions: `speech_position_offset` 0 and the `tiny` preset's
kind), on both Talkers."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from per_layer import per_layer_map

from mdm_jax.config.model import ModelConfig, SpeechDecoderConfig
from mdm_jax.config.sampler import SamplerConfig, TokenSampling
from mdm_jax.decode.autoregressive import generate
from mdm_jax.diffusion.attention_masks import autoregressive_mask
from mdm_jax.model.init import random_init
from mdm_jax.model.speech_decoder import SpeechDecoder

CFG = SpeechDecoderConfig(talker="vocalnet",
                          num_units=40, d_model=64, num_heads=4, num_kv_heads=2, ffn_dim=96, prenn_layers=1,
                          num_layers=2, mtp_modules=2, block_size=5, text_per_block=2)
MAX = 12
OFFSET = 256  # > 0: SOS at a fixed RoPE position whatever the text length, as the `tiny` preset trains
TALKERS = {"vocalnet": CFG, "anchor": dataclasses.replace(CFG, talker="anchor", prenn_layers=0)}


@functools.cache
def decoder(talker: str):
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.standard_normal((3, 6, 64)).astype(np.float32))
    text_valid = jnp.asarray(np.arange(6)[None] < np.array([[6], [3], [5]]))
    streaming = jnp.array([True, False, True])
    params = random_init(SpeechDecoder(TALKERS[talker]).init, text, jnp.zeros((3, 4), jnp.int32))
    # Sharp attention (q and k scaled up): logits then depend on RoPE positions, so a decode at the
    # wrong positions shows in its tokens (with the init's weights it differs by ~0.02 in a logit).
    params = per_layer_map(
        lambda path, p: p * (10.0 if path[-1].key in ("wq", "wk") else 3.0) if p.ndim >= 2 else p, params,
        with_path=True)
    return params, text, text_valid, streaming


@pytest.fixture(scope="module")
def setup():
    return decoder("vocalnet")


@functools.partial(jax.jit, static_argnames="sd")
def _teacher_forced(params, text, text_valid, tokens, mask, positions, *, sd):
    logits, mtp, _ = SpeechDecoder(sd).apply({"params": params}, text, tokens, mask, positions, text_valid)
    return logits, mtp


def reference(sd, params, text, text_valid, streaming, heads, penalty=1.0, window=15):
    """Greedy, re-running `[BOS][text][SOS][tokens so far]` from scratch for every forward."""
    offset = sd.speech_position_offset
    b = text.shape[0]
    allowed = np.r_[np.ones(sd.num_units, bool), [False, False, True, False]]
    out, gaps, done = np.zeros((b, 0), int), [], np.zeros(b, bool)
    while out.shape[1] < MAX and not done.all():
        now = out.shape[1]  # padded to one length: one compiled shape for the whole loop
        tokens = np.concatenate([np.full((b, 1), sd.sos_id), out, np.zeros((b, 2 * MAX - now), int)], axis=1)
        mask, pos = autoregressive_mask(sd.prefix_text(text_valid),
                                        jnp.asarray(np.arange(2 * MAX)[None] < now).repeat(b, 0), streaming,
                                        chunk_size=sd.block_size, text_per_chunk=sd.text_per_block,
                                        speech_offset=offset)
        logits, mtp = _teacher_forced(params, text, text_valid, jnp.asarray(tokens), mask, pos, sd=sd)
        new = []
        for lg in [logits] + mtp[:heads]:
            lg = np.where(allowed, np.asarray(lg)[:, now], -1e30)
            hist = np.concatenate([out, *[t[:, None] for t in new]], axis=1)[:, -window:] if penalty != 1 else None
            if hist is not None:
                for r in range(b):
                    ids = np.unique(hist[r])
                    lg[r, ids] = np.where(lg[r, ids] > 0, lg[r, ids] / penalty, lg[r, ids] * penalty)
            top2 = np.sort(lg, -1)[:, -2:]
            gaps.append(top2[:, 1] - top2[:, 0])
            new.append(lg.argmax(-1))
        new = np.stack(new, axis=1)
        for r in range(b):
            if done[r]:
                new[r] = sd.pad_id
            elif (new[r] == sd.eos_id).any():
                new[r, np.argmax(new[r] == sd.eos_id) + 1:] = sd.pad_id
                done[r] = True
        out = np.concatenate([out, new], axis=1)
    return out[:, :MAX], np.stack(gaps, 1)[:, :MAX]


@pytest.mark.parametrize("talker,heads,penalty,offset", [
    ("vocalnet", 0, 1.0, 0), ("vocalnet", 2, 1.0, 0), ("vocalnet", 1, 1.5, 0), ("vocalnet", 0, 1.0, OFFSET),
    ("vocalnet", 2, 1.0, OFFSET), ("anchor", 0, 1.0, 0), ("anchor", 2, 1.0, 0)])
def test_cached_equals_uncached(talker, heads, penalty, offset):
    params, text, text_valid, streaming = decoder(talker)
    sd = dataclasses.replace(TALKERS[talker], speech_position_offset=offset)
    ref, gaps = reference(sd, params, text, text_valid, streaming, heads, penalty)
    sampler = SamplerConfig(method="mtp" if heads else "ar", mtp_heads=heads,
                            token=TokenSampling(repetition_penalty=penalty))
    cfg = ModelConfig(speech_decoder=sd, sampler=sampler)
    out = generate(params, text, text_valid, streaming, jax.random.key(0), cfg=cfg, max_tokens=MAX)
    tokens = np.asarray(out.tokens)[:, :ref.shape[1]]
    for r in range(tokens.shape[0]):
        diff = np.flatnonzero(tokens[r] != ref[r])
        assert not diff.size or gaps[r, diff[0]] < 1e-5, f"row {r} differs at {diff[:1]} without a near-tie"
    assert int(out.forwards) == -(-ref.shape[1] // (1 + heads))  # 1 + k tokens per decoder forward


def test_mtp_needs_trained_modules(setup):
    params, text, text_valid, streaming = setup
    with pytest.raises(ValueError, match="mtp_heads=3 but the decoder has 2 MTP modules"):
        generate(params, text, text_valid, streaming, jax.random.key(0), max_tokens=MAX,
                 cfg=ModelConfig(speech_decoder=CFG, sampler=SamplerConfig(method="mtp", mtp_heads=3)))
