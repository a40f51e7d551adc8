"""Block-diffusion speech sampler with an exact, fixed-size KV cache.

Blocks of B speech tokens are decoded left to right. A block starts fully `[MASK]` and is
unmasked in S steps (a scheduled count per step, most confident first) or, with a threshold τ,
until every committed position was at least τ confident (`sampling.commit`); with an early exit the
scheduled S steps end sooner once every masked position is that confident. Each step is one
decoder forward over the block with everything before it read from the cache. A finished block's
keys and values are written by the next block's first forward, whose input is `[finished block ;
new masked block]`, so every step costs exactly one forward and the cache holds what the
vectorised `[x_t ; x_0]` training pass computes (checked against an uncached re-run in the tests).

Text can arrive while speech is decoded (streaming): `begin` -> `add_text` (any number of times)
-> `first_block` -> `next_block`...; with the streaming mask, block c reads only text positions
< (c + 1)·text_per_block, so it only needs that much text. `generate` runs the whole thing as one
jitted function for text that is already complete. Everything is read from one `ModelConfig`:
B = `speech_decoder.block_size`, S = `sampler.denoise_steps`, the compute and cache dtype = `dtype`.

    out = generate(params, text_hidden, text_valid, streaming, key, cfg=cfg, num_blocks=8)
    out.tokens  # (b, 8 * B) units, EOS, then PAD
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.config.model import ModelConfig
from mdm_jax.decode.layout import for_decoding
from mdm_jax.decode.sampling import block_prior, commit, end_at_eos, propose, speech_only
from mdm_jax.diffusion.attention_masks import cached_rows
from mdm_jax.diffusion.schedules import step_schedule
from mdm_jax.model.attention import init_cache
from mdm_jax.model.speech_decoder import SpeechDecoder


class BlockState(NamedTuple):
    """Everything carried between calls (a plain pytree). Cache slots: `[BOS][text T][SOS][speech]`."""

    text_valid: jax.Array  # (b, T) text slots written so far
    streaming: jax.Array  # (b,) bool
    block: jax.Array  # () index of the next block to decode
    prev: jax.Array  # (b, B) tokens of the last finished block, K/V not yet cached
    caches: dict  # the decoder stack's {'k', 'v'}: (layers, b, slots, kv, d)
    tokens: jax.Array  # (b, num_blocks * B) output so far, PAD where not generated
    done: jax.Array  # (b,) bool: EOS seen
    lengths: jax.Array  # (b,) speech units before EOS
    forwards: jax.Array  # () denoising forwards so far (text prefill not counted)
    key: jax.Array
    logits: jax.Array | None  # (b, num_blocks * B, V) logits each token was committed from (record_logits)
    anchors: jax.Array | None  # (b, num_blocks * B, d) anchor Talker: the text inputs of every speech position


def _apply(params, cfg: ModelConfig, method, *args):
    decoder = SpeechDecoder(cfg.speech_decoder, jnp.dtype(cfg.dtype), cfg.execution)
    return decoder.apply({"params": params}, *args, method=method)


def _speech_inputs(params, state: BlockState, ids, start, cfg: ModelConfig):
    """Embeddings of speech ids (b, n) at speech positions [start, start + n), with their anchors."""
    x = _apply(params, cfg, SpeechDecoder.embed_tokens, ids)
    return x if state.anchors is None else x + lax.dynamic_slice_in_dim(state.anchors, start, ids.shape[1], axis=1)


def _forward(params, state: BlockState, x, start, cfg: ModelConfig):
    """x: (b, n, d) inputs for slots [start, start + n) -> (states (b, n, d), caches)."""
    sd = cfg.speech_decoder
    mask, pos = cached_rows(state.text_valid, state.streaming, state.tokens.shape[1], start, x.shape[1],
                            block_diffusion=True, block_size=sd.block_size, text_per_block=sd.text_per_block,
                            speech_offset=sd.speech_position_offset)
    return _apply(params, cfg, SpeechDecoder.backbone, x, pos, mask, state.caches, start)


@functools.partial(jax.jit, static_argnames=("cfg", "num_blocks", "text_capacity", "record_logits"))
def begin(params, streaming, key, *, cfg: ModelConfig, num_blocks: int, text_capacity: int,
          record_logits: bool = False) -> BlockState:
    """An empty state for `streaming.shape[0]` requests with room for `text_capacity` text states;
    writes BOS into the cache (in `cfg.dtype`). The anchor Talker holds no text in its cache: its
    text enters as anchors (`add_text`)."""
    cfg, params = for_decoding(cfg, params)
    sd, dtype = cfg.speech_decoder, jnp.dtype(cfg.dtype)
    b, B = streaming.shape[0], sd.block_size
    prefix = text_capacity if sd.text_in_prefix else 0
    slots = prefix + 2 + num_blocks * B
    state = BlockState(
        text_valid=jnp.zeros((b, prefix), bool), streaming=streaming, block=jnp.int32(0),
        prev=jnp.full((b, B), -1), caches=init_cache(b, slots, sd.num_kv_heads, sd.head_dim, dtype, sd.num_layers),
        tokens=jnp.full((b, num_blocks * B), sd.pad_id), done=jnp.zeros((b,), bool),
        lengths=jnp.zeros((b,), jnp.int32), forwards=jnp.int32(0), key=key,
        logits=jnp.zeros((b, num_blocks * B, sd.output_vocab)) if record_logits else None,
        anchors=None if sd.text_in_prefix else jnp.zeros((b, num_blocks * B, sd.d_model), dtype))
    bos = _apply(params, cfg, SpeechDecoder.embed_tokens, jnp.full((b, 1), sd.bos_id))
    return state._replace(caches=_forward(params, state, bos, 0, cfg)[1])


@functools.partial(jax.jit, static_argnames=("start", "count", "cfg"))
def add_text(params, state: BlockState, text_hidden, text_valid, *, start: int, count: int,
             cfg: ModelConfig) -> BlockState:
    """Write text slots [start, start + count) into the cache. text_hidden: (b, T, d) LLM states known
    so far (later rows are ignored: the pre-NN and the text attention are causal); text_valid: (b, T).
    The anchor Talker recomputes every anchor from the text known so far instead (cheap; blocks
    already decoded only read text they had)."""
    cfg, params = for_decoding(cfg, params)
    if not cfg.speech_decoder.text_in_prefix:
        anchors = _apply(params, cfg, SpeechDecoder.anchors, text_hidden, text_valid, state.tokens.shape[1])
        return state._replace(anchors=anchors)
    pre = _apply(params, cfg, SpeechDecoder.encode_text, text_hidden)[:, start:start + count]
    state = state._replace(text_valid=text_valid)
    return state._replace(caches=_forward(params, state, pre, 1 + start, cfg)[1])


def _decode(params, state: BlockState, x, start, cfg: ModelConfig) -> BlockState:
    """Denoise block `state.block` whose first forward's inputs `x` sit at slots [start, ...)."""
    sd, sampler = cfg.speech_decoder, cfg.sampler
    b, B = state.prev.shape
    P = state.text_valid.shape[1] + 2
    current = state.block
    schedule = jnp.asarray(step_schedule(B, sampler.denoise_steps, sampler.schedule))
    window = sampler.token.penalty_window

    def logits_at(x, start, caches):
        h, caches = _forward(params, state._replace(caches=caches), x, start, cfg)
        logits = _apply(params, cfg, SpeechDecoder.logits, h[:, -B:])
        return speech_only(logits, sd), caches

    key, k0 = jax.random.split(state.key)
    logits, caches = logits_at(x, start, state.caches)
    # calibrated confidence: the block's marginal from its first, fully masked step, kept for its later steps
    prior = (block_prior(propose(logits, k0, sampler.token)[1], jnp.ones((b, B), bool))
             if sampler.confidence == "calibrated" else None)

    def step(tokens, masked, seen, logits, j, key):
        history = jnp.concatenate([state.prev, jnp.where(masked, -1, tokens)], axis=1)[:, -window:]
        tokens, left, take = commit(logits, tokens, masked, masked.sum(-1) - schedule[j + 1], key, sampler, history,
                                    prior)
        return tokens, left, None if seen is None else jnp.where(take[..., None], logits, seen)

    def body(carry):
        tokens, masked, seen, caches, j, key = carry
        key, k = jax.random.split(key)
        logits, caches = logits_at(_speech_inputs(params, state, tokens, current * B, cfg), P + current * B, caches)
        tokens, masked, seen = step(tokens, masked, seen, logits, j, k)
        return tokens, masked, seen, caches, j + 1, key

    seen = None if state.logits is None else jnp.zeros_like(logits)
    tokens, masked, seen = step(jnp.full((b, B), sd.mask_id), jnp.ones((b, B), bool), seen, logits, 0, k0)
    carry = (tokens, masked, seen, caches, jnp.int32(1), key)
    if sampler.threshold > 0 or sampler.early_exit > 0:  # steps end once every row's block is whole
        most = B if sampler.threshold > 0 else sampler.denoise_steps
        carry = lax.while_loop(lambda c: jnp.any(c[1]) & (c[4] < most), body, carry)
    else:
        carry = lax.fori_loop(1, sampler.denoise_steps, lambda _, c: body(c), carry)
    tokens, _, seen, caches, steps, key = carry

    tokens, units, done = end_at_eos(tokens, state.done, sd.eos_id, sd.pad_id)  # later blocks of a row: PAD
    put = lambda buf, new: lax.dynamic_update_slice_in_dim(buf, new, current * B, axis=1)
    return state._replace(
        block=current + 1, prev=tokens, caches=caches, tokens=put(state.tokens, tokens), done=done,
        lengths=state.lengths + units, forwards=state.forwards + steps, key=key,
        logits=None if seen is None else put(state.logits, seen))


