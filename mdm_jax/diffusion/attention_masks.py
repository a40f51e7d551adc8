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

Every builder returns a `Mask`: what the mask is made of (per-position attributes, segment ids, and the
layout's sizes), which `model.attention` turns into a dense (b, t, s) array (`Mask.dense`: einsum, cudnn) or
into splash attention's static tile masks (`tiles`, numpy, one per streaming variant) and segment ids
(`Mask.segment_ids`), so that tiles a mask hides are never computed.

Packed rows (`packing.Packed`: several examples per row, each speech segment whole blocks): text and speech
each hold the segments one after another, and one SOS slot per possible segment follows the text,
`[BOS][text (T)][SOS (L / block)][speech (L)]...`. Every position carries its segment; a query sees
only its own segment's keys (and BOS, whose state is the same for every segment: it sees only
itself), with the positions, blocks and text limits it would have alone.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from mdm_jax.diffusion.packing import Packed, packed_causal_mask, segment_lengths

BOS, TEXT, SOS, NOISY, CLEAN = range(5)  # segment kinds; AR speech uses CLEAN


def block_diffusion_mask(text_valid, speech_valid, streaming, *, block_size: int = 15, text_per_block: int = 5,
                         speech_offset: int = 0, packed: Packed | None = None):
    """text_valid: (b, T), speech_valid: (b, L) bool; streaming: (b,) bool (packed: (b, L / block), per segment).

    Returns a `Mask` (n x n) and positions (b, n) int32 for `[BOS][text][SOS][x_t][x_0]` (packed:
    one SOS slot per possible segment).
    """
    q, k, positions = layout(text_valid, speech_valid, streaming, (NOISY, CLEAN), block_size, text_per_block,
                             speech_offset, packed)
    return Mask.of_layout(q, k, streaming, "block_diffusion", text_valid.shape[1], speech_valid.shape[1],
                          block_size, text_per_block, packed), positions


def autoregressive_mask(text_valid, speech_valid, streaming, *, chunk_size: int = 15, text_per_chunk: int = 5,
                        speech_offset: int = 0, packed: Packed | None = None):
    """text_valid: (b, T), speech_valid: (b, L) bool; streaming: (b,) bool (packed: (b, L / chunk)).

    Returns a `Mask` (n x n) and positions (b, n) int32 for `[BOS][text][SOS][speech]`; speech
    token i (an input, after SOS) is in chunk i // chunk_size (packed: its index within its segment).
    """
    q, k, positions = layout(text_valid, speech_valid, streaming, (CLEAN,), chunk_size, text_per_chunk,
                             speech_offset, packed)
    return Mask.of_layout(q, k, streaming, "autoregressive", text_valid.shape[1], speech_valid.shape[1],
                          chunk_size, text_per_chunk, packed), positions


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
    segment: jax.Array  # packed rows: the example it belongs to (0 for BOS, and everywhere in unpacked rows)


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


def layout(text_valid, speech_valid, streaming, speech_kinds, block_size, text_per_block, speech_offset: int = 0,
           packed: Packed | None = None):
    """Per-position attributes of `[BOS][text][SOS]` + one L-long speech segment per kind, shaped
    as queries (..., n, 1) and keys (..., 1, n), and positions (b, n).

    `speech_offset` 0: SOS right after the real text (VocalNet). > 0: SOS at that position and
    speech after it whatever the text length, so a stream that has not seen all text yet puts
    every token where training did.
    """
    if packed is not None:
        return packed_layout(text_valid, speech_valid, streaming, speech_kinds, block_size, text_per_block,
                             speech_offset, packed)
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
    attrs = dict(kind=kind, index=index, block=block, slot=np.arange(kind.size), text_limit=text_limit, valid=valid,
                 segment=np.zeros(kind.size, np.int32))
    return _as_query(attrs), _as_key(attrs), positions


