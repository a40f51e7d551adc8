"""Key tables: one `Rule` per tensor, applied with full validation in both directions.

Importing checks every expected key is present with the expected shape and that no key is left
over, so nothing is silently left at random init and nothing is silently dropped. Rules name
layers one by one (`layers_3/attn/wq`); scanned stacks are (un)stacked here, in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import numpy as np

from mdm_jax.model.transformer import stack_layers, unstack_layers


class ConversionError(ValueError):
    """A missing, unexpected or mis-shaped tensor; the message names the key and the shapes."""


@dataclass(frozen=True)
class Rule:
    src: str  # key in the foreign state dict
    path: tuple[str, ...]  # path in our params pytree
    to_ours: Callable = lambda w: w
    to_src: Callable = lambda w: w


def linear(*shape):
    """torch Linear weight (out, in) <-> our (in, *shape) with prod(shape) = out."""
    return dict(to_ours=lambda w: w.T.reshape(w.shape[1], *shape),
                to_src=lambda w: w.reshape(w.shape[0], -1).T)


def linear_in(*shape):
    """torch Linear weight (out, in) <-> our (*shape, out) with prod(shape) = in (row-parallel)."""
    return dict(to_ours=lambda w: w.T.reshape(*shape, w.shape[0]),
                to_src=lambda w: w.reshape(-1, w.shape[-1]).T)


def conv1d():
    """torch Conv1d weight (out, in, k) <-> flax Conv (k, in, out); a ConvTranspose1d's (in, out, k) becomes
    (k, out, in), flax's `transpose_kernel=True` layout."""
    return dict(to_ours=lambda w: w.transpose(2, 1, 0), to_src=lambda w: w.transpose(2, 1, 0))


def reshape(*shape):
    return dict(to_ours=lambda w: w.reshape(*shape), to_src=lambda w: w.reshape(-1))


def transpose():
    return dict(to_ours=lambda w: w.T, to_src=lambda w: w.T)


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def import_tensors(state: Mapping[str, np.ndarray], rules: list[Rule], abstract: dict,
                   ignore: Callable[[str], bool] = lambda k: False) -> dict:
    """state: foreign {key: array}; abstract: our params' ShapeDtypeStructs -> params (numpy)."""
    expected = {r.src for r in rules}
    unexpected = sorted(k for k in state if k not in expected and not ignore(k))
    if unexpected:
        raise ConversionError(f"unexpected key {unexpected[0]!r} ({len(unexpected)} in all: "
                              f"{unexpected[:5]}); no rule maps it into the model")
    out: dict = {}
    per_layer = jax.eval_shape(unstack_layers, abstract)
    for r in rules:
        target = _get(per_layer, r.path)
        src_shape = jax.eval_shape(r.to_src, target).shape
        if r.src not in state:
            raise ConversionError(f"missing key {r.src!r} (expected shape {src_shape})")
        w = np.asarray(state[r.src], dtype=np.float32)
        if w.shape != src_shape:
            raise ConversionError(f"key {r.src!r} has shape {w.shape}, expected {src_shape} "
                                  f"(-> {'/'.join(r.path)} {target.shape})")
        _set(out, r.path, np.ascontiguousarray(r.to_ours(w)))
    return stack_layers(out, abstract)


def export_tensors(params: dict, rules: list[Rule]) -> dict[str, np.ndarray]:
    params = unstack_layers(params)
    return {r.src: np.ascontiguousarray(r.to_src(np.asarray(_get(params, r.path), np.float32)))
            for r in rules}
