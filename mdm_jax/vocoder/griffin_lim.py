"""Griffin-Lim inversion of a Whisper-normalised log-mel: the waveform stage of the trained
`FlowToken2Wav` and the `CentroidGriffinLim` baseline (the converted CosyVoice2 path uses HiFT)."""

from __future__ import annotations

import librosa
import numpy as np

from data_pipelines.features import HOP, N_FFT, SAMPLE_RATE


def griffin_lim(mel: np.ndarray, n_iter: int = 32) -> np.ndarray:
    """(n_mels, F) Whisper-normalised log-mel -> (160·F,) float32 waveform at 16 kHz, peak 0.9."""
    power = 10.0 ** (np.asarray(mel, np.float64) * 4.0 - 4.0)  # undo Whisper's (log10 + 4) / 4
    stft = librosa.feature.inverse.mel_to_stft(power, sr=SAMPLE_RATE, n_fft=N_FFT, power=2.0)
    wav = librosa.griffinlim(stft, n_iter=n_iter, hop_length=HOP, win_length=N_FFT, n_fft=N_FFT, random_state=0)
    return (0.9 * wav / max(np.abs(wav).max(), 1e-8)).astype(np.float32)
