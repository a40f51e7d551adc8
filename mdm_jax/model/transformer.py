"""The LLaMA decoder layer, and a stack of identical layers scanned over one compiled body.

A stack's params sit under one `stacked` subtree with a leading layer axis (logical name
`layers`): `llm/layers/stacked/attn/wq` is (L, D, h, d), and a stack's KV cache is one dict of
(L, b, s, kv, d) arrays. `unstack_layers` gives the per-layer layout `layers_0..`, which
converters name and unrolled stacks (`Execution.unroll`: decoding, and the compile-time
baseline) run on; `stack_layers` is the way back.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.config.model import Execution
from mdm_jax.model.attention import Attention, KVCache, as_used
from mdm_jax.model.layers import MLP, RMSNorm
from mdm_jax.model.sharding import vary_like

STACKED = "stacked"  # the params key of a scanned stack

# what the backward pass may keep, per `ModelConfig.remat_policy`
POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep the weight matmuls' outputs
    "dots_and_attention": jax.checkpoint_policies.dots_saveable,  # keep every matmul, attention's too
}


def rematerialised(layer: type[nn.Module], execution: Execution) -> type[nn.Module]:
    """`layer` under `jax.checkpoint` with the policy `execution.remat` names (as is for "none")."""
    if execution.remat == "none":
        return layer
    return nn.remat(layer, policy=POLICIES[execution.remat], prevent_cse=False)


def scan_layers(body, num_layers: int, execution: Execution, in_axes: tuple):
    """`body` ((carry, *inputs) -> (carry, output): a layer class, or a function of (module, carry,
    *inputs)) scanned `num_layers` times with its params stacked on axis 0 (logical axis 'layers');
    `in_axes` says per input whether it is per layer (0) or shared (nn.broadcast)."""
    return nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes,
                   length=num_layers, unroll=num_layers if execution.unroll else 1,
                   metadata_params={nn.PARTITION_NAME: "layers"})


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
    attention: str = "einsum"  # the attention implementation (`Execution.attention`)

    @nn.compact
    def __call__(self, x, positions, mask, cache: KVCache | None = None, cache_index=None, layer=None):
        h, cache = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.inv_freq,
                             self.qkv_bias, self.dtype, self.qk_norm, self.eps, self.attention, name="attn")(
            RMSNorm(self.eps, self.dtype, name="attn_norm")(x), positions, mask, cache, cache_index, layer)
        x = x + h
        x = x + MLP(self.ffn_dim, self.dtype, name="mlp")(RMSNorm(self.eps, self.dtype, name="mlp_norm")(x))
        return x, cache


def _stack_body(stack, carry, positions, mask, cache_index):
    """One layer of a DecoderStack: carry (x, the stack's caches or None, layer index)."""
    x, caches, layer = carry
    layer_module = rematerialised(DecoderLayer, stack.execution)(**stack.layer, name=STACKED)
    x, caches = layer_module(x, positions, mask, caches, cache_index, None if caches is None else layer)
    return (x, caches, layer + 1), None


class DecoderStack(nn.Module):
    """`num_layers` DecoderLayers scanned; `caches` is one stacked KVCache (`init_cache(..., layers=)`),
    carried through the scan so each layer writes its slice in place."""

    num_layers: int
    layer: dict  # DecoderLayer keyword arguments
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x, positions, mask, caches: KVCache | None = None, cache_index=None):
        if self.num_layers == 0:
            return x, caches
        mask = as_used(mask, self.execution.attention)
        if self.execution.unroll:  # one module per layer, `layers_i`: no weight slicing inside a decoding loop
            layer = rematerialised(DecoderLayer, self.execution)
            for i in range(self.num_layers):
                x, caches = layer(**self.layer, name=f"layers_{i}")(x, positions, mask, caches, cache_index,
                                                                   None if caches is None else i)
            return x, caches
        x = vary_like(x, positions, mask)
        caches = None if caches is None else vary_like(caches, x, sharded=True)  # the new K/V vary as x and heads
        scan = scan_layers(_stack_body, self.num_layers, self.execution, (nn.broadcast,) * 3)
        (x, caches, _), _ = scan(self, (x, caches, jnp.int32(0)), positions, mask, cache_index)
        return x, caches


def layer_axes(path) -> int:
    """Leading layer axes of the params leaf at `path` (a sequence of key names): 1 inside a stack, else 0."""
    return int(STACKED in path)


def unstack_layers(tree):
    """Every `stacked` subtree {leaf: (L, ...)} -> `layers_0`..`layers_{L-1}` {leaf: (...)}; the rest as is."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, sub in tree.items():
        if key == STACKED:
            n = jax.tree.leaves(sub)[0].shape[0]
            out.update({f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], sub) for i in range(n)})
        else:
            out[key] = unstack_layers(sub)
    return out


def stack_layers(tree, like):
    """The inverse of `unstack_layers`: `layers_i` subtrees of `tree` stacked (numpy) wherever `like`
    (a stacked tree, or its shapes) has a `stacked` subtree."""
    if not isinstance(like, dict):
        return tree
    if STACKED not in like:
        return {key: stack_layers(sub, like.get(key)) for key, sub in tree.items()}
    n = jax.tree.leaves(like[STACKED])[0].shape[0]
    layers = [f"layers_{i}" for i in range(n)]
    out = {key: stack_layers(sub, like.get(key)) for key, sub in tree.items() if key not in layers}
    return {**out, STACKED: jax.tree.map(lambda *xs: np.stack(xs), *(tree[k] for k in layers))}
