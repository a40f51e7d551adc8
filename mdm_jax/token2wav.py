"""Speech units -> waveform. `Token2Wav` is the interface the samplers' output goes through; a
stronger model (e.g. converted CosyVoice2 flow + HiFT weights) plugs in by implementing it.

`CentroidGriffinLim` is the baseline: each 25 Hz unit becomes the 4 log-mel frames it averaged in
the training audio, then Griffin-Lim inverts the mel spectrogram. It needs no training beyond the
averages, so it measures what the units themselves carry.
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
            if len(u) != -(-len(mel) // FRAMES_PER_UNIT):
                raise ValueError(f"{len(u)} units for {len(mel)} mel frames: expected ceil(frames / 4)")
            frame_unit = np.repeat(np.asarray(u), FRAMES_PER_UNIT)[: len(mel)]
            sub = np.arange(len(mel)) % FRAMES_PER_UNIT
            np.add.at(total, (frame_unit, sub), mel)
            np.add.at(count, (frame_unit, sub), 1)
        overall = total.sum((0, 1)) / max(count.sum(), 1)
        return cls(np.where(count > 0, total / np.maximum(count, 1), overall).astype(np.float32))

    def mel(self, units: np.ndarray) -> np.ndarray:
        """(U,) -> (n_mels, 4·U) Whisper-normalised log-mel."""
        return self.table[np.asarray(units)].reshape(-1, self.table.shape[-1]).T

    def __call__(self, units: np.ndarray) -> np.ndarray:
        import librosa  # local: its first call compiles for ~30 s

        power = 10.0 ** (self.mel(units).astype(np.float64) * 4.0 - 4.0)  # undo Whisper's (log10 + 4) / 4
        stft = librosa.feature.inverse.mel_to_stft(power, sr=SAMPLE_RATE, n_fft=N_FFT, power=2.0)
        wav = librosa.griffinlim(stft, n_iter=self.n_iter, hop_length=HOP, win_length=N_FFT, n_fft=N_FFT,
                                 random_state=0)
        return (0.9 * wav / max(np.abs(wav).max(), 1e-8)).astype(np.float32)

    def save(self, path: str) -> None:
        np.savez(path, table=self.table, n_iter=self.n_iter)

    @classmethod
    def load(cls, path: str) -> CentroidGriffinLim:
        data = np.load(path)
        return cls(data["table"], int(data["n_iter"]))
