"""A CosyVoice2 model folder (`flow.pt` + `hift.pt`, as CosyVoice2-0.5B ships them, or the same names as
.safetensors) -> a `CosyVoice2Token2Wav` folder that `load_token2wav` opens.

    python -m mdm_jax.cli convert cosyvoice2 --src CosyVoice2-0.5B --out cosyvoice2_jax [--speaker spk.npy]

The .pt files are read with `torch.load(weights_only=True)` (tensors only: nothing in a downloaded
file is unpickled as code); sizes default to CosyVoice2-0.5B's and change with `flow.KEY=VALUE` /
`hift.KEY=VALUE` (e.g. a smaller test model).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from mdm_jax.config.overrides import ConfigError
from mdm_jax.convert.cosyvoice_flow import flow_from_torch
from mdm_jax.convert.hift import hift_from_torch
from mdm_jax.vocoder.cosyvoice2 import CosyVoice2Token2Wav
from mdm_jax.vocoder.cosyvoice_flow import CosyFlowConfig
from mdm_jax.vocoder.hift import HiFTConfig


def read_state(folder: Path, name: str) -> dict[str, np.ndarray]:
    """`name`.safetensors or `name`.pt in `folder` -> {key: float32 array}."""
    if (folder / f"{name}.safetensors").is_file():
        return load_file(folder / f"{name}.safetensors")
    path = folder / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {name}.pt or {name}.safetensors (a CosyVoice2 model folder has both "
                                f"flow and hift)")
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch (pip install torch), or convert it to {name}.safetensors") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, or not a state dict at all
        raise ValueError(f"{path}: not a plain tensor state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def sizes(overrides: list[str]) -> tuple[CosyFlowConfig, HiFTConfig]:
    """`flow.KEY=VALUE` / `hift.KEY=VALUE` (JSON values: 64, 0.5, [8, 5, 3]) over CosyVoice2-0.5B's sizes."""
    fields: dict[str, dict] = {"flow": {}, "hift": {}}
    for item in overrides:
        key, sep, value = item.partition("=")
        part, _, name = key.partition(".")
        if not sep or part not in fields:
            raise ConfigError(f"{item!r}: expected flow.KEY=VALUE or hift.KEY=VALUE")
        known = {f.name for f in dataclasses.fields(CosyFlowConfig if part == "flow" else HiFTConfig)}
        if name not in known:
            raise ConfigError(f"unknown {part} size {name!r} (one of {', '.join(sorted(known))})")
        fields[part][name] = json.loads(value)
    return CosyFlowConfig(**fields["flow"]), HiFTConfig(**fields["hift"])


def convert_cosyvoice2(src: str | Path, out: str | Path, overrides: list[str] = (),
                       speaker: str | None = None) -> CosyVoice2Token2Wav:
    """Convert and save; `speaker`: a .npy x-vector (spk_embed_dim,) for the voice (default zeros)."""
    flow_cfg, hift_cfg = sizes(list(overrides))
    src = Path(src)
    voice = np.zeros(flow_cfg.spk_embed_dim, np.float32) if speaker is None else np.load(speaker).astype(np.float32)
    if voice.shape != (flow_cfg.spk_embed_dim,):
        raise ValueError(f"{speaker}: speaker embedding of shape {voice.shape}, expected ({flow_cfg.spk_embed_dim},)")
    t2w = CosyVoice2Token2Wav(flow_from_torch(read_state(src, "flow"), flow_cfg), flow_cfg,
                              hift_from_torch(read_state(src, "hift"), hift_cfg), hift_cfg, voice,
                              prompt_mel=np.zeros((0, flow_cfg.n_mels), np.float32))
    t2w.save(out)
    return t2w
