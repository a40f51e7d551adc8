"""Autoregressive baselines on the same speech decoder: AR (one token per forward) and VocalNet's
MTP (1 + k tokens per forward: the head plus k chained MTP modules), jitted with a KV cache.

Every forward feeds the tokens chosen in the previous forward; the last row's states give the
next token through the head and the k tokens after it through MTP modules 0..k-1 (module j was
trained to predict j + 2 tokens ahead). `mtp_heads=0` is plain AR decoding.

    out = generate(params, text_hidden, text_valid, streaming, key, cfg=cfg, max_tokens=120, mtp_heads=2)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.config.model import SpeechDecoderConfig
from mdm_jax.decode.sampling import TokenSampling, propose, repetition_penalty, speech_only
from mdm_jax.diffusion import attention_masks as am
from mdm_jax.model.attention import init_cache
from mdm_jax.model.speech_decoder import SpeechDecoder


class ARState(NamedTuple):
    count: jax.Array  # () tokens generated per row so far
    last: jax.Array  # (b, 1 + k) tokens of the last forward, K/V not yet cached
    caches: dict  # {'decoder': [per layer], 'mtp': [per module]} of {'k', 'v'}
    tokens: jax.Array  # (b, max_tokens + 1 + k) output, PAD where not generated
    done: jax.Array  # (b,) EOS seen
    lengths: jax.Array  # (b,) units before EOS
    forwards: jax.Array  # () decoder forwards
    key: jax.Array


@functools.partial(jax.jit, static_argnames=("cfg", "max_tokens", "mtp_heads", "sampling", "dtype"))
def generate(params, text_hidden, text_valid, streaming, key, *, cfg: SpeechDecoderConfig, max_tokens: int,
             mtp_heads: int = 0, sampling: TokenSampling = TokenSampling(), dtype=jnp.float32) -> ARState:
    """params: SpeechDecoder params; text_hidden: (b, T, d); text_valid: (b, T); streaming: (b,).
    Generates up to `max_tokens` (+ at most k overshoot, cut) units, stopping once all rows hit EOS."""
    if mtp_heads > cfg.mtp_modules:
        raise ValueError(f"mtp_heads={mtp_heads} but the decoder has {cfg.mtp_modules} MTP modules")
    dec = SpeechDecoder(cfg, dtype)
    apply = lambda method, *a: dec.apply({"params": params}, *a, method=method)  # noqa: E731
    b, t, _ = text_hidden.shape
    n, P = 1 + mtp_heads, t + 2
    width = max_tokens + n  # the last forward may overshoot by up to k tokens
    q_all, k_all, positions = am.layout(text_valid, jnp.ones((b, width), bool), streaming, (am.CLEAN,),
                                        cfg.block_size, cfg.text_per_block, cfg.speech_position_offset)

    def forward(x, start, caches):
        """x: (b, r, d) inputs at slots [start, start + r) -> logits (b, n, V) for the next n tokens."""
        r = x.shape[1]
        q = am.Attrs(*(lax.dynamic_slice_in_dim(a, start, r, axis=a.ndim - 2) for a in q_all))
        mask = am.visibility(q, k_all, block_diffusion=False)
        pos = lax.dynamic_slice_in_dim(positions, start, r, axis=1)
        h, dec_caches = apply(SpeechDecoder.backbone, x, pos, mask, caches["decoder"], start)
        logits, mtp_caches, hj = [apply(SpeechDecoder.logits, h[:, -1:])], [], h
        for j in range(mtp_heads):
            hj, lg, c = apply(SpeechDecoder.mtp_step, j, hj, pos, mask, caches["mtp"][j], start)
            logits.append(lg[:, -1:])
            mtp_caches.append(c)
        logits = jnp.concatenate(logits, axis=1)
        return speech_only(logits, cfg), {"decoder": dec_caches, "mtp": mtp_caches}

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
        is_eos = new == cfg.eos_id
        after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
        new = jnp.where(state.done[:, None] | after_eos, cfg.pad_id, new)
        units = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), n)
        return ARState(count=state.count + n, last=new, caches=caches,
                       tokens=lax.dynamic_update_slice_in_dim(state.tokens, new, state.count, axis=1),
                       done=state.done | jnp.any(is_eos, axis=1),
                       lengths=state.lengths + jnp.where(state.done, 0, units),
                       forwards=state.forwards + 1, key=key)

    def step(state: ARState) -> ARState:
        start = P + state.count - n
        logits, caches = forward(apply(SpeechDecoder.embed_tokens, state.last), start, state.caches)
        new, key = choose(state.tokens, state.count, logits, state.key)
        return finish(state, new, caches, key)

    kv = lambda: init_cache(b, P + width, cfg.num_kv_heads, cfg.head_dim, dtype)  # noqa: E731
    caches = {"decoder": [kv() for _ in range(cfg.num_layers)], "mtp": [kv() for _ in range(mtp_heads)]}
    prefix = jnp.concatenate([apply(SpeechDecoder.prefix, text_hidden),
                              apply(SpeechDecoder.embed_tokens, jnp.full((b, 1), cfg.sos_id))], axis=1)
    logits, caches = forward(prefix, 0, caches)
    state = ARState(count=jnp.int32(0), last=jnp.zeros((b, n), jnp.int32), caches=caches,
                    tokens=jnp.full((b, width), cfg.pad_id), done=jnp.zeros((b,), bool),
                    lengths=jnp.zeros((b,), jnp.int32), forwards=jnp.int32(0), key=key)
    new, key = choose(state.tokens, state.count, logits, key)
    state = finish(state, new, caches, key)
    state = lax.while_loop(lambda s: (s.count < max_tokens) & ~jnp.all(s.done), step, state)
    tokens = jnp.where(jnp.arange(width) < max_tokens, state.tokens, cfg.pad_id)[:, :max_tokens]
    return state._replace(tokens=tokens, lengths=jnp.minimum(state.lengths, max_tokens))
