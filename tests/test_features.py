"""Whisper log-mel parity with transformers' WhisperFeatureExtractor."""

import numpy as np
import pytest

from data_pipelines.features import log_mel, num_frames

transformers = pytest.importorskip("transformers")


def _audio(kind: str, n: int) -> np.ndarray:
    t = np.arange(n) / 16_000
    if kind == "sine":
        return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3_000 * t)).astype(np.float32)
    return np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("kind", ["random", "sine"])
@pytest.mark.parametrize("n", [400, 12_345, 3 * 16_000 + 17])
def test_matches_transformers(n_mels, kind, n):
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    audio = _audio(kind, n)
    ref = extractor(audio, sampling_rate=16_000, padding="longest", return_tensors="np")["input_features"][0]
    ours = log_mel(audio, n_mels)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (n_mels, num_frames(n))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("seconds", [2.5, 31.0])  # padded, and truncated
def test_matches_transformers_30s_window(n_mels, seconds):
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    audio = _audio("random", int(seconds * 16_000))
    ref = extractor(audio, sampling_rate=16_000, return_tensors="np")["input_features"][0]  # pads/truncates to 30 s
    ours = log_mel(audio, n_mels, pad_to_30s=True)
    assert ours.shape == ref.shape == (n_mels, 3000)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
