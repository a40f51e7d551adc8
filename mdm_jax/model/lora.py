"""LoRA as a transform of the params pytree: low-rank factors beside the frozen weights, merged on use.

    lora = init({"llm": params["llm"]}, ("wq", "wv"), rank=8, key=key)  # {'llm': {... 'wq': {'a', 'b'}}}
    merged = merge(params, lora, scale=alpha / rank)      # plain params: train through it, or export it

A target weight W with input axes I and output axes O (e.g. wq (D, h, d): I = (D,), O = (h, d);
wo (h, d, D): I = (h, d), O = (D,)) gets a (I..., r) and b (r, O...), and W' = W + scale · a·b.
b starts at zero, so merging a fresh LoRA is the identity. The factors keep the logical sharding
of the axes they share with W, so W' is sharded exactly as W under tensor parallelism.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

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
                n_in = INPUT_AXES.get(name, 1)
                k = jax.random.fold_in(key, zlib.crc32("/".join((*path, name)).encode()) % 2**31)
                a = jax.random.normal(k, (*value.shape[:n_in], rank), jnp.float32)
                a = a / math.prod(value.shape[:n_in]) ** 0.5
                out[name] = {"a": a, "b": jnp.zeros((rank, *value.shape[n_in:]), jnp.float32)}
                found[name] = True
        return out

    lora = visit(params, ())
    missing = set(targets) - set(found)
    if missing:
        raise ValueError(f"LoRA targets {sorted(missing)} name no weight of the model")
    return lora


def merge(params, lora, scale: float):
    """params with W + scale · a·b at every LoRA leaf; other leaves unchanged (same objects)."""
    if not lora:
        return params
    out = dict(params)
    for name, sub in lora.items():
        if set(sub) == {"a", "b"} and not isinstance(sub["a"], dict):
            w = params[name]
            delta = jnp.tensordot(sub["a"], sub["b"], axes=1)
            out[name] = (w + scale * delta.astype(w.dtype)).astype(w.dtype)
        else:
            out[name] = merge(params[name], sub, scale)
    return out


def specs(param_specs, lora):
    """PartitionSpecs of the factors from the specs of their weights: a keeps W's input axes, b its output axes."""
    out = {}
    for name, sub in lora.items():
        if set(sub) == {"a", "b"} and not isinstance(sub["a"], dict):
            spec = tuple(param_specs[name]) + (None,) * (sub["a"].ndim + sub["b"].ndim - 2 - len(param_specs[name]))
            n_in = sub["a"].ndim - 1
            out[name] = {"a": P(*spec[:n_in], None), "b": P(None, *spec[n_in:])}
        else:
            out[name] = specs(param_specs[name], sub)
    return out
