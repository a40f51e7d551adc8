"""Splash attention: the TPU Pallas kernel that skips every tile its mask hides, fed a `Mask`'s static
tiles and segment ids. Off a TPU it runs interpreted (slow: tests at small shapes).

The kernel's tile masks are numpy, built once per (mask kind, layout, heads) when a program is traced;
what varies per row goes in segment ids (padding, packed examples) or picks one of the static variants
(the streaming text limit: rows run one at a time then, each with its own variant's kernel).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from jax import lax
from jax._src import config  # whether shard_map checks varying axes (no public handle)
from jax.experimental import pallas as pl
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as mask_info

from mdm_jax.diffusion.attention_masks import Layout, Mask, tiles
from mdm_jax.model.sharding import vary_like

TILE = 128  # queries and keys per tile (TPU lanes); also the head_dim granule


def on_tpu() -> bool:
    """Whether programs are being built for a TPU (the default device: `jax.default_device` in AOT compiles)."""
    device = jax.config.jax_default_device or jax.devices()[0]
    return device.platform == "tpu"


def padded(n: int) -> int:
    return -(-n // TILE) * TILE


@functools.lru_cache(maxsize=128)
def arrangement(rule: str, layout: Layout | None, q_len: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Where each query and key goes in the kernel's sequences: layouts start every region (prefix, each
    speech copy) on a tile boundary, so block structure lines up with tiles and whole tiles drop out
    -> (query places (t,), key places (s,), padded t, padded s)."""
    q, s = tiles(rule, layout, q_len)[0].shape
    if rule != "layout":
        return np.arange(q), np.arange(s), padded(q), padded(s)
    copies = (q - 1 - layout.text - (layout.speech // layout.block_size if layout.packed else 1)) // layout.speech

    def place(prefix: int) -> tuple[np.ndarray, int]:
        starts = padded(prefix) + np.arange(copies) * padded(layout.speech)
        places = np.concatenate([np.arange(prefix), *[start + np.arange(layout.speech) for start in starts]])
        return places, padded(prefix) + copies * padded(layout.speech)

    (q_places, q_total), (k_places, k_total) = place(q - copies * layout.speech), place(s - copies * layout.speech)
    return q_places, k_places, q_total, k_total


@functools.lru_cache(maxsize=128)
def tile_mask(rule: str, layout: Layout | None, q_len: int, variant: int) -> np.ndarray:
    """The variant's static mask in the kernel's arrangement: gaps are read by nobody, and a gap's query
    reads key 0 (a tile its real neighbours compute anyway; it stays finite)."""
    q_places, k_places, q_total, k_total = arrangement(rule, layout, q_len)
    out = np.zeros((q_total, k_total), bool)
    out[np.ix_(q_places, k_places)] = tiles(rule, layout, q_len)[variant]
    gaps = np.ones(q_total, bool)
    gaps[q_places] = False
    out[gaps, 0] = True
    return out


@functools.lru_cache(maxsize=128)
def kernel(rule: str, layout: Layout | None, q_len: int, variant: int, heads: int, interpret: bool):
    """A splash kernel (`make_splash_mha` without its device arrays: the mask info stays numpy, so any
    program, on any target, embeds it as constants)."""
    mask = masks.MultiHeadMask([masks.NumpyMask(tile_mask(rule, layout, q_len, variant))] * heads)
    sizes = splash.BlockSizes(block_q=TILE, block_kv=TILE, block_kv_compute=TILE, block_q_dkv=TILE,
                              block_kv_dkv=TILE, block_kv_dkv_compute=TILE, block_q_dq=TILE, block_kv_dq=TILE)
    shape = dict(downcast_smem_data=True, head_shards=1, q_seq_shards=1)
    fwd, mask_function = mask_info.process_mask(mask, (TILE, TILE), **shape)
    dq, _ = mask_info.process_mask(mask, (TILE, TILE), **shape)
    dkv, _ = mask_info.process_mask_dkv(mask, (TILE, TILE), **shape)
    return splash.SplashAttentionKernel(fwd, dq, dkv, block_sizes=sizes, is_mqa=False, save_residuals=False,
                                        mask_value=splash.DEFAULT_MASK_VALUE, attn_logits_soft_cap=None,
                                        residual_checkpoint_name=None, mask_function=mask_function,
                                        interpret=interpret)


def computed_tiles(rule: str, layout: Layout | None, q_len: int, variant: int = 0) -> tuple[int, int]:
    """(tiles the forward kernel computes, tiles of the dense score matrix, whole tiles of t x s) of one head."""
    mask = tile_mask(rule, layout, q_len, variant)
    grid = mask.reshape(mask.shape[0] // TILE, TILE, mask.shape[1] // TILE, TILE).any(axis=(1, 3))
    q, s = tiles(rule, layout, q_len)[0].shape
    return int(grid.sum()), padded(q) * padded(s) // TILE**2


def splash_attention(q, k, v, mask: Mask):
    """q: (b, t, h, d); k, v: (b, s, kv, d) (grouped queries); `mask` over t x s -> (b, t, h, d)."""
    b, t, h, d = q.shape
    interpret = not on_tpu()
    shared = mask.shared_keys  # packed layouts: BOS once per segment, in front of the keys
    k, v = (jnp.concatenate([jnp.repeat(x[:, :1], shared, axis=1), x], axis=1) if shared else x for x in (k, v))
    q_ids, kv_ids = mask.segment_ids() or (jnp.ones((b, t), jnp.int32), jnp.ones((b, k.shape[1]), jnp.int32))
    q_places, k_places, tq, ts = arrangement(mask.rule, mask.layout, t)
    pad_d = padded(d) - d if d % TILE else 0  # zeros in q and k add nothing to the scores; in v, columns cut

    def arrange(x, places, total):  # (b, n, ...) -> (b, total, ...), zeros in the gaps
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad_d))) if x.ndim == 4 else x
        return jnp.zeros((b, total, *x.shape[2:]), x.dtype).at[:, places].set(x)

    q = rearrange(arrange(q * jnp.asarray(d**-0.5, q.dtype), q_places, tq), "b t h d -> b h t d")
    k, v = (rearrange(arrange(x, k_places, ts), "b s kv d -> b kv s d") for x in (k, v))
    ids = splash.SegmentIds(arrange(q_ids, q_places, tq), arrange(kv_ids, k_places, ts))
    variant = mask.variant()
    kernels = [kernel(mask.rule, mask.layout, t, i, h, interpret) for i in range(1 if variant is None else 2)]

    def attend(q, k, v, ids, variant):
        if variant is None:
            return jax.vmap(kernels[0])(q, k, v, ids)
        # one row at a time, through its own variant's kernel only
        return lax.map(lambda row: lax.switch(row[0], kernels, *row[1:]), (variant, q, k, v, ids))

    q, k, v = vary_like((q, k, v), q, k, v)  # one type for the kernel's outputs to take (`_TypedPallas`)
    return rearrange(attend(q, k, v, ids, variant), "b h t d -> b t h d")[:, q_places, :, :d]


class _TypedPallas:
    """The splash module's `pl`, whose `pallas_call` gives its outputs the mesh axes its operands vary
    over: this jax's kernel declares none, which `shard_map(check_vma=True)` refuses. A kernel's outputs
    vary as its inputs do, so its forward and backward (traced whenever autodiff gets to it) run typed
    inside the sharded train step."""

    def __getattr__(self, name):
        return getattr(pl, name)

    @staticmethod
    def pallas_call(*args, out_shape, **kwargs):
        def call(*operands):
            shapes = out_shape
            if config._check_vma.value:
                mat = max((jax.typeof(x).mat for x in jax.tree.leaves(operands)), key=lambda m: len(m.varying))
                shapes = jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype, manual_axis_type=mat),
                                      out_shape)
            return pl.pallas_call(*args, out_shape=shapes, **kwargs)(*operands)
        return call


splash.pl = _TypedPallas()
