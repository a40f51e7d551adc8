"""A saved token2wav, of whichever kind, by its file."""

from __future__ import annotations

from pathlib import Path

from mdm_jax.vocoder.base import Token2Wav
from mdm_jax.vocoder.centroid import CentroidGriffinLim
from mdm_jax.vocoder.cosyvoice2 import CosyVoice2Token2Wav
from mdm_jax.vocoder.flow import FlowToken2Wav


def load_token2wav(path: str) -> Token2Wav:
    """A saved token2wav: a converted CosyVoice2 folder, `FlowToken2Wav` (.msgpack) or `CentroidGriffinLim` (.npz)."""
    if Path(path).is_dir():
        return CosyVoice2Token2Wav.load(path)
    if path.endswith(".msgpack"):
        return FlowToken2Wav.load(path)
    if path.endswith(".npz"):
        return CentroidGriffinLim.load(path)
    raise ValueError(f"{path}: unknown token2wav file (expected a CosyVoice2 folder, a FlowToken2Wav .msgpack or "
                     f"a CentroidGriffinLim .npz)")