@functools.partial(jax.jit, static_argnames=("cfg",))
def first_block(params, state: BlockState, *, cfg: ModelConfig) -> BlockState:
    """Block 0: its first forward is `[SOS ; masked block]`."""
    cfg, params = for_decoding(cfg, params)
    sd = cfg.speech_decoder
    b, B = state.prev.shape
    sos = _apply(params, cfg, SpeechDecoder.embed_tokens, jnp.full((b, 1), sd.sos_id))
    x = jnp.concatenate([sos, _speech_inputs(params, state, jnp.full((b, B), sd.mask_id), 0, cfg)], axis=1)
    return _decode(params, state, x, state.text_valid.shape[1] + 1, cfg)


def _next_block(params, state: BlockState, *, cfg: ModelConfig) -> BlockState:
    """Block c >= 1: its first forward is `[finished block c-1 ; masked block c]`."""
    cfg, params = for_decoding(cfg, params)
    sd = cfg.speech_decoder
    b, B = state.prev.shape
    ids = jnp.concatenate([state.prev, jnp.full((b, B), sd.mask_id)], axis=1)
    x = _speech_inputs(params, state, ids, (state.block - 1) * B, cfg)
    return _decode(params, state, x, state.text_valid.shape[1] + 2 + (state.block - 1) * B, cfg)


next_block = jax.jit(_next_block, static_argnames=("cfg",))


@functools.partial(jax.jit, static_argnames=("cfg", "num_blocks", "record_logits"))
def generate(params, text_hidden, text_valid, streaming, key, *, cfg: ModelConfig, num_blocks: int,
             record_logits: bool = False) -> BlockState:
    """params: SpeechDecoder params; text_hidden: (b, T, d) LLM states; text_valid: (b, T) bool;
    streaming: (b,) bool (speech block c reads text < (c+1)·text_per_block). Decodes up to
    `num_blocks` blocks, stopping early once every row has emitted EOS."""
    cfg, params = for_decoding(cfg, params)  # once, outside the loop over blocks
    t = text_hidden.shape[1]
    state = begin(params, streaming, key, cfg=cfg, num_blocks=num_blocks, text_capacity=t,
                  record_logits=record_logits)
    state = add_text(params, state, text_hidden, text_valid, start=0, count=t, cfg=cfg)
    state = first_block(params, state, cfg=cfg)
    if num_blocks == 1:
        return state
    cond = lambda s: (s.block < num_blocks) & ~jnp.all(s.done)
    return lax.while_loop(cond, lambda s: _next_block(params, s, cfg=cfg), state)
