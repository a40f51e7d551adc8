"""Whisper encoder: two conv1d (stride 1, 2) + position table + pre-LN layers + final LayerNorm."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from mdm_jax.config.model import EncoderConfig
from mdm_jax.diffusion.attention_masks import Mask
from mdm_jax.model.attention import as_used, dot_product_attention
from mdm_jax.model.layers import param
from mdm_jax.model.sharding import local, psum_model
from mdm_jax.model.transformer import STACKED, Execution, rematerialised, scan_layers

_zeros = nn.initializers.zeros


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> np.ndarray:
    """Whisper's fixed position table: (length, channels), sin half then cos half."""
    log_inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-log_inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


class WhisperAttention(nn.Module):
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    implementation: str = "einsum"

    @nn.compact
    def __call__(self, x, mask=None):
        """x: (b, t, d); mask: a `Mask` (`Mask.full` over the valid keys), a dense (b, t, t) bool array, or
        None -> (b, t, d)."""
        d = x.shape[-1]
        h, hd = local(self.num_heads, "encoder.num_heads"), d // self.num_heads
        heads = ("embed", "heads", "head_dim")
        proj = lambda name, bias: (
            jnp.einsum("btD,Dhd->bthd", x, param(self, f"w{name}", (d, h, hd), heads, self.dtype))
            + (param(self, f"b{name}", (h, hd), heads[1:], self.dtype, _zeros) if bias else 0))
        out = dot_product_attention(proj("q", True), proj("k", False), proj("v", True), mask,
                                    implementation=self.implementation)
        out = jnp.einsum("bthd,hdD->btD", out, param(self, "wo", (h, hd, d), (*heads[1:], "embed"), self.dtype))
        return psum_model(out) + param(self, "bo", (d,), ("embed",), self.dtype, _zeros)


class WhisperMLP(nn.Module):
    ffn_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, f = x.shape[-1], local(self.ffn_dim, "encoder.ffn_dim")
        x = x @ param(self, "w1", (d, f), ("embed", "mlp"), self.dtype)
        x = x + param(self, "b1", (f,), ("mlp",), self.dtype, _zeros)
        x = nn.gelu(x, approximate=False) @ param(self, "w2", (f, d), ("mlp", "embed"), self.dtype)
        return psum_model(x) + param(self, "b2", (d,), ("embed",), self.dtype, _zeros)


def layer_norm(eps, dtype, name):
    return nn.LayerNorm(eps, dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class WhisperLayer(nn.Module):
    cfg: EncoderConfig
    dtype: jnp.dtype = jnp.float32
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x, mask):
        """x (b, t, d); mask: `Mask.full` of the valid keys, or None -> (x, None): the scan's (carry, output) form."""
        c = self.cfg
        x = x + WhisperAttention(c.num_heads, self.dtype, self.attention, name="attn")(
            layer_norm(c.layer_norm_eps, self.dtype, "attn_norm")(x), mask)
        return x + WhisperMLP(c.ffn_dim, self.dtype, name="mlp")(
            layer_norm(c.layer_norm_eps, self.dtype, "mlp_norm")(x)), None


class WhisperEncoder(nn.Module):
    cfg: EncoderConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, mel, frames=None):
        """mel: (b, n_mels, F) log-mel at 100 Hz -> (b, ceil(F / 2), d) at 50 Hz. frames: (b,) valid mel frames
        of rows zero-padded to F (a length bucket), or None for all F: valid positions then equal the
        unpadded run's (the padding is what the convolutions' edges read, and attention never reads it)."""
        c = self.cfg
        conv = lambda name, stride: nn.Conv(
            c.d_model, (3,), strides=(stride,), padding=((1, 1),), dtype=self.dtype, name=name,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv", None, "conv_out")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))
        x = rearrange(mel, "b c t -> b t c").astype(self.dtype)
        x = nn.gelu(conv("conv1", 1)(x), approximate=False)
        mask = Mask.full()
        if frames is not None:
            x = jnp.where(jnp.arange(x.shape[1])[None, :, None] < frames[:, None, None], x, 0)  # conv2's zero edge
            mask = Mask.full(jnp.arange(-(-x.shape[1] // 2))[None] < -(-frames[:, None] // 2))  # (b, t) keys
        mask = as_used(mask, self.execution.attention)  # one dense mask for every layer, or splash's
        x = nn.gelu(conv("conv2", 2)(x), approximate=False)
        if x.shape[1] > c.max_source_positions:
            raise ValueError(f"{mel.shape[-1]} mel frames give {x.shape[1]} encoder positions, more than "
                             f"max_source_positions={c.max_source_positions} (30 s for Whisper)")
        table = param(self, "embed_positions", (c.max_source_positions, c.d_model), ("positions", "position_features"),
                      self.dtype, lambda *_: jnp.asarray(sinusoids(c.max_source_positions, c.d_model)))
        x = x + table[: x.shape[1]]
        layer = rematerialised(WhisperLayer, self.execution)
        if self.execution.unroll:  # the per-layer layout (`transformer.unstack_layers`)
            for i in range(c.num_layers):
                x, _ = layer(c, self.dtype, self.execution.attention, name=f"layers_{i}")(x, mask)
        else:
            layers = scan_layers(layer, c.num_layers, self.execution, (nn.broadcast,))
            x, _ = layers(c, self.dtype, self.execution.attention, name=STACKED)(x, mask)
        return layer_norm(c.layer_norm_eps, self.dtype, "final_norm")(x)
