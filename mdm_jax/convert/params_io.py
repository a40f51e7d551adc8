"""Params on disk: an Orbax checkpoint of the params pytree next to its config JSON.

    save_params("ckpt/", params, cfg)     # ckpt/params (Orbax), ckpt/config.json
    params, cfg = load_params("ckpt/")    # every shape checked against the stored config

Params saved before the layer stacks were scanned (`layers_0`, `layers_1`, ...) load too, stacked.

`cfg` is a `ModelConfig` (whole VocalNet) or an `LLMConfig` (a converted text LLM alone).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mdm_jax.config.model import LLMConfig, ModelConfig
from mdm_jax.config.overrides import from_dict
from mdm_jax.model.llm import abstract_llm_params
from mdm_jax.model.transformer import stack_layers, unstack_layers
from mdm_jax.model.vocalnet import abstract_params

CONFIG_TYPES = {"ModelConfig": ModelConfig, "LLMConfig": LLMConfig}


def _abstract(cfg):
    return abstract_params(cfg) if isinstance(cfg, ModelConfig) else abstract_llm_params(cfg)


def save_params(path: str | Path, params, cfg) -> Path:
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    meta = {"type": type(cfg).__name__, "config": dataclasses.asdict(cfg)}
    (path / "config.json").write_text(json.dumps(meta, indent=2))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "params", params, force=True)
    return path


def load_params(path: str | Path):
    """-> (params, config); a stored tensor whose shape the config does not expect raises."""
    path = Path(path).absolute()
    if not (path / "config.json").exists() or not (path / "params").exists():
        raise FileNotFoundError(f"{path} is not a params checkpoint (expected config.json and params/)")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("type") not in CONFIG_TYPES:
        raise ValueError(f"{path / 'config.json'}: unknown config type {meta.get('type')!r}")
    cfg = from_dict(CONFIG_TYPES[meta["type"]], meta["config"])
    abstract = _abstract(cfg)
    with ocp.StandardCheckpointer() as ckpt:
        try:
            params = ckpt.restore(path / "params", abstract)
        except ValueError as stacked_error:  # saved before layers were scanned: one subtree per layer
            try:
                per_layer = ckpt.restore(path / "params", jax.eval_shape(unstack_layers, abstract))
            except ValueError:
                raise stacked_error from None
            params = jax.tree.map(jnp.asarray, stack_layers(per_layer, abstract))
    return params, cfg
