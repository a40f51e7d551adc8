"""Block-diffusion speech sampler with an exact, fixed-size KV cache.

Blocks of B speech tokens are decoded left to right. A block starts fully `[MASK]` and is
unmasked in S steps (a scheduled count per step, most confident first) or, with a threshold τ,
until every committed position was at least τ confident. Each step is one decoder forward over
the block with everything before it read from the cache. A finished block's keys and values are
written by the next block's first forward, whose input is `[finished block ; new masked block]`,
so every step costs exactly one forward and the cache holds what the vectorised `[x_t ; x_0]`
training pass computes (checked against an uncached re-run in the tests).

Text can arrive while speech is decoded (streaming): `begin` -> `add_text` (any number of times)
-> `first_block` -> `next_block`...; with the streaming mask, block c reads only text positions
< (c + 1)·text_per_block, so it only needs that much text. `generate` runs the whole thing as one
jitted function for text that is already complete:

    out = generate(params, text_hidden, text_valid, streaming, key, cfg=cfg, num_blocks=8,
                   sampler=BlockDiffusionConfig(steps=2))
    out.tokens  # (b, 8 * B) units, EOS, then PAD
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.config.model import SpeechDecoderConfig
from mdm_jax.decode.sampling import (
    TokenSampling,
    confidence,
    propose,
    repetition_penalty,
    speech_only,
    take_most_confident,
)
from mdm_jax.diffusion import attention_masks as am
from mdm_jax.diffusion.schedules import step_schedule
from mdm_jax.model.attention import init_cache
from mdm_jax.model.speech_decoder import SpeechDecoder


@dataclass(frozen=True)
class BlockDiffusionConfig:
    steps: int = 4  # S decoder forwards per block (ignored when threshold > 0)
    schedule: str = "linear"  # how many tokens stay masked after each step: linear | cosine
    confidence: str = "max_prob"  # max_prob | margin | neg_entropy | random
    threshold: float = 0.0  # > 0: commit every masked position with confidence >= τ, at least one
    sampling: TokenSampling = field(default_factory=TokenSampling)


class BlockState(NamedTuple):
    """Everything carried between calls (a plain pytree). Cache slots: `[BOS][text T][SOS][speech]`."""

    text_valid: jax.Array  # (b, T) text slots written so far
    streaming: jax.Array  # (b,) bool
    block: jax.Array  # () index of the next block to decode
    prev: jax.Array  # (b, B) tokens of the last finished block, K/V not yet cached
    caches: list  # per layer {'k', 'v'}: (b, slots, kv, d)
    tokens: jax.Array  # (b, num_blocks * B) output so far, PAD where not generated
    done: jax.Array  # (b,) bool: EOS seen
    lengths: jax.Array  # (b,) speech units before EOS
    forwards: jax.Array  # () denoising forwards so far (text prefill not counted)
    key: jax.Array
    logits: jax.Array | None  # (b, num_blocks * B, V) logits each token was committed from (record_logits)


_STATIC = ("cfg", "sampler", "dtype")


def _apply(params, cfg, dtype, method, *args):
    return SpeechDecoder(cfg, dtype).apply({"params": params}, *args, method=method)


def _forward(params, state: BlockState, x, start, cfg: SpeechDecoderConfig, dtype):
    """x: (b, n, d) inputs for slots [start, start + n) -> (states (b, n, d), caches)."""
    b, t = state.text_valid.shape
    n_speech = state.tokens.shape[1]
    q_all, k_all, positions = am.layout(state.text_valid, jnp.ones((b, n_speech), bool), state.streaming,
                                        (am.CLEAN,), cfg.block_size, cfg.text_per_block, cfg.speech_position_offset)
    n = x.shape[1]
    q = am.Attrs(*(lax.dynamic_slice_in_dim(a, start, n, axis=a.ndim - 2) for a in q_all))
    # The cache has one copy of the speech: a block's slots hold its noisy K/V while it is being
    # denoised and its clean K/V afterwards, read exactly as training reads x_t and x_0.
    mask = am.visibility(q, k_all, block_diffusion=True)
    pos = lax.dynamic_slice_in_dim(positions, start, n, axis=1)
    return _apply(params, cfg, dtype, SpeechDecoder.backbone, x, pos, mask, state.caches, start)


@functools.partial(jax.jit, static_argnames=("cfg", "num_blocks", "text_capacity", "record_logits", "dtype"))
def begin(params, streaming, key, *, cfg: SpeechDecoderConfig, num_blocks: int, text_capacity: int,
          record_logits: bool = False, dtype=jnp.float32) -> BlockState:
    """An empty state for `streaming.shape[0]` requests with room for `text_capacity` text states;
    writes BOS into the cache."""
    b, B = streaming.shape[0], cfg.block_size
    slots = text_capacity + 2 + num_blocks * B
    state = BlockState(
        text_valid=jnp.zeros((b, text_capacity), bool), streaming=streaming, block=jnp.int32(0),
        prev=jnp.full((b, B), -1), caches=[init_cache(b, slots, cfg.num_kv_heads, cfg.head_dim, dtype)
                                          for _ in range(cfg.num_layers)],
        tokens=jnp.full((b, num_blocks * B), cfg.pad_id), done=jnp.zeros((b,), bool),
        lengths=jnp.zeros((b,), jnp.int32), forwards=jnp.int32(0), key=key,
        logits=jnp.zeros((b, num_blocks * B, cfg.output_vocab)) if record_logits else None)
    bos = _apply(params, cfg, dtype, SpeechDecoder.embed_tokens, jnp.full((b, 1), cfg.bos_id))
    return state._replace(caches=_forward(params, state, bos, 0, cfg, dtype)[1])


@functools.partial(jax.jit, static_argnames=("start", "count", "cfg", "dtype"))
def add_text(params, state: BlockState, text_hidden, text_valid, *, start: int, count: int,
             cfg: SpeechDecoderConfig, dtype=jnp.float32) -> BlockState:
    """Write text slots [start, start + count) into the cache. text_hidden: (b, T, d) LLM states known
    so far (later rows are ignored: the pre-NN and the text attention are causal); text_valid: (b, T)."""
    b, t, _ = text_hidden.shape
    pre = _apply(params, cfg, dtype, SpeechDecoder.encode_text, text_hidden)[:, start:start + count]
    state = state._replace(text_valid=text_valid)
    return state._replace(caches=_forward(params, state, pre, 1 + start, cfg, dtype)[1])


def _decode(params, state: BlockState, x, start, cfg: SpeechDecoderConfig, sampler: BlockDiffusionConfig,
            dtype) -> BlockState:
    """Denoise block `state.block` whose first forward's inputs `x` sit at slots [start, ...)."""
    b, B = state.prev.shape
    P = state.text_valid.shape[1] + 2
    current = state.block
    schedule = jnp.asarray(step_schedule(B, sampler.steps, sampler.schedule))
    sp = sampler.sampling

    def logits_at(x, start, caches):
        h, caches = _forward(params, state._replace(caches=caches), x, start, cfg, dtype)
        logits = _apply(params, cfg, dtype, SpeechDecoder.logits, h[:, -B:])
        return speech_only(logits, cfg), caches

    def commit(tokens, masked, seen, logits, step, key):
        history = jnp.concatenate([state.prev, jnp.where(masked, -1, tokens)], axis=1)[:, -sp.penalty_window:]
        k_propose, k_conf = jax.random.split(key)
        proposal, probs = propose(repetition_penalty(logits, history, sp.repetition_penalty), k_propose, sp)
        score = confidence(probs, proposal, sampler.confidence, k_conf)
        if sampler.threshold > 0:
            best = take_most_confident(score, masked, jnp.ones((b,), jnp.int32))
            take = (masked & (score >= sampler.threshold)) | best
        else:
            take = take_most_confident(score, masked, masked.sum(-1) - schedule[step + 1])
        seen = None if seen is None else jnp.where(take[..., None], logits, seen)
        return jnp.where(take, proposal, tokens), masked & ~take, seen

    def body(carry):
        tokens, masked, seen, caches, step, key = carry
        key, k = jax.random.split(key)
        x = _apply(params, cfg, dtype, SpeechDecoder.embed_tokens, tokens)
        logits, caches = logits_at(x, P + current * B, caches)
        tokens, masked, seen = commit(tokens, masked, seen, logits, step, k)
        return tokens, masked, seen, caches, step + 1, key

    key, k0 = jax.random.split(state.key)
    logits, caches = logits_at(x, start, state.caches)
    seen = None if state.logits is None else jnp.zeros_like(logits)
    tokens, masked, seen = commit(jnp.full((b, B), cfg.mask_id), jnp.ones((b, B), bool), seen, logits, 0, k0)
    carry = (tokens, masked, seen, caches, jnp.int32(1), key)
    if sampler.threshold > 0:
        carry = lax.while_loop(lambda c: jnp.any(c[1]) & (c[4] < B), body, carry)
    else:
        carry = lax.fori_loop(1, sampler.steps, lambda _, c: body(c), carry)
    tokens, _, seen, caches, steps, key = carry

    # EOS ends a row: later positions (and every later block) become PAD.
    is_eos = tokens == cfg.eos_id
    after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
    tokens = jnp.where(state.done[:, None] | after_eos, cfg.pad_id, tokens)
    units = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), B)
    put = lambda buf, new: lax.dynamic_update_slice_in_dim(buf, new, current * B, axis=1)  # noqa: E731
    return state._replace(
        block=current + 1, prev=tokens, caches=caches, tokens=put(state.tokens, tokens),
        done=state.done | jnp.any(is_eos, axis=1), lengths=state.lengths + jnp.where(state.done, 0, units),
        forwards=state.forwards + steps, key=key, logits=None if seen is None else put(state.logits, seen))


