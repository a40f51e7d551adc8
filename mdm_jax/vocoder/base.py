"""Speech units -> waveform: the `Token2Wav` interface the samplers' output goes through, and what
every implementation shares (unit checks, the unit/frame alignment).

A stronger model (e.g. converted CosyVoice2 flow + HiFT weights) plugs in by implementing
`Token2Wav`. Here: `vocoder.centroid.CentroidGriffinLim` (the baseline) and `vocoder.flow.FlowToken2Wav`
(trained flow matching to the mel); `vocoder.load.load_token2wav` opens a saved one of either kind.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

FRAMES_PER_UNIT = 4  # 100 Hz mel frames per 25 Hz unit


class Token2Wav(Protocol):
    sample_rate: int

    def __call__(self, units: np.ndarray) -> np.ndarray:
        """units: (U,) ids in [0, num_units) -> (samples,) float32 waveform at `sample_rate`."""


def check_units(units: np.ndarray, num_units: int) -> np.ndarray:
    """(U,) ids -> the same as int32; empty, non-1-D or out-of-range ids raise ValueError."""
    units = np.asarray(units)
    if units.ndim != 1 or units.size == 0:
        raise ValueError(f"expected a non-empty (U,) array of unit ids, got shape {units.shape}")
    if not np.issubdtype(units.dtype, np.integer):
        raise ValueError(f"unit ids must be integers, got {units.dtype}")
    if units.min() < 0 or units.max() >= num_units:
        raise ValueError(f"unit ids must lie in [0, {num_units}), got {units.min()} .. {units.max()}")
    return units.astype(np.int32)


def check_aligned(num_units: int, num_frames: int) -> None:
    """Each 25 Hz unit covers 4 mel frames; the last may cover fewer."""
    if num_units != -(-num_frames // FRAMES_PER_UNIT):
        raise ValueError(f"{num_units} units for {num_frames} mel frames: expected ceil(frames / 4)")


class BlockStream(Protocol):
    def push(self, units: np.ndarray, final: bool = False) -> np.ndarray:
        """Append (n,) units -> the (samples,) audio that became final (possibly empty)."""


class EachBlock:
    """The stream of a token2wav without its own: every pushed block synthesised on its own."""

    def __init__(self, token2wav: Token2Wav):
        self.token2wav = token2wav

    def push(self, units: np.ndarray, final: bool = False) -> np.ndarray:
        return self.token2wav(np.asarray(units)) if len(units) else np.zeros(0, np.float32)


def block_stream(token2wav: Token2Wav, hop: int) -> BlockStream:
    """`token2wav.stream(hop)` where it streams with state (CosyVoice2), else `EachBlock`."""
    return token2wav.stream(hop) if hasattr(token2wav, "stream") else EachBlock(token2wav)
