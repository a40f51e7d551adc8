"""Small building blocks: RMSNorm, SwiGLU MLP and the vocab-parallel embedding."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mdm_jax.model.sharding import FSDP, axis_size, fsdp_axis, gather_fsdp, local, model_axis_index, psum_model

WEIGHT_STD = 0.02  # every weight's init unless a module names another (`random_init` draws the same)


def param(module: nn.Module, name: str, shape: tuple, axes: tuple, dtype,
          init=nn.initializers.normal(WEIGHT_STD)):
    """A float32 parameter with logical axis names, cast to the compute dtype. Under FSDP (the
    'fsdp' axis bound) the stored value is this device's slice of the axis `RULES` split over it,
    gathered here in the compute dtype; autodiff scatters the gradient back."""
    split, shards = fsdp_axis(axes), axis_size(FSDP)
    if split is not None and shards > 1:
        if shape[split] % shards:
            raise ValueError(f"{module.name}/{name}: axis {axes[split]!r} of size {shape[split]} is not divisible "
                             f"by the 'fsdp' mesh axis size {shards}")
        shape = (*shape[:split], shape[split] // shards, *shape[split + 1:])
    value = module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32).astype(dtype)
    return value if split is None else gather_fsdp(value, split)


class RMSNorm(nn.Module):
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = param(self, "scale", (x.shape[-1],), ("norm",), jnp.float32, nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jnp.reciprocal(jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps))
        return (scale * x32).astype(self.dtype)


class MLP(nn.Module):
    """SwiGLU: gate/up column-parallel, down row-parallel over 'model'."""

    ffn_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, f = x.shape[-1], local(self.ffn_dim, "ffn_dim")
        gate = x @ param(self, "w_gate", (d, f), ("embed", "mlp"), self.dtype)
        up = x @ param(self, "w_up", (d, f), ("embed", "mlp"), self.dtype)
        return psum_model((nn.silu(gate) * up) @ param(self, "w_down", (f, d), ("mlp", "embed"), self.dtype))


class Embed(nn.Module):
    """Token embedding whose rows may be split over 'model' (vocab-parallel).

    `attend` gives the tied output head; under tensor parallelism it returns this device's
    slice of the vocabulary (the loss reduces over 'model').
    """

    vocab_size: int
    features: int
    axis: str = "vocab"
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        rows = local(self.vocab_size, "vocab_size") if self.axis == "vocab" else self.vocab_size
        self.embedding = param(self, "embedding", (rows, self.features), (self.axis, "embed"), jnp.float32)

    def __call__(self, ids):
        table = self.embedding.astype(self.dtype)
        if self.axis != "vocab" or table.shape[0] == self.vocab_size:
            return jnp.take(table, ids, axis=0)
        local_ids = ids - model_axis_index() * table.shape[0]
        mine = (local_ids >= 0) & (local_ids < table.shape[0])
        rows = jnp.take(table, jnp.clip(local_ids, 0, table.shape[0] - 1), axis=0)
        return psum_model(jnp.where(mine[..., None], rows, 0))

    def attend(self, x):
        return x @ self.embedding.astype(self.dtype).T