@functools.partial(jax.jit, static_argnames=_STATIC)
def first_block(params, state: BlockState, *, cfg: SpeechDecoderConfig,
                sampler: BlockDiffusionConfig = BlockDiffusionConfig(), dtype=jnp.float32) -> BlockState:
    """Block 0: its first forward is `[SOS ; masked block]`."""
    b, B = state.prev.shape
    ids = jnp.concatenate([jnp.full((b, 1), cfg.sos_id), jnp.full((b, B), cfg.mask_id)], axis=1)
    x = _apply(params, cfg, dtype, SpeechDecoder.embed_tokens, ids)
    return _decode(params, state, x, state.text_valid.shape[1] + 1, cfg, sampler, dtype)


def _next_block(params, state: BlockState, *, cfg: SpeechDecoderConfig,
                sampler: BlockDiffusionConfig = BlockDiffusionConfig(), dtype=jnp.float32) -> BlockState:
    """Block c >= 1: its first forward is `[finished block c-1 ; masked block c]`."""
    b, B = state.prev.shape
    ids = jnp.concatenate([state.prev, jnp.full((b, B), cfg.mask_id)], axis=1)
    x = _apply(params, cfg, dtype, SpeechDecoder.embed_tokens, ids)
    return _decode(params, state, x, state.text_valid.shape[1] + 2 + (state.block - 1) * B, cfg, sampler, dtype)


