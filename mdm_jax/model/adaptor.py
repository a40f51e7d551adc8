"""Speech adaptor: concatenate k consecutive encoder frames (50 Hz -> 10 Hz), then Linear-ReLU-Linear."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from mdm_jax.config.model import AdaptorConfig
from mdm_jax.model.layers import param


class Adaptor(nn.Module):
    cfg: AdaptorConfig
    d_out: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: (b, t, d_enc) -> (b, t // k, d_out); trailing frames that do not fill a group are dropped."""
        k, hid = self.cfg.downsample, self.cfg.hidden_dim
        x = rearrange(x[:, : x.shape[1] // k * k], "b (t k) d -> b t (k d)", k=k).astype(self.dtype)
        zeros = nn.initializers.zeros
        x = x @ param(self, "w1", (x.shape[-1], hid), ("adaptor", "embed"), self.dtype)
        x = nn.relu(x + param(self, "b1", (hid,), ("embed",), self.dtype, zeros))
        x = x @ param(self, "w2", (hid, self.d_out), ("adaptor", "embed"), self.dtype)
        return x + param(self, "b2", (self.d_out,), ("embed",), self.dtype, zeros)
