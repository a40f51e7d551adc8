"""Whisper-compatible log-mel features in numpy (matches `transformers.WhisperFeatureExtractor`)."""

import functools

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
CHUNK_SECONDS = 30
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480_000 samples -> 3000 frames


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    log_region = f >= 1000.0
    mel = 3.0 * f / 200.0
    return np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4), mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)


@functools.cache
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular filters, (N_FFT // 2 + 1, n_mels) float64, 0 .. 8 kHz."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (fft_freqs[:, None] - lower) / (center - lower)
    falling = (upper - fft_freqs[:, None]) / (upper - center)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))  # Slaney norm: each filter has unit area.


def num_frames(num_samples: int) -> int:
    """Mel frames for `num_samples` of audio (Whisper drops the last STFT frame)."""
    return num_samples // HOP


def log_mel(audio: np.ndarray, n_mels: int = 80, pad_to_30s: bool = False) -> np.ndarray:
    """Whisper log-mel spectrogram of mono 16 kHz audio.

    Args:
        audio: (samples,) float waveform in [-1, 1].
        n_mels: 80 (Whisper tiny .. large-v2) or 128 (large-v3).
        pad_to_30s: zero-pad or truncate to 30 s first, as Whisper's encoder was trained on.

    Returns:
        (n_mels, samples // 160) float32; 3000 frames when `pad_to_30s`.
    """
    audio = np.asarray(audio, np.float32)  # Whisper computes on float32 samples.
    if pad_to_30s:
        audio = np.pad(audio[:CHUNK_SAMPLES], (0, max(0, CHUNK_SAMPLES - len(audio))))
    padded = np.pad(audio.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:-1]  # (T, N_FFT)
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (T, N_FFT // 2 + 1)
    log_spec = np.log10(np.maximum(power @ mel_filters(n_mels), 1e-10)).T  # (n_mels, T)
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)  # 80 dB dynamic range
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
