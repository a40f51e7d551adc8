"""Read a Hugging Face model folder offline: config.json + (sharded) *.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def load_hf_folder(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """-> (config.json as a dict, {tensor name: numpy array}) from every *.safetensors in `path`."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path / 'config.json'} not found: not a Hugging Face model folder")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path} (PyTorch .bin checkpoints: re-save with safetensors)")
    state: dict[str, np.ndarray] = {}
    for f in files:
        with safe_open(f, framework="flax") as st:  # the flax reader understands bfloat16
            state.update({k: np.asarray(st.get_tensor(k)) for k in st.keys()})
    return json.loads((path / "config.json").read_text()), state


def save_hf_folder(path: str | Path, config: dict, state: dict[str, np.ndarray]) -> Path:
    """Write config.json + model.safetensors that `transformers.AutoModelForCausalLM.from_pretrained` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    return path
