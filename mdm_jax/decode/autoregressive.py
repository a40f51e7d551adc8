"""Autoregressive baselines on the same speech decoder: AR (one token per forward) and VocalNet's
MTP (1 + k tokens per forward: the head plus k chained MTP modules), jitted with a KV cache.

Every forward feeds the tokens chosen in the previous forward; the last row's states give the
next token through the head and the k tokens after it through MTP modules 0..k-1 (module j was
trained to predict j + 2 tokens ahead). `sampler.method` "ar" is plain AR decoding, "mtp" uses
k = `sampler.mtp_heads` modules. Speech sits at the RoPE positions training used
(`speech_decoder.speech_position_offset`).

    out = generate(params, text_hidden, text_valid, streaming, key, cfg=cfg, max_tokens=120)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.config.model import ModelConfig
from mdm_jax.decode.layout import for_decoding
from mdm_jax.decode.sampling import end_at_eos, propose, repetition_penalty, speech_only
from mdm_jax.diffusion.attention_masks import cached_rows
from mdm_jax.model.attention import init_cache
from mdm_jax.model.speech_decoder import SpeechDecoder


def mtp_heads(cfg: ModelConfig) -> int:
    """Extra tokens per forward of `cfg.sampler` (0 for AR), checked against the decoder's MTP modules."""
    sampler, modules = cfg.sampler, cfg.speech_decoder.mtp_modules
    if sampler.method not in ("ar", "mtp"):
        raise ValueError(f"sampler.method={sampler.method!r} is not an autoregressive method (ar, mtp)")
    heads = 0 if sampler.method == "ar" else modules if sampler.mtp_heads == -1 else sampler.mtp_heads
    if heads > modules:
        raise ValueError(f"mtp_heads={heads} but the decoder has {modules} MTP modules")
    return heads


class ARState(NamedTuple):
    count: jax.Array  # () tokens generated per row so far
    last: jax.Array  # (b, 1 + k) tokens of the last forward, K/V not yet cached
    caches: dict  # {'decoder': the stack's, 'mtp': [per module]} of {'k', 'v'}
    tokens: jax.Array  # (b, max_tokens + 1 + k) output, PAD where not generated
    done: jax.Array  # (b,) EOS seen
    lengths: jax.Array  # (b,) units before EOS
    forwards: jax.Array  # () decoder forwards
    key: jax.Array


@functools.partial(jax.jit, static_argnames=("cfg", "max_tokens"))
def generate(params, text_hidden, text_valid, streaming, key, *, cfg: ModelConfig, max_tokens: int) -> ARState:
    """params: SpeechDecoder params; text_hidden: (b, T, d); text_valid: (b, T); streaming: (b,).
    Generates up to `max_tokens` (+ at most k overshoot, cut) units, stopping once all rows hit EOS."""
    cfg, params = for_decoding(cfg, params)
    sd, sampling, dtype = cfg.speech_decoder, cfg.sampler.token, jnp.dtype(cfg.dtype)
    heads = mtp_heads(cfg)
    dec = SpeechDecoder(sd, dtype, cfg.execution)
    apply = lambda method, *a: dec.apply({"params": params}, *a, method=method)  # noqa: E731
    b = text_hidden.shape[0]
    prefix_text = sd.prefix_text(text_valid)
    n, P = 1 + heads, prefix_text.shape[1] + 2
    width = max_tokens + n  # the last forward may overshoot by up to k tokens
    # anchor Talker: anchor i rides on the input that predicts unit i (SOS: unit 0), as in training
    anchors = None if sd.text_in_prefix else apply(SpeechDecoder.anchors, text_hidden, text_valid, width + 1)

    def inputs(ids, first):
        """Embeddings of input ids (b, r) predicting units [first, first + r), with their anchors."""
        x = apply(SpeechDecoder.embed_tokens, ids)
        return x if anchors is None else x + lax.dynamic_slice_in_dim(anchors, first, ids.shape[1], axis=1)

    def forward(x, start, caches):
        """x: (b, r, d) inputs at slots [start, start + r) -> logits (b, n, V) for the next n tokens."""
        mask, pos = cached_rows(prefix_text, streaming, width, start, x.shape[1], block_diffusion=False,
                                block_size=sd.block_size, text_per_block=sd.text_per_block,
                                speech_offset=sd.speech_position_offset)
        h, dec_caches = apply(SpeechDecoder.backbone, x, pos, mask, caches["decoder"], start)
        logits, mtp_caches, hj = [apply(SpeechDecoder.logits, h[:, -1:])], [], h
        for j in range(heads):
            hj, lg, c = apply(SpeechDecoder.mtp_step, j, hj, pos, mask, caches["mtp"][j], start)
            logits.append(lg[:, -1:])
            mtp_caches.append(c)
        logits = jnp.concatenate(logits, axis=1)
        return speech_only(logits, sd), {"decoder": dec_caches, "mtp": mtp_caches}

    def choose(state_tokens, count, logits, key):
        """Pick the n new tokens left to right, each penalised by the ones before it."""
        history = lax.dynamic_slice_in_dim(jnp.pad(state_tokens, ((0, 0), (sampling.penalty_window, 0)),
                                                   constant_values=-1), count, sampling.penalty_window, axis=1)
        new = []
        for i in range(n):
            key, k = jax.random.split(key)
            tok, _ = propose(repetition_penalty(logits[:, i:i + 1], history, sampling.repetition_penalty), k, sampling)
            new.append(tok)
            history = jnp.concatenate([history[:, 1:], tok], axis=1)
        return jnp.concatenate(new, axis=1), key

    def finish(state: ARState, new, caches, key) -> ARState:
        new, units, done = end_at_eos(new, state.done, sd.eos_id, sd.pad_id)
        return ARState(count=state.count + n, last=new, caches=caches,
                       tokens=lax.dynamic_update_slice_in_dim(state.tokens, new, state.count, axis=1),
                       done=done, lengths=state.lengths + units, forwards=state.forwards + 1, key=key)

    def step(state: ARState) -> ARState:
        start = P + state.count - n
        logits, caches = forward(inputs(state.last, state.count - n + 1), start, state.caches)
        new, key = choose(state.tokens, state.count, logits, state.key)
        return finish(state, new, caches, key)

    kv = functools.partial(init_cache, b, P + width, sd.num_kv_heads, sd.head_dim, dtype)
    caches = {"decoder": kv(layers=sd.num_layers), "mtp": [kv() for _ in range(heads)]}
    prefix = jnp.concatenate([apply(SpeechDecoder.prefix, text_hidden), inputs(jnp.full((b, 1), sd.sos_id), 0)],
                             axis=1)
    logits, caches = forward(prefix, 0, caches)
    state = ARState(count=jnp.int32(0), last=jnp.zeros((b, n), jnp.int32), caches=caches,
                    tokens=jnp.full((b, width), sd.pad_id), done=jnp.zeros((b,), bool),
                    lengths=jnp.zeros((b,), jnp.int32), forwards=jnp.int32(0), key=key)
    new, key = choose(state.tokens, state.count, logits, key)
    state = finish(state, new, caches, key)
    state = lax.while_loop(lambda s: (s.count < max_tokens) & ~jnp.all(s.done), step, state)
    tokens = jnp.where(jnp.arange(width) < max_tokens, state.tokens, sd.pad_id)[:, :max_tokens]
    return state._replace(tokens=tokens, lengths=jnp.minimum(state.lengths, max_tokens))