def packed_layout(text_valid, speech_valid, streaming, speech_kinds, block_size, text_per_block, speech_offset,
                  packed: Packed):
    """`layout` of packed rows: `[BOS][text (T)][SOS (S)]` + the speech per kind, S = L / block_size
    SOS slots (slot s for segment s + 1); streaming (b, S) per segment."""
    b, t = text_valid.shape
    s = speech_valid.shape[1]
    slots, copies = s // block_size, len(speech_kinds)
    kind = np.concatenate([[BOS], np.full(t, TEXT), np.full(slots, SOS), *[np.full(s, k) for k in speech_kinds]])
    zero = jnp.zeros((b, 1), jnp.int32)
    sos_segment = jnp.broadcast_to(jnp.arange(1, slots + 1, dtype=jnp.int32), (b, slots))
    segment = jnp.concatenate([zero, packed.text_segments, sos_segment, *[packed.speech_segments] * copies], axis=1)
    index = jnp.concatenate([zero, packed.text_index, jnp.zeros((b, slots), jnp.int32),
                             *[packed.speech_index] * copies], axis=1)
    block = jnp.where(kind >= NOISY, index // block_size, 0)
    text_len = segment_lengths(packed.text_segments, slots).at[:, 0].set(0)
    own_text = jnp.take_along_axis(text_len, segment, axis=1)  # (b, n): its segment's text length
    own_stream = jnp.take_along_axis(jnp.pad(streaming, ((0, 0), (1, 0))), segment, axis=1)
    chunk_limit = jnp.where(own_stream, (block + 1) * text_per_block, t)
    text_limit = jnp.where(kind == BOS, 0, jnp.where(kind == TEXT, index + 1, chunk_limit))
    has_speech = segment_lengths(packed.speech_segments, slots)[:, 1:] > 0
    valid = jnp.concatenate([jnp.ones((b, 1), bool), text_valid, has_speech, *[speech_valid] * copies], axis=1)
    positions = jnp.where(kind == TEXT, index + 1, jnp.where(kind == SOS, own_text + 1, own_text + 2 + index))
    if speech_offset:
        positions = jnp.where(kind >= SOS, speech_offset + jnp.where(kind == SOS, 0, index + 1), positions)
    positions = jnp.where(kind == BOS, 0, positions).astype(jnp.int32)
    attrs = dict(kind=kind, index=index, block=block, slot=np.arange(kind.size), text_limit=text_limit, valid=valid,
                 segment=segment)
    return _as_query(attrs), _as_key(attrs), positions


def _as_query(attrs: dict) -> Attrs:
    return Attrs(**{name: jnp.asarray(x)[..., :, None] for name, x in attrs.items()})


def _as_key(attrs: dict) -> Attrs:
    return Attrs(**{name: jnp.asarray(x)[..., None, :] for name, x in attrs.items()})


def _sees_prefix(q, k):
    """BOS by everyone; text j by queries whose text limit exceeds j; SOS by SOS and speech."""
    return (k.kind == BOS) | ((k.kind == TEXT) & (k.index < q.text_limit)) | ((k.kind == SOS) & (q.kind >= SOS))


def _finish(q, k, allowed):
    """Drop invalid keys and queries and other segments' keys (BOS is everyone's), then let every position
    see itself."""
    own = (q.segment == k.segment) | (k.kind == BOS)
    return (allowed & own & q.valid & k.valid) | (q.slot == k.slot)


class Layout(NamedTuple):
    """The static shape of a speech-decoder layout: what its tile masks depend on."""

    rule: str  # block_diffusion | autoregressive
    text: int  # T text slots
    speech: int  # L slots per speech copy
    block_size: int
    text_per_block: int
    packed: bool  # one SOS slot per possible segment, and BOS shared by every segment


class Mask(struct.PyTreeNode):
    """What an attention mask is made of (see the module's docstring). rule: "full" (keys `segments` != 0
    or all), "causal" (within `segments`: packed ids, 0 on padding), or a speech-decoder `layout` (its
    query / key attributes and per-row `streaming`)."""

    query: Attrs | None = None
    key: Attrs | None = None
    segments: jax.Array | None = None
    streaming: jax.Array | None = None
    rule: str = struct.field(pytree_node=False, default="full")
    layout: Layout | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def full(cls, key_valid=None) -> Mask:
        """Bidirectional; key_valid (b, s) bool, or None for every key."""
        return cls(segments=None if key_valid is None else key_valid.astype(jnp.int32), rule="full")

    @classmethod
    def causal(cls, batch: int, length: int, segments=None) -> Mask:
        """Causal over `length` positions, within packed `segments` (b, length) when given."""
        segments = jnp.ones((batch, length), jnp.int32) if segments is None else segments
        return cls(segments=segments, rule="causal")

    @classmethod
    def of_layout(cls, q, k, streaming, rule, text, speech, block_size, text_per_block, packed) -> Mask:
        return cls(query=q, key=k, streaming=streaming, rule="layout",
                   layout=Layout(rule, text, speech, block_size, text_per_block, packed is not None))

    def dense(self):
        """The mask as a (b, t, s) bool array (full without validity: None)."""
        if self.rule == "full":
            return None if self.segments is None else self.segments[:, None, :] > 0
        if self.rule == "causal":
            return packed_causal_mask(self.segments)
        return visibility(self.query, self.key, block_diffusion=self.layout.rule == "block_diffusion")

    @property
    def splashable(self) -> bool:
        """False where tiles cannot say it: packed rows' streaming text limits move with each example."""
        return self.rule != "layout" or not (self.layout.packed and self.layout.text)

    def variant(self):
        """(b,) int32: which of `tiles` each row uses."""
        if self.rule != "layout" or not self.layout.text:
            return None
        return self.streaming.astype(jnp.int32)

    def segment_ids(self):
        """(q (b, t), kv (b, s)) int32 ids: a query sees a key only where they agree (and the tile allows);
        in packed layouts kv gets one copy of BOS per possible segment in front (`shared_keys`)."""
        if self.rule == "full":
            return None if self.segments is None else (jnp.ones_like(self.segments), self.segments)
        if self.rule == "causal":
            return self.segments, self.segments
        ids = lambda a: jnp.where(a.valid, a.segment + 1, 0).astype(jnp.int32)  # 0: padding
        q, k = ids(self.query)[..., 0], ids(self.key)[..., 0, :]
        if self.shared_keys:
            b = q.shape[0]
            k = jnp.concatenate([jnp.broadcast_to(jnp.arange(2, 2 + self.shared_keys, dtype=jnp.int32),
                                                  (b, self.shared_keys)), k], axis=1)
        return q, k

    @property
    def shared_keys(self) -> int:
        """Copies of BOS (slot 0) to put in front of the keys: one per possible segment of packed layouts."""
        if self.rule != "layout" or not self.layout.packed:
            return 0
        return self.layout.speech // self.layout.block_size


def tiles(rule: str, layout: Layout | None, length: int) -> tuple[np.ndarray, ...]:
    """A `Mask`'s static masks (queries x keys, numpy), one per variant (`Mask.variant`): what segment ids
    cannot say. Layouts: without, then with the streaming text limit (one when there is no text)."""
    if rule == "full":
        return (np.ones((length, length), bool),)
    if rule == "causal":
        return (np.tril(np.ones((length, length), bool)),)
    return tuple(layout_tiles(layout, streaming) for streaming in (False, True)[: 1 + bool(layout.text)])


@functools.lru_cache(maxsize=64)
def layout_tiles(layout: Layout, streaming: bool) -> np.ndarray:
    """`visibility` over the layout's static attributes (every position valid, one segment; packed: each
    SOS slot its own), with BOS copies in front of the keys for packed layouts -> (n, shared + n) bool.
    Within a segment this is the rule itself: packed segments start on block boundaries, so block and
    index comparisons agree with the row's own, and segment ids do the rest."""
    t, s, bs = layout.text, layout.speech, layout.block_size
    slots = s // bs if layout.packed else 1
    kinds = (NOISY, CLEAN) if layout.rule == "block_diffusion" else (CLEAN,)
    kind = np.concatenate([[BOS], np.full(t, TEXT), np.full(slots, SOS), *[np.full(s, k) for k in kinds]])
    index = np.concatenate([[0], np.arange(t), np.zeros(slots, int), *[np.arange(s)] * len(kinds)])
    block = np.where(kind >= NOISY, index // bs, 0)
    chunk_limit = (block + 1) * layout.text_per_block if streaming else np.full_like(block, t)
    text_limit = np.where(kind == BOS, 0, np.where(kind == TEXT, index + 1, chunk_limit))
    attrs = dict(kind=kind, index=index, block=block, slot=np.arange(kind.size), text_limit=text_limit,
                 valid=np.ones(kind.size, bool), segment=np.zeros_like(kind))
    q = Attrs(**{name: x[:, None] for name, x in attrs.items()})
    k = Attrs(**{name: x[None, :] for name, x in attrs.items()})
    tiles = np.asarray(visibility(q, k, block_diffusion=layout.rule == "block_diffusion"))
    return np.concatenate([np.repeat(tiles[:, :1], slots if layout.packed else 0, axis=1), tiles], axis=1)
