"""Tests that transform params leaf by leaf by shape ("sharpen the matrices") see each layer's own
leaf, as before layers were stacked: a scanned stack's (L, ...) leaves are split, mapped, restacked."""

import jax
import jax.numpy as jnp

from mdm_jax.model.transformer import stack_layers, unstack_layers


def per_layer_map(fn, params, with_path: bool = False):
    """`jax.tree.map(fn, params)` (or `tree_map_with_path`) over the per-layer view of `params`."""
    mapper = jax.tree_util.tree_map_with_path if with_path else jax.tree.map
    return jax.tree.map(jnp.asarray, stack_layers(mapper(fn, unstack_layers(params)), params))
