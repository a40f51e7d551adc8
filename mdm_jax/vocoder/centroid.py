"""The baseline token2wav: each 25 Hz unit becomes the 4 log-mel frames it averaged in the training
audio, then Griffin-Lim inverts the mel spectrogram. It needs no training beyond the averages, so it
measures what the units themselves carry.

    t2w = CentroidGriffinLim.fit(units, audio, num_units=512)   # (U,) ids + 16 kHz wavs
    wav = t2w(units)                                            # (U,) -> (640·U,) float32
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_pipelines.features import SAMPLE_RATE, log_mel
from mdm_jax.vocoder.base import FRAMES_PER_UNIT, check_aligned, check_units
from mdm_jax.vocoder.griffin_lim import griffin_lim


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
