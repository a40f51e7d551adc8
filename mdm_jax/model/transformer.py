"""The LLaMA decoder layer and a stack of them, shared by the LLM and the speech decoder."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mdm_jax.model.attention import Attention, KVCache
from mdm_jax.model.layers import MLP, RMSNorm


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x))."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    inv_freq: tuple
    eps: float
    qkv_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    qk_norm: bool = False

    @nn.compact
    def __call__(self, x, positions, mask, cache: KVCache | None = None, cache_index=None):
        h, cache = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.inv_freq,
                             self.qkv_bias, self.dtype, self.qk_norm, self.eps, name="attn")(
            RMSNorm(self.eps, self.dtype, name="attn_norm")(x), positions, mask, cache, cache_index)
        x = x + h
        x = x + MLP(self.ffn_dim, self.dtype, name="mlp")(RMSNorm(self.eps, self.dtype, name="mlp_norm")(x))
        return x, cache


class DecoderStack(nn.Module):
    """`num_layers` DecoderLayers named layers_0.. (optionally rematerialised); caches are a list."""

    num_layers: int
    layer: dict  # DecoderLayer keyword arguments
    remat: bool = False

    @nn.compact
    def __call__(self, x, positions, mask, caches: list | None = None, cache_index=None):
        cls = nn.remat(DecoderLayer) if self.remat else DecoderLayer
        new_caches = []
        for i in range(self.num_layers):
            x, c = cls(**self.layer, name=f"layers_{i}")(
                x, positions, mask, None if caches is None else caches[i], cache_index)
            new_caches.append(c)
        return x, (None if caches is None else new_caches)
