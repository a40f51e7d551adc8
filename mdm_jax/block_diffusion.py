"""Block-diffusion speech sampler: one jitted function generates every block of a batch.

Blocks of B speech tokens are decoded left to right. A block starts fully `[MASK]` and is
unmasked in S steps (a scheduled count per step, most confident first) or, with a threshold τ,
until every committed position was at least τ confident. Each step is one decoder forward over
the block with everything before it read from a fixed-size KV cache. A finished block's keys and
values are written by the next block's first forward, whose input is `[finished block ; new
masked block]`, so every step costs exactly one forward and the cache holds what the vectorised
`[x_t ; x_0]` training pass computes (checked against an uncached re-run in the tests).

    out = generate(params, cfg, text_hidden, text_valid, streaming, key, num_blocks=8,
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

from mdm_jax.attention import init_cache
from mdm_jax.config import SpeechDecoderConfig
from mdm_jax.diffusion import attention_masks as am
from mdm_jax.diffusion.schedules import step_schedule
from mdm_jax.sampling import TokenSampling, confidence, propose, repetition_penalty, take_most_confident
from mdm_jax.speech_decoder import SpeechDecoder


@dataclass(frozen=True)
class BlockDiffusionConfig:
    steps: int = 4  # S decoder forwards per block (ignored when threshold > 0)
    schedule: str = "linear"  # how many tokens stay masked after each step: linear | cosine
    confidence: str = "max_prob"  # max_prob | margin | neg_entropy | random
    threshold: float = 0.0  # > 0: commit every masked position with confidence >= τ, at least one
    sampling: TokenSampling = field(default_factory=TokenSampling)


class BlockState(NamedTuple):
    """Everything carried from one block to the next (a plain pytree)."""

    block: jax.Array  # () index of the next block to decode
    prev: jax.Array  # (b, B) tokens of the last finished block, K/V not yet cached
    caches: list  # per layer {'k', 'v'}: (b, slots, kv, d)
    tokens: jax.Array  # (b, num_blocks * B) output so far, PAD where not generated
    done: jax.Array  # (b,) bool: EOS seen
    lengths: jax.Array  # (b,) speech units before EOS
    forwards: jax.Array  # () decoder forward passes so far
    key: jax.Array
    logits: jax.Array | None  # (b, num_blocks * B, V) logits each token was committed from (record_logits)


class _Plan(NamedTuple):
    """Static description of the cache layout `[BOS][text][SOS][speech blocks]` for one batch."""

    kind: jax.Array  # (n,) am.BOS / TEXT / SOS / CLEAN per slot
    index: jax.Array  # (n,) index within its segment
    block: jax.Array  # (n,) speech block of the slot (0 for the prefix)
    text_limit: jax.Array  # (b, n) text positions a query at this slot may read
    valid: jax.Array  # (b, n)
    positions: jax.Array  # (b, n) RoPE positions (valid positions counted, as in training)


def _plan(text_valid, streaming, num_blocks: int, cfg: SpeechDecoderConfig) -> _Plan:
    speech_valid = jnp.ones((text_valid.shape[0], num_blocks * cfg.block_size), bool)
    q, _, positions = am.layout(text_valid, speech_valid, streaming, (am.CLEAN,), cfg.block_size,
                                 cfg.text_per_block)
    col = lambda x: jnp.broadcast_to(x[..., 0], x.shape[:-1])  # noqa: E731  (queries: (..., n, 1))
    return _Plan(col(q.kind), col(q.index), col(q.block), col(q.text_limit), col(q.valid), positions)


def _mask(plan: _Plan, start, length: int):
    """(b, length, slots): what the queries at slots [start, start + length) may read. The cache
    holds one copy of the speech, so a block's slots hold its noisy K/V while it is being denoised
    and its clean K/V afterwards; both are read exactly as the training layout reads x_t / x_0."""
    def attrs(idx):
        return am.Attrs(kind=plan.kind[idx], index=plan.index[idx], block=plan.block[idx], slot=idx,
                        text_limit=plan.text_limit[:, idx], valid=plan.valid[:, idx])

    rows, slots = start + jnp.arange(length), jnp.arange(plan.kind.shape[0])
    q, k = attrs(rows), attrs(slots)
    q = am.Attrs(*(x[..., :, None] for x in q))
    k = am.Attrs(*(x[..., None, :] for x in k))
    return am.visibility(q, k, block_diffusion=True)


@functools.partial(jax.jit, static_argnames=("cfg", "num_blocks", "sampler", "dtype", "record_logits"))
def generate(params, text_hidden, text_valid, streaming, key, *, cfg: SpeechDecoderConfig, num_blocks: int,
             sampler: BlockDiffusionConfig = BlockDiffusionConfig(), dtype=jnp.float32,
             record_logits: bool = False) -> BlockState:
    """params: SpeechDecoder params; text_hidden: (b, T, d) LLM states; text_valid: (b, T) bool;
    streaming: (b,) bool (speech block c reads text < (c+1)·text_per_block). Decodes up to
    `num_blocks` blocks, stopping early once every row has emitted EOS."""
    state, step = _start(params, text_hidden, text_valid, streaming, key, cfg, num_blocks, sampler, dtype,
                         record_logits)
    if num_blocks == 1:  # the fold-in step needs a previous block
        return state
    cond = lambda s: (s.block < num_blocks) & ~jnp.all(s.done)  # noqa: E731
    return lax.while_loop(cond, step, state)


def _start(params, text_hidden, text_valid, streaming, key, cfg, num_blocks, sampler, dtype, record_logits):
    """Prefill + block 0 -> (state, block step function) sharing one closure of the static parts."""
    dec = SpeechDecoder(cfg, dtype)
    apply = lambda method, *a: dec.apply({"params": params}, *a, method=method)  # noqa: E731
    b, t, _ = text_hidden.shape
    B, P = cfg.block_size, t + 2
    plan = _plan(text_valid, streaming, num_blocks, cfg)
    n_slots = plan.kind.shape[0]
    allowed = (jnp.arange(cfg.output_vocab) < cfg.num_units) | (jnp.arange(cfg.output_vocab) == cfg.eos_id)
    masked_block = jnp.full((b, B), cfg.mask_id)
    schedule = jnp.asarray(step_schedule(B, sampler.steps, sampler.schedule))
    sp = sampler.sampling

    def forward(x, start, caches):
        """x: (b, n, d) inputs for slots [start, start + n) -> logits of the last B rows."""
        n = x.shape[1]
        positions = lax.dynamic_slice_in_dim(plan.positions, start, n, axis=1)
        h, caches = apply(SpeechDecoder.backbone, x, positions, _mask(plan, start, n), caches, start)
        logits = apply(SpeechDecoder.logits, h[:, -B:])
        return jnp.where(allowed, logits, -1e30), caches

    def commit(tokens, masked, seen, logits, step, prev, key):
        history = jnp.concatenate([prev, jnp.where(masked, -1, tokens)], axis=1)[:, -sp.penalty_window:]
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

    def denoise(first_logits, caches, current, prev, key):
        """Commit step 0 from `first_logits`, then run the remaining steps on the block alone."""
        key, k0 = jax.random.split(key)
        seen = jnp.zeros_like(first_logits) if record_logits else None
        tokens, masked, seen = commit(masked_block, jnp.ones((b, B), bool), seen, first_logits, 0, prev, k0)
        start = P + current * B

        def body(carry):
            tokens, masked, seen, caches, step, key = carry
            key, k = jax.random.split(key)
            logits, caches = forward(apply(SpeechDecoder.embed_tokens, tokens), start, caches)
            tokens, masked, seen = commit(tokens, masked, seen, logits, step, prev, k)
            return tokens, masked, seen, caches, step + 1, key

        carry = (tokens, masked, seen, caches, jnp.int32(1), key)
        if sampler.threshold > 0:
            carry = lax.while_loop(lambda c: jnp.any(c[1]) & (c[4] < B), body, carry)
        else:
            carry = lax.fori_loop(1, sampler.steps, lambda _, c: body(c), carry)
        tokens, _, seen, caches, steps, key = carry
        return tokens, seen, caches, steps, key

    def finish(state: BlockState, block_tokens, seen, caches, steps, key) -> BlockState:
        """EOS ends a row: later positions (and every later block) become PAD."""
        is_eos = block_tokens == cfg.eos_id
        after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
        block_tokens = jnp.where(state.done[:, None] | after_eos, cfg.pad_id, block_tokens)
        units = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), B)
        return BlockState(
            block=state.block + 1, prev=block_tokens, caches=caches,
            tokens=lax.dynamic_update_slice_in_dim(state.tokens, block_tokens, state.block * B, axis=1),
            done=state.done | jnp.any(is_eos, axis=1), lengths=state.lengths + jnp.where(state.done, 0, units),
            forwards=state.forwards + steps, key=key,
            logits=None if seen is None else lax.dynamic_update_slice_in_dim(state.logits, seen, state.block * B, 1))

    def step(state: BlockState) -> BlockState:
        x = apply(SpeechDecoder.embed_tokens, jnp.concatenate([state.prev, masked_block], axis=1))
        logits, caches = forward(x, P + (state.block - 1) * B, state.caches)
        block_tokens, seen, caches, steps, key = denoise(logits, caches, state.block, state.prev, state.key)
        return finish(state, block_tokens, seen, caches, steps, key)

    caches = [init_cache(b, n_slots, cfg.num_kv_heads, cfg.head_dim, dtype) for _ in range(cfg.num_layers)]
    prefix = jnp.concatenate([apply(SpeechDecoder.prefix, text_hidden),
                              apply(SpeechDecoder.embed_tokens, jnp.full((b, 1), cfg.sos_id)),
                              apply(SpeechDecoder.embed_tokens, masked_block)], axis=1)
    logits, caches = forward(prefix, 0, caches)
    empty = jnp.full((b, B), -1)
    block_tokens, seen, caches, steps, key = denoise(logits, caches, 0, empty, key)
    state = BlockState(block=jnp.int32(0), prev=empty, caches=caches,
                       tokens=jnp.full((b, num_blocks * B), cfg.pad_id), done=jnp.zeros((b,), bool),
                       lengths=jnp.zeros((b,), jnp.int32), forwards=jnp.int32(0), key=key,
                       logits=jnp.zeros((b, num_blocks * B, cfg.output_vocab)) if record_logits else None)
    return finish(state, block_tokens, seen, caches, steps, key), step
