"""Params on disk: an Orbax checkpoint of the params pytree next to its config JSON.

    save_params("ckpt/", params, cfg)     # ckpt/params (Orbax), ckpt/config.json
    params, cfg = load_params("ckpt/")    # every shape checked against the stored config

Params saved before the layer stacks were scanned (`layers_0`, `layers_1`, ...) load too, stacked.

`cfg` is a `ModelConfig` (whole VocalNet) or an `LLMConfig` (a converted text LLM alone). A folder
that is not a whole, readable checkpoint raises `CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mdm_jax.config.model import LLMConfig, ModelConfig
from mdm_jax.config.overrides import ConfigError, from_dict
from mdm_jax.model.llm import abstract_llm_params
from mdm_jax.model.transformer import stack_layers, unstack_layers
from mdm_jax.model.vocalnet import abstract_params

CONFIG_TYPES = {"ModelConfig": ModelConfig, "LLMConfig": LLMConfig}


class CheckpointError(ConfigError):
    """A params folder that cannot be loaded; the message names the file and what is wrong, in one line."""


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
    """-> (params, config); CheckpointError if the folder is not one, its config.json is not a config,
    a stored tensor has another shape than the config expects, or the params are missing or damaged."""
    path = Path(path).absolute()
    if not (path / "config.json").is_file() or not (path / "params").is_dir():
        raise CheckpointError(f"{path} is not a params checkpoint (expected config.json and params/)")
    cfg = _read_config(path / "config.json")
    abstract = _abstract(cfg)
    with ocp.StandardCheckpointer() as ckpt:
        try:
            stored = ckpt.metadata(path / "params").item_metadata
            if stored is None:
                raise CheckpointError(f"{path / 'params'}: cannot be restored: its _METADATA is missing or damaged")
            layout = _stored_layout(path, stored.tree, abstract)
            params = ckpt.restore(path / "params", layout)
        except CheckpointError:
            raise
        except Exception as e:  # Orbax / TensorStore raise plain Exceptions for missing and truncated files
            raise CheckpointError(f"{path / 'params'}: cannot be restored: {_first_line(e)}") from None
    if layout is not abstract:  # saved before layers were scanned: one subtree per layer
        params = jax.tree.map(jnp.asarray, stack_layers(params, abstract))
    return params, cfg


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stored_layout(path: Path, stored, abstract):
    """The abstract params (stacked layers, or one subtree per layer) whose tensors are the stored ones;
    CheckpointError naming the tensors missing, extra or of another shape than config.json implies."""
    got = _shapes(stored)
    per_layer = jax.eval_shape(unstack_layers, abstract)
    for layout in (abstract, per_layer):
        if _shapes(layout) == got:
            return layout
    want = _shapes(per_layer if _shapes(per_layer).keys() == got.keys() else abstract)
    faults = ([f"{k} stored {got[k]}, config.json implies {want[k]}" for k in sorted(want.keys() & got.keys())
               if got[k] != want[k]] + [f"{k} missing" for k in sorted(want.keys() - got.keys())]
              + [f"{k} unexpected" for k in sorted(got.keys() - want.keys())])
    more = f" (and {len(faults) - 3} more)" if len(faults) > 3 else ""
    raise CheckpointError(f"{path / 'params'}: not the params of its config.json: {'; '.join(faults[:3])}{more}")


def _read_config(file: Path):
    """config.json -> the config dataclass it holds; CheckpointError naming what is wrong."""
    try:
        meta = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("type") not in CONFIG_TYPES or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{file}: expected {{\"type\": one of {sorted(CONFIG_TYPES)}, \"config\": {{...}}}}, "
                              f"got {_first_line(json.dumps(meta))[:80]}")
    try:
        cfg = from_dict(CONFIG_TYPES[meta["type"]], meta["config"])
        _abstract(cfg)  # every size usable
    except (ConfigError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{file}: not a {meta['type']}: {_first_line(e)}") from None
    return cfg


def _first_line(e) -> str:
    """An error's message on one line; TensorStore's long specs reduced to the tensor they name."""
    text = str(e)
    tensor = [p for p in re.findall(r"'path': '([^']*)'", text) if not p.startswith("/")]
    for tail in ("See full TensorStore details", " Truncating/padding is disabled"):  # Orbax's advice: not ours
        text = text.split(tail)[0]
    text = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return text + (f" (tensor {tensor[-1].rstrip('/')})" if tensor else "")