next_block = jax.jit(_next_block, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=("cfg", "num_blocks", "sampler", "dtype", "record_logits"))
def generate(params, text_hidden, text_valid, streaming, key, *, cfg: SpeechDecoderConfig, num_blocks: int,
             sampler: BlockDiffusionConfig = BlockDiffusionConfig(), dtype=jnp.float32,
             record_logits: bool = False) -> BlockState:
    """params: SpeechDecoder params; text_hidden: (b, T, d) LLM states; text_valid: (b, T) bool;
    streaming: (b,) bool (speech block c reads text < (c+1)·text_per_block). Decodes up to
    `num_blocks` blocks, stopping early once every row has emitted EOS."""
    t = text_hidden.shape[1]
    state = begin(params, streaming, key, cfg=cfg, num_blocks=num_blocks, text_capacity=t,
                  record_logits=record_logits, dtype=dtype)
    state = add_text(params, state, text_hidden, text_valid, start=0, count=t, cfg=cfg, dtype=dtype)
    state = first_block(params, state, cfg=cfg, sampler=sampler, dtype=dtype)
    if num_blocks == 1:
        return state
    cond = lambda s: (s.block < num_blocks) & ~jnp.all(s.done)  # noqa: E731
    return lax.while_loop(cond, lambda s: _next_block(params, s, cfg=cfg, sampler=sampler, dtype=dtype), state)

