"""A small converted model on disk (the S3 tokenizer, CAM++, CosyVoice2's token2wav): its sizes as JSON beside
its arrays as msgpack, read back with an error naming the folder when it is not one."""

from __future__ import annotations

import json
from pathlib import Path

import jax
from flax import serialization

PARAMS_FILE = "params.msgpack"


def save_folder(path: str | Path, config_file: str, meta: dict, arrays) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / config_file).write_text(json.dumps(meta, indent=1))
    (path / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(jax.device_get(arrays)))
    return path


def load_folder(path: str | Path, config_file: str, what: str, kind: str) -> tuple[dict, dict]:
    """-> (meta, arrays); FileNotFoundError naming the folder, `what` it should be and the `convert` kind to run."""
    path = Path(path)
    if not (path / config_file).is_file() or not (path / PARAMS_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a converted {what} (expected {config_file} and {PARAMS_FILE}; "
                                f"write one with `python -m mdm_jax.cli convert {kind}`)")
    arrays = serialization.msgpack_restore((path / PARAMS_FILE).read_bytes())
    return json.loads((path / config_file).read_text()), arrays


def check_fits(params, init, path: str | Path, config_file: str) -> None:
    """ValueError unless `params` have the shapes `init(key)` gives (the sizes `config_file` names)."""
    want = jax.tree.map(lambda a: a.shape, jax.eval_shape(init, jax.random.key(0)))
    if want != jax.tree.map(lambda a: a.shape, params):
        raise ValueError(f"{Path(path) / PARAMS_FILE}: its tensors do not fit {config_file}'s sizes")
