"""LoRA as a transform of the params pytree: low-rank factors beside the frozen weights, merged on use.

    lora = init({"llm": params["llm"]}, ("wq", "wv"), rank=8, key=key)  # {'llm': {... 'wq': {'a', 'b'}}}
    merged = merge(params, lora, scale=alpha / rank)      # plain params: train through it, or export it

A target weight W with input axes I and output axes O (e.g. wq (D, h, d): I = (D,), O = (h, d);
wo (h, d, D): I = (h, d), O = (D,)) gets a (I..., r) and b (r, O...), and W' = W + scale · a·b.
b starts at zero, so merging a fresh LoRA is the identity. The factors keep the logical sharding
of the axes they share with W, so W' is sharded exactly as W under tensor parallelism. A weight of a
scanned stack keeps its leading layer axis L in both factors: a (L, I..., r), b (L, r, O...).
"""

from __future__ import annotations

import functools
import math
import zlib

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mdm_jax.model.transformer import layer_axes

INPUT_AXES = {"wo": 2}  # weights whose input spans more than their first axis (attention out: heads, head_dim)


def init(params, targets: tuple[str, ...], rank: int, key):
    """LoRA factors for every leaf named in `targets` under `params` (a nested dict) -> nested dict."""
    found = {}

    def visit(tree, path):
        out = {}
        for name, value in tree.items():
            if isinstance(value, dict):
                sub = visit(value, (*path, name))
                if sub:
                    out[name] = sub
            elif name in targets:
                lead = layer_axes((*path, name))
                n_in = lead + INPUT_AXES.get(name, 1)
                k = jax.random.fold_in(key, zlib.crc32("/".join((*path, name)).encode()) % 2**31)
                a = jax.random.normal(k, (*value.shape[:n_in], rank), jnp.float32)
                a = a / math.prod(value.shape[lead:n_in]) ** 0.5
                out[name] = {"a": a, "b": jnp.zeros((*value.shape[:lead], rank, *value.shape[n_in:]), jnp.float32)}
                found[name] = True
        return out

    lora = visit(params, ())
    missing = set(targets) - set(found)
    if missing:
        raise ValueError(f"LoRA targets {sorted(missing)} name no weight of the model")
    return lora


def _is_factor(sub) -> bool:
    return set(sub) == {"a", "b"} and not isinstance(sub["a"], dict)


def merge(params, lora, scale: float, path=()):
    """params with W + scale · a·b at every LoRA leaf; other leaves unchanged (same objects)."""
    if not lora:
        return params
    out = dict(params)
    for name, sub in lora.items():
        if _is_factor(sub):
            w, product = params[name], functools.partial(jnp.tensordot, axes=1)
            for _ in range(layer_axes((*path, name))):
                product = jax.vmap(product)  # one low-rank product per layer
            delta = product(sub["a"], sub["b"])
            out[name] = (w + scale * delta.astype(w.dtype)).astype(w.dtype)
        else:
            out[name] = merge(params[name], sub, scale, (*path, name))
    return out


def specs(param_specs, lora, path=()):
    """PartitionSpecs of the factors from the specs of their weights: a keeps W's layer and input
    axes, b its layer and output axes."""
    out = {}
    for name, sub in lora.items():
        if _is_factor(sub):
            lead = layer_axes((*path, name))
            ndim = sub["a"].ndim + sub["b"].ndim - 2 - lead
            spec = tuple(param_specs[name]) + (None,) * (ndim - len(param_specs[name]))
            n_in = sub["a"].ndim - 1
            out[name] = {"a": P(*spec[:n_in], None), "b": P(*spec[:lead], None, *spec[n_in:])}
        else:
            out[name] = specs(param_specs[name], sub, (*path, name))
    return out
