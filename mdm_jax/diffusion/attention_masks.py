"""Boolean attention masks (True = may attend) and RoPE positions for the speech decoder.

Layouts (n positions; T text states, L speech positions):
- block diffusion (BD3-LM vectorised training): `[BOS][text (T)][SOS][x_t (L)][x_0 (L)]`,
  n = 2 + T + 2L. x_t block b sees itself (bidirectional) and x_0 blocks < b; x_0 block b sees
  x_0 blocks ≤ b (block-causal) and never x_t. x_t and x_0 share RoPE positions.
- autoregressive (AR / MTP baselines): `[BOS][text (T)][SOS][speech (L)]`, n = 2 + T + L,
  speech causal.
Common to both: BOS is seen by all; text is causal; SOS and speech see BOS, SOS and text —
all valid text, or when `streaming`, text positions < (c + 1)·text_per_block for speech block
(chunk) c, with SOS in chunk 0 (VocalNet's 5 text : 15 speech). Invalid (padded) keys are never
seen; a padded query sees only itself, so its softmax row stays finite.
Positions count valid positions only, so a padded batch has the positions of its unpadded rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BOS, TEXT, SOS, NOISY, CLEAN = range(5)  # segment kinds; AR speech uses CLEAN


def block_diffusion_mask(text_valid, speech_valid, streaming, *, block_size: int = 15, text_per_block: int = 5,
                         speech_offset: int = 0):
    """text_valid: (b, T), speech_valid: (b, L) bool; streaming: (b,) bool.

    Returns mask (b, n, n) bool and positions (b, n) int32 for `[BOS][text][SOS][x_t][x_0]`.
    """
    q, k, positions = layout(text_valid, speech_valid, streaming, (NOISY, CLEAN), block_size, text_per_block,
                             speech_offset)
    return visibility(q, k, block_diffusion=True), positions


def autoregressive_mask(text_valid, speech_valid, streaming, *, chunk_size: int = 15, text_per_chunk: int = 5,
                        speech_offset: int = 0):
    """text_valid: (b, T), speech_valid: (b, L) bool; streaming: (b,) bool.

    Returns mask (b, n, n) bool and positions (b, n) int32 for `[BOS][text][SOS][speech]`; speech
    token i (an input, after SOS) is in chunk i // chunk_size.
    """
    q, k, positions = layout(text_valid, speech_valid, streaming, (CLEAN,), chunk_size, text_per_chunk,
                             speech_offset)
    return visibility(q, k, block_diffusion=False), positions


def cached_rows(text_valid, streaming, num_speech: int, start, rows: int, *, block_diffusion: bool,
                block_size: int, text_per_block: int, speech_offset: int = 0):
    """The mask (b, rows, n) and positions (b, rows) of query rows [start, start + rows) against
    the samplers' KV cache, whose n = 2 + T + num_speech slots hold `[BOS][text][SOS][speech]`.

    The cache has one copy of the speech: under block diffusion a block's slots hold its noisy K/V
    while it is denoised and its clean K/V afterwards, read exactly as training reads x_t and x_0.
    `start` may be traced.
    """
    b = text_valid.shape[0]
    q_all, k_all, positions = layout(text_valid, jnp.ones((b, num_speech), bool), streaming, (CLEAN,), block_size,
                                     text_per_block, speech_offset)
    q = Attrs(*(lax.dynamic_slice_in_dim(a, start, rows, axis=a.ndim - 2) for a in q_all))
    return visibility(q, k_all, block_diffusion=block_diffusion), lax.dynamic_slice_in_dim(positions, start, rows, 1)


class Attrs(NamedTuple):
    """Per-position attributes; as queries shaped (..., n, 1), as keys (..., 1, n)."""

    kind: jax.Array  # BOS / TEXT / SOS / NOISY / CLEAN
    index: jax.Array  # index within its segment
    block: jax.Array  # speech block (0 for BOS, text, SOS)
    slot: jax.Array  # index in the sequence (or the KV cache)
    text_limit: jax.Array  # text positions this query may read
    valid: jax.Array


def visibility(q: Attrs, k: Attrs, *, block_diffusion: bool):
    """The attention rule, from query and key attributes alone, so that the training layouts and
    the sampler's KV cache (whose slots hold clean or noisy blocks) share one definition.

    Block diffusion: noisy block b sees itself and clean blocks < b; clean block b sees clean blocks
    <= b. Autoregressive: speech is causal.
    """
    if block_diffusion:
        sees_noisy = (k.kind == NOISY) & (q.kind == NOISY) & (k.block == q.block)
        sees_clean = (k.kind == CLEAN) & (q.kind >= NOISY) & (k.block < q.block + (q.kind == CLEAN))
        speech = sees_noisy | sees_clean
    else:
        speech = (k.kind == CLEAN) & (q.kind == CLEAN) & (k.index <= q.index)
    return _finish(q, k, _sees_prefix(q, k) | speech)


def draw_streaming(key, batch: int, prob: float):
    """(b,) bool: which samples train with the streaming text mask (VocalNet flips a coin)."""
    return jax.random.bernoulli(key, prob, (batch,))


def layout(text_valid, speech_valid, streaming, speech_kinds, block_size, text_per_block, speech_offset: int = 0):
    """Per-position attributes of `[BOS][text][SOS]` + one L-long speech segment per kind, shaped
    as queries (..., n, 1) and keys (..., 1, n), and positions (b, n).

    `speech_offset` 0: SOS right after the real text (VocalNet). > 0: SOS at that position and
    speech after it whatever the text length, so a stream that has not seen all text yet puts
    every token where training did.
    """
    b, t = text_valid.shape
    s = speech_valid.shape[1]
    copies = len(speech_kinds)
    kind = np.concatenate([[BOS], np.full(t, TEXT), [SOS], *[np.full(s, k) for k in speech_kinds]])
    index = np.concatenate([[0], np.arange(t), [0], *[np.arange(s)] * copies])  # within its segment
    block = np.where(kind >= NOISY, index // block_size, 0)  # BOS, text, SOS: block 0
    chunk_limit = jnp.where(streaming[:, None], (block + 1) * text_per_block, t)  # (b, n)
    text_limit = jnp.where(kind == BOS, 0, jnp.where(kind == TEXT, index + 1, chunk_limit))
    ones = jnp.ones((b, 1), bool)
    valid = jnp.concatenate([ones, text_valid, ones, *[speech_valid] * copies], axis=1)
    first = jnp.cumsum(valid[:, : 2 + t + s], axis=1) - 1  # prefix and first speech copy; later copies reuse it
    positions = jnp.concatenate([first, *[first[:, 2 + t :]] * (copies - 1)], axis=1).astype(jnp.int32)
    if speech_offset:
        positions = jnp.where(kind >= SOS, speech_offset + np.where(kind == SOS, 0, index + 1), positions)
    attrs = dict(kind=kind, index=index, block=block, slot=np.arange(kind.size), text_limit=text_limit, valid=valid)
    as_query = Attrs(**{name: jnp.asarray(x)[..., :, None] for name, x in attrs.items()})
    as_key = Attrs(**{name: jnp.asarray(x)[..., None, :] for name, x in attrs.items()})
    return as_query, as_key, positions


def _sees_prefix(q, k):
    """BOS by everyone; text j by queries whose text limit exceeds j; SOS by SOS and speech."""
    return (k.kind == BOS) | ((k.kind == TEXT) & (k.index < q.text_limit)) | ((k.kind == SOS) & (q.kind >= SOS))


def _finish(q, k, allowed):
    """Drop invalid keys and queries, then let every position see itself."""
    return (allowed & q.valid & k.valid) | (q.slot == k.slot)
