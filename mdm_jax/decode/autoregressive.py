"""Autoregressive baselines on the same speech decoder: AR (one token per forward) and VocalNet's
MTP (1 + k tokens per forward: the head plus k chained MTP modules), jitted with a KV cache.

Every forward feeds the tokens chosen in the previous forward; the last row's states give the
next token through the head and the k tokens after it through MTP modules 0..k-1 (module j was
trained to predict j + 2 tokens ahead). `sampler.method` "ar" is plain AR decoding, "mtp" uses
k = `sampler.mtp_heads` modules. Speech sits at the RoPE positions training used
(`speech_decoder.speech_position_offset`).

    out = generate(params, text_hidden, text_valid, streaming, key, cfg=cfg, max_tokens=120)

Streaming uses the block sampler's interface (`decode.block_diffusion`), a block being `block_size` tokens:
`begin` -> `add_text` -> `first_block` -> `add_text` -> `next_block` ...; block c reads only the text
its streaming limit allows, so it is decoded the moment that text exists, token for token what
`generate` decodes with all text known.
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
    if sampler.method == "mtp" and not heads:
        raise ValueError("sampler.method=mtp but the speech decoder has no MTP modules: use sampler.method=ar")
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
    text_valid: jax.Array  # (b, T) text slots written so far (anchor Talker: (b, 0), its text rides on anchors)
    streaming: jax.Array  # (b,) bool
    anchors: jax.Array | None  # (b, width + 1, d) anchor Talker: the text input of every speech input
    block: jax.Array  # () streaming: blocks decoded so far


def _apply(params, cfg: ModelConfig, method, *args):
    decoder = SpeechDecoder(cfg.speech_decoder, jnp.dtype(cfg.dtype), cfg.execution)
    return decoder.apply({"params": params}, *args, method=method)


def _inputs(params, cfg: ModelConfig, state: ARState, ids, first):
    """Embeddings of input ids (b, r) predicting units [first, first + r), with their anchors (anchor i rides
    on the input that predicts unit i, SOS on unit 0's, as in training)."""
    x = _apply(params, cfg, SpeechDecoder.embed_tokens, ids)
    return x if state.anchors is None else x + lax.dynamic_slice_in_dim(state.anchors, first, ids.shape[1], axis=1)


def _forward(params, cfg: ModelConfig, state: ARState, x, start):
    """x: (b, r, d) inputs at slots [start, start + r) -> (logits (b, 1 + k, V) of the next tokens, caches)."""
    sd, heads = cfg.speech_decoder, mtp_heads(cfg)
    mask, pos = cached_rows(state.text_valid, state.streaming, state.tokens.shape[1], start, x.shape[1],
                            block_diffusion=False, block_size=sd.block_size, text_per_block=sd.text_per_block,
                            speech_offset=sd.speech_position_offset)
    h, dec_caches = _apply(params, cfg, SpeechDecoder.backbone, x, pos, mask, state.caches["decoder"], start)
    logits, mtp_caches, hj = [_apply(params, cfg, SpeechDecoder.logits, h[:, -1:])], [], h
    for j in range(heads):
        hj, lg, c = _apply(params, cfg, SpeechDecoder.mtp_step, j, hj, pos, mask, state.caches["mtp"][j], start)
        logits.append(lg[:, -1:])
        mtp_caches.append(c)
    return speech_only(jnp.concatenate(logits, axis=1), sd), {"decoder": dec_caches, "mtp": mtp_caches}


def _choose(cfg: ModelConfig, state: ARState, logits) -> ARState:
    """Pick the 1 + k new tokens left to right, each penalised by the ones before it, and record them."""
    sd, sampling, n = cfg.speech_decoder, cfg.sampler.token, logits.shape[1]
    history = lax.dynamic_slice_in_dim(jnp.pad(state.tokens, ((0, 0), (sampling.penalty_window, 0)),
                                               constant_values=-1), state.count, sampling.penalty_window, axis=1)
    new, key = [], state.key
    for i in range(n):
        key, k = jax.random.split(key)
        tok, _ = propose(repetition_penalty(logits[:, i:i + 1], history, sampling.repetition_penalty), k, sampling)
        new.append(tok)
        history = jnp.concatenate([history[:, 1:], tok], axis=1)
    new, units, done = end_at_eos(jnp.concatenate(new, axis=1), state.done, sd.eos_id, sd.pad_id)
    return state._replace(count=state.count + n, last=new, done=done, lengths=state.lengths + units, key=key,
                          tokens=lax.dynamic_update_slice_in_dim(state.tokens, new, state.count, axis=1),
                          forwards=state.forwards + 1)


def _step(params, cfg: ModelConfig, state: ARState) -> ARState:
    """One forward of the last tokens -> the next 1 + k tokens."""
    n = state.last.shape[1]
    start = state.text_valid.shape[1] + 2 + state.count - n
    logits, caches = _forward(params, cfg, state, _inputs(params, cfg, state, state.last, state.count - n + 1), start)
    return _choose(cfg, state._replace(caches=caches), logits)


def _until(params, cfg: ModelConfig, state: ARState, upto) -> ARState:
    return lax.while_loop(lambda s: (s.count < upto) & ~jnp.all(s.done), functools.partial(_step, params, cfg), state)


def _empty(params, cfg: ModelConfig, streaming, key, max_tokens: int, text_capacity: int) -> ARState:
    """A state with nothing decoded and an empty cache of `[BOS][text][SOS]` + max_tokens + 1 + k slots."""
    sd, dtype, heads = cfg.speech_decoder, jnp.dtype(cfg.dtype), mtp_heads(cfg)
    b, width = streaming.shape[0], max_tokens + 1 + heads  # the last forward may overshoot by up to k tokens
    prefix = text_capacity if sd.text_in_prefix else 0
    kv = functools.partial(init_cache, b, prefix + 2 + width, sd.num_kv_heads, sd.head_dim, dtype)
    return ARState(count=jnp.int32(0), last=jnp.zeros((b, 1 + heads), jnp.int32),
                   caches={"decoder": kv(layers=sd.num_layers), "mtp": [kv() for _ in range(heads)]},
                   tokens=jnp.full((b, width), sd.pad_id), done=jnp.zeros((b,), bool),
                   lengths=jnp.zeros((b,), jnp.int32), forwards=jnp.int32(0), key=key,
                   text_valid=jnp.zeros((b, prefix), bool), streaming=streaming,
                   anchors=None if sd.text_in_prefix else jnp.zeros((b, width + 1, sd.d_model), dtype),
                   block=jnp.int32(0))


def _with_anchors(params, cfg: ModelConfig, state: ARState, text_hidden, text_valid) -> ARState:
    if state.anchors is None:
        return state
    return state._replace(anchors=_apply(params, cfg, SpeechDecoder.anchors, text_hidden, text_valid,
                                         state.anchors.shape[1]))


@functools.partial(jax.jit, static_argnames=("cfg", "max_tokens"))
def generate(params, text_hidden, text_valid, streaming, key, *, cfg: ModelConfig, max_tokens: int) -> ARState:
    """params: SpeechDecoder params; text_hidden: (b, T, d); text_valid: (b, T); streaming: (b,).
    Generates up to `max_tokens` (+ at most k overshoot, cut) units, stopping once all rows hit EOS."""
    cfg, params = for_decoding(cfg, params)
    sd = cfg.speech_decoder
    state = _empty(params, cfg, streaming, key, max_tokens, text_hidden.shape[1])
    state = _with_anchors(params, cfg, state._replace(text_valid=sd.prefix_text(text_valid)), text_hidden, text_valid)
    prefix = jnp.concatenate([_apply(params, cfg, SpeechDecoder.prefix, text_hidden),
                              _inputs(params, cfg, state, jnp.full((text_hidden.shape[0], 1), sd.sos_id), 0)], axis=1)
    logits, caches = _forward(params, cfg, state, prefix, 0)  # [BOS][text][SOS] in one forward
    state = _until(params, cfg, _choose(cfg, state._replace(caches=caches), logits), max_tokens)
    width = state.tokens.shape[1]
    tokens = jnp.where(jnp.arange(width) < max_tokens, state.tokens, sd.pad_id)[:, :max_tokens]
    return state._replace(tokens=tokens, lengths=jnp.minimum(state.lengths, max_tokens))


@functools.partial(jax.jit, static_argnames=("cfg", "num_blocks", "text_capacity"))
def begin(params, streaming, key, *, cfg: ModelConfig, num_blocks: int, text_capacity: int) -> ARState:
    """An empty state for `streaming.shape[0]` requests, room for `num_blocks` blocks of speech and
    `text_capacity` text states; writes BOS into the cache."""
    cfg, params = for_decoding(cfg, params)
    sd = cfg.speech_decoder
    state = _empty(params, cfg, streaming, key, num_blocks * sd.block_size, text_capacity)
    bos = _apply(params, cfg, SpeechDecoder.embed_tokens, jnp.full((streaming.shape[0], 1), sd.bos_id))
    return state._replace(caches=_forward(params, cfg, state, bos, 0)[1])


@functools.partial(jax.jit, static_argnames=("start", "count", "cfg"))
def add_text(params, state: ARState, text_hidden, text_valid, *, start: int, count: int, cfg: ModelConfig) -> ARState:
    """Text slots [start, start + count) into the cache (text_hidden (b, T, d): the states known so far; text_valid
    (b, T)); the anchor Talker recomputes its anchors from the text known so far instead."""
    cfg, params = for_decoding(cfg, params)
    if not cfg.speech_decoder.text_in_prefix:
        return _with_anchors(params, cfg, state, text_hidden, text_valid)
    pre = _apply(params, cfg, SpeechDecoder.encode_text, text_hidden)[:, start:start + count]
    state = state._replace(text_valid=text_valid)
    return state._replace(caches=_forward(params, cfg, state, pre, 1 + start)[1])


@functools.partial(jax.jit, static_argnames=("cfg",))
def first_block(params, state: ARState, *, cfg: ModelConfig) -> ARState:
    """SOS, then tokens until block 0 is whole (or every row has ended)."""
    cfg, params = for_decoding(cfg, params)
    sd = cfg.speech_decoder
    sos = _inputs(params, cfg, state, jnp.full((state.done.shape[0], 1), sd.sos_id), 0)
    logits, caches = _forward(params, cfg, state, sos, state.text_valid.shape[1] + 1)
    state = _choose(cfg, state._replace(caches=caches), logits)
    return _until(params, cfg, state, sd.block_size)._replace(block=jnp.int32(1))


@functools.partial(jax.jit, static_argnames=("cfg",))
def next_block(params, state: ARState, *, cfg: ModelConfig) -> ARState:
    """Tokens until the next block is whole (or every row has ended)."""
    cfg, params = for_decoding(cfg, params)
    return _until(params, cfg, state, (state.block + 1) * cfg.speech_decoder.block_size)._replace(
        block=state.block + 1)
