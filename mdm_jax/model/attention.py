"""Grouped-query attention with RoPE, a mask given by what it is made of (`Mask`) or as a dense boolean
array, and an optional fixed-size KV cache."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax

from mdm_jax.diffusion.attention_masks import Mask
from mdm_jax.model.layers import RMSNorm, param
from mdm_jax.model.rope import apply_rope
from mdm_jax.model.sharding import local, psum_model
from mdm_jax.model.splash import on_tpu, splash_attention

KVCache = dict  # {'k': (b, s, kv, d), 'v': (b, s, kv, d)}, or (L, b, s, kv, d) for a stack of L layers


def init_cache(batch: int, length: int, num_kv_heads: int, head_dim: int, dtype=jnp.float32,
               layers: int | None = None) -> KVCache:
    """Zeros for `length` slots (with a leading axis of `layers` for a layer stack); under
    shard_map this device's share of the kv heads."""
    shape = (batch, length, local(num_kv_heads, "num_kv_heads"), head_dim)
    zeros = jnp.zeros(shape if layers is None else (layers, *shape), dtype)
    return {"k": zeros, "v": zeros}


def dot_product_attention(q, k, v, mask: Mask | jax.Array | None = None, implementation: str = "einsum"):
    """q: (b, t, h, d); k, v: (b, s, kv, d) with h a multiple of kv (grouped queries); mask: a `Mask`, a
    dense (b, t, s) bool array (True = may attend: decoding against a KV cache), or None for full
    attention -> (b, t, h, d).

    `implementation` (`config.model.ATTENTION`): "einsum", grouped einsums with logits and softmax
    in float32 (a fully masked row gives a uniform average instead of NaN; on a CPU 5-10 % faster
    per decoding step than `jax.nn.dot_product_attention`'s XLA path, measured); "cudnn",
    `jax.nn.dot_product_attention`'s fused cuDNN kernel (NVIDIA GPUs, bf16/fp16); "splash", the TPU
    kernel that skips the tiles a `Mask` hides (`model.splash`; a dense mask, as in cached decoding,
    and packed rows of the text-prefix Talker, whose text limits move per example, go to einsum);
    "auto": splash on a TPU, einsum elsewhere.
    """
    mask = as_used(mask, implementation)
    if isinstance(mask, Mask):
        return splash_attention(q, k, v, mask)
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None],
                                            implementation="cudnn")
    groups = q.shape[2] // k.shape[2]
    q = rearrange(q, "b t (kv g) d -> b kv g t d", g=groups)
    scores = jnp.einsum("bkgtd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = nn.softmax(scores, axis=-1).astype(v.dtype)
    return rearrange(jnp.einsum("bkgts,bskd->bkgtd", probs, v), "b kv g t d -> b t (kv g) d")


def as_used(mask, implementation: str):
    """The mask as `implementation` reads it: a `Mask` for splash (where it can say it), else dense. Layer
    stacks call it once, so every layer shares one dense mask."""
    if implementation == "auto":
        implementation = "splash" if on_tpu() else "einsum"
    if isinstance(mask, Mask) and not (implementation == "splash" and mask.splashable):
        return mask.dense()
    return mask


def write_and_read(cache: KVCache, k, v, index, layer, dtype):
    """Write k, v (b, t, kv, d) at slot `index` of a layer's cache, or of slice `layer` of a stack's
    (updated in place: a scan carrying the stack never copies it) -> (its whole k, v, new cache)."""
    at = (0, index, 0, 0) if layer is None else (layer, 0, index, 0, 0)
    new = {name: x if layer is None else x[None] for name, x in (("k", k), ("v", v))}
    cache = {name: lax.dynamic_update_slice(cache[name], new[name].astype(cache[name].dtype), at) for name in cache}
    read = lambda c: c if layer is None else lax.dynamic_index_in_dim(c, layer, 0, keepdims=False)
    return read(cache["k"]).astype(dtype), read(cache["v"]).astype(dtype), cache


class Attention(nn.Module):
    """LLaMA / Qwen2 / Qwen3 self-attention; heads column-parallel, output row-parallel over 'model'."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    inv_freq: tuple  # RoPE inverse frequencies (static)
    qkv_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim of each q and k head, before RoPE
    eps: float = 1e-6  # of the q/k norms
    implementation: str = "einsum"  # of `dot_product_attention`

    @nn.compact
    def __call__(self, x, positions, mask, cache: KVCache | None = None, cache_index=None, layer=None):
        """x: (b, t, D); positions: (b, t); mask: (b, t, s) where s = t, or the cache length.

        With a cache, the new keys/values are written at `cache_index` (scalar) and the queries
        attend over the whole cache; `layer` (traced): the cache is a stack's, this layer's slice is
        used. Returns (out (b, t, D), new cache or None).
        """
        d, hd = x.shape[-1], self.head_dim
        h, kv = local(self.num_heads, "num_heads"), local(self.num_kv_heads, "num_kv_heads")
        heads, kv_heads = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
        q = jnp.einsum("btD,Dhd->bthd", x, param(self, "wq", (d, h, hd), heads, self.dtype))
        k = jnp.einsum("btD,Dhd->bthd", x, param(self, "wk", (d, kv, hd), kv_heads, self.dtype))
        v = jnp.einsum("btD,Dhd->bthd", x, param(self, "wv", (d, kv, hd), kv_heads, self.dtype))
        if self.qkv_bias:
            zeros = nn.initializers.zeros
            q = q + param(self, "bq", (h, hd), ("heads", "head_dim"), self.dtype, zeros)
            k = k + param(self, "bk", (kv, hd), ("kv_heads", "head_dim"), self.dtype, zeros)
            v = v + param(self, "bv", (kv, hd), ("kv_heads", "head_dim"), self.dtype, zeros)
        if self.qk_norm:
            q = RMSNorm(self.eps, self.dtype, name="q_norm")(q)
            k = RMSNorm(self.eps, self.dtype, name="k_norm")(k)
        q = apply_rope(q, positions, self.inv_freq)
        k = apply_rope(k, positions, self.inv_freq)
        if cache is not None:
            k, v, cache = write_and_read(cache, k, v, cache_index, layer, self.dtype)
        out = dot_product_attention(q, k, v, mask, self.implementation)
        wo = param(self, "wo", (h, hd, d), ("heads", "head_dim", "embed"), self.dtype)
        return psum_model(jnp.einsum("bthd,hdD->btD", out, wo)), cache
