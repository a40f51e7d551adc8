"""Speech units -> waveform. `Token2Wav` is the interface the samplers' output goes through; a
stronger model (e.g. converted CosyVoice2 flow + HiFT weights) plugs in by implementing it.

`CentroidGriffinLim` is the baseline: each 25 Hz unit becomes the 4 log-mel frames it averaged in
the training audio, then Griffin-Lim inverts the mel spectrogram. It needs no training beyond the
averages, so it measures what the units themselves carry. `mdm_jax.token2mel.FlowToken2Wav` is the
trained alternative (flow matching to the mel); both invert through `griffin_lim`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from data_pipelines.features import HOP, N_FFT, SAMPLE_RATE, log_mel

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


def griffin_lim(mel: np.ndarray, n_iter: int = 32) -> np.ndarray:
    """(n_mels, F) Whisper-normalised log-mel -> (160·F,) float32 waveform at 16 kHz, peak 0.9."""
    import librosa  # local: its first call compiles for ~30 s

    power = 10.0 ** (np.asarray(mel, np.float64) * 4.0 - 4.0)  # undo Whisper's (log10 + 4) / 4
    stft = librosa.feature.inverse.mel_to_stft(power, sr=SAMPLE_RATE, n_fft=N_FFT, power=2.0)
    wav = librosa.griffinlim(stft, n_iter=n_iter, hop_length=HOP, win_length=N_FFT, n_fft=N_FFT, random_state=0)
    return (0.9 * wav / max(np.abs(wav).max(), 1e-8)).astype(np.float32)


@dataclass(frozen=True)
class CentroidGriffinLim:
    table: np.ndarray  # (num_units, FRAMES_PER_UNIT, n_mels) mean Whisper log-mel per unit and sub-frame
    n_iter: int = 32
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def fit(cls, units: Sequence[np.ndarray], audio: Sequence[np.ndarray], num_units: int,
            n_mels: int = 80) -> CentroidGriffinLim:
        """units[i]: (U_i,) ids of audio[i] (16 kHz), U_i = ceil(mel frames / 4). Units never seen
        get the mean of all frames."""
        total = np.zeros((num_units, FRAMES_PER_UNIT, n_mels))
        count = np.zeros((num_units, FRAMES_PER_UNIT, 1))
        for u, a in zip(units, audio, strict=True):
            mel = log_mel(a, n_mels).T  # (F, n_mels)
            check_aligned(len(u), len(mel))
            frame_unit = np.repeat(np.asarray(u), FRAMES_PER_UNIT)[: len(mel)]
            sub = np.arange(len(mel)) % FRAMES_PER_UNIT
            np.add.at(total, (frame_unit, sub), mel)
            np.add.at(count, (frame_unit, sub), 1)
        overall = total.sum((0, 1)) / max(count.sum(), 1)
        return cls(np.where(count > 0, total / np.maximum(count, 1), overall).astype(np.float32))

    def mel(self, units: np.ndarray) -> np.ndarray:
        """(U,) -> (n_mels, 4·U) Whisper-normalised log-mel."""
        return self.table[check_units(units, len(self.table))].reshape(-1, self.table.shape[-1]).T

    def __call__(self, units: np.ndarray) -> np.ndarray:
        return griffin_lim(self.mel(units), self.n_iter)

    def save(self, path: str) -> None:
        np.savez(path, table=self.table, n_iter=self.n_iter)

    @classmethod
    def load(cls, path: str) -> CentroidGriffinLim:
        data = np.load(path)
        return cls(data["table"], int(data["n_iter"]))


def load_token2wav(path: str) -> Token2Wav:
    """A saved token2wav by its file: `FlowToken2Wav` (.msgpack) or `CentroidGriffinLim` (.npz)."""
    if path.endswith(".msgpack"):
        from mdm_jax.token2mel import FlowToken2Wav  # token2mel imports this module

        return FlowToken2Wav.load(path)
    if path.endswith(".npz"):
        return CentroidGriffinLim.load(path)
    raise ValueError(f"{path}: unknown token2wav file (expected a FlowToken2Wav .msgpack or a CentroidGriffinLim .npz)")
