"""Grouped-query attention with RoPE, an explicit boolean mask and an optional fixed-size KV cache."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.model.layers import RMSNorm, param
from mdm_jax.model.rope import apply_rope
from mdm_jax.model.sharding import local, psum_model

KVCache = dict  # {'k': (b, s, kv, d), 'v': (b, s, kv, d)}, or (L, b, s, kv, d) for a stack of L layers


def init_cache(batch: int, length: int, num_kv_heads: int, head_dim: int, dtype=jnp.float32,
               layers: int | None = None) -> KVCache:
    """Zeros for `length` slots (with a leading axis of `layers` for a layer stack); under
    shard_map this device's share of the kv heads."""
    shape = (batch, length, local(num_kv_heads, "num_kv_heads"), head_dim)
    zeros = jnp.zeros(shape if layers is None else (layers, *shape), dtype)
    return {"k": zeros, "v": zeros}


def dot_product_attention(q, k, v, mask=None, implementation: str = "xla"):
    """q: (b, t, h, d); k, v: (b, s, kv, d) with h a multiple of kv (grouped queries); mask: (b, t, s)
    bool, True = may attend, or None for full attention -> (b, t, h, d).

    `jax.nn.dot_product_attention` by `implementation` (`config.model.ATTENTION`): logits and
    softmax in float32; a fully masked row gives a uniform average instead of NaN.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None],
                                        implementation=implementation)


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
    implementation: str = "xla"  # of `dot_product_attention`

    @nn.compact
    def __call__(self, x, positions, mask, cache: KVCache | None = None, cache_index=None):
        """x: (b, t, D); positions: (b, t); mask: (b, t, s) where s = t, or the cache length.

        With a cache, the new keys/values are written at `cache_index` (scalar) and the queries
        attend over the whole cache. Returns (out (b, t, D), new cache or None).
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
            start = (0, cache_index, 0, 0)
            cache = {"k": lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
                     "v": lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)}
            k, v = cache["k"].astype(self.dtype), cache["v"].astype(self.dtype)
        out = dot_product_attention(q, k, v, mask, self.implementation)
        wo = param(self, "wo", (h, hd, d), ("heads", "head_dim", "embed"), self.dtype)
        return psum_model(jnp.einsum("bthd,hdD->btD", out, wo)), cache
