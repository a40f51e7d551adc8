"""Packed rows: several examples per row, with segment ids, and per-example transforms over them.

A packed speech row holds answers one after another, each padded to whole blocks (so no block mixes
two answers); its text row holds their text states in the same order:

    speech_segments  1 1 1 1 1 1 | 2 2 2 2 2 2 2 2 2 | 0 0 0     (block size 3; 0: row padding)
    speech_index     0 1 2 3 4 5 | 0 1 2 3 4 5 6 7 8 | 0 0 0
    text_segments    1 1 1 1 2 2 2 2 2 0 0

Draws made once per sequence (a masking ratio, the block that holds EOS) must be made once per
example: `per_example` lays packed speech rows out one example per row (b · S rows of length L,
S = L / block the most examples a row can hold), applies a function meant for unpacked rows and
packs its result back. It costs elementwise work on S times the slots, nothing next to a forward.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mdm_jax.config.mask import MaskConfig
from mdm_jax.diffusion.masking import Corruption, corrupt

PACKED_KEYS = ("text_segments", "text_index", "speech_segments", "speech_index")  # model-batch keys when packed


class Packed(NamedTuple):
    """Where each example lies in packed rows: segment 1, 2, ... (0 on padding) and the index within it.

    Speech segments cover whole blocks (an answer's block padding belongs to it); `speech_index`
    counts those padding slots too.
    """

    text_segments: jax.Array  # (b, T) int32
    text_index: jax.Array  # (b, T) int32
    speech_segments: jax.Array  # (b, L) int32
    speech_index: jax.Array  # (b, L) int32

    def prefix(self, text_slots: int) -> Packed:
        """The same with only the first `text_slots` text positions (the anchor Talker has none)."""
        return self._replace(text_segments=self.text_segments[:, :text_slots],
                             text_index=self.text_index[:, :text_slots])


def packed_of(batch: dict) -> Packed | None:
    """The batch's `Packed`, or None for one example per row."""
    return Packed(*(batch[k] for k in PACKED_KEYS)) if "speech_segments" in batch else None


def segment_lengths(segments, slots: int):
    """(b, n) segment ids -> (b, slots + 1) positions per segment id (column 0: the padding's)."""
    b = segments.shape[0]
    return jnp.zeros((b, slots + 1), jnp.int32).at[jnp.arange(b)[:, None], segments].add(1)


def packed_causal_mask(segments):
    """(b, t) segment ids (0: padding) -> (b, t, t): causal within each segment; a padded query sees itself."""
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    return (same & jnp.tril(jnp.ones(segments.shape[1:] * 2, bool))) | jnp.eye(segments.shape[1], dtype=bool)


def per_example(fn, packed: Packed, block_size: int):
    """fn: pytree of (rows, L, ...) speech arrays, one example per row -> pytree of (rows, L, ...) arrays.
    -> the same function on packed rows (b, L, ...): each example goes through `fn` alone, from index 0."""
    segments, index = packed.speech_segments, packed.speech_index
    b, length = segments.shape
    slots = length // block_size
    rows = jnp.arange(b)[:, None]
    example = jnp.where(segments > 0, segments - 1, slots)  # row padding goes to a slot that is dropped

    def unpack(x):  # (b, L, ...) -> (b · S, L, ...); each example's slots from 0, zeros after it
        out = jnp.zeros((b, slots, length, *x.shape[2:]), x.dtype).at[rows, example, index].set(x, mode="drop")
        return out.reshape(b * slots, length, *x.shape[2:])

    def repack(y):  # (b · S, L, ...) -> (b, L, ...); row padding reads slot 0 of its row's first example
        y = y.reshape(b, slots, length, *y.shape[2:])
        return y[rows, jnp.minimum(example, slots - 1), index]

    return lambda *args: jax.tree.map(repack, fn(*jax.tree.map(unpack, args)))


def corrupt_examples(key, batch: dict, cfg: MaskConfig, *, block_size: int, mask_id: int) -> Corruption:
    """`masking.corrupt` of a batch's units and speech_valid; in packed rows each example draws its own levels."""
    fn = functools.partial(corrupt, key, cfg=cfg, block_size=block_size, mask_id=mask_id)
    packed = packed_of(batch)
    return (fn if packed is None else per_example(fn, packed, block_size))(batch["units"], batch["speech_valid"])
