"""The token2wav baseline: per-unit mean log-mel, inverted by Griffin-Lim."""

import numpy as np
import pytest

from data_pipelines.features import SAMPLE_RATE, log_mel
from mdm_jax.token2wav import CentroidGriffinLim

pytest.importorskip("librosa")


def _audio(seed, seconds=0.6):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    f0 = rng.uniform(150, 400)
    return (0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.5 * t)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _units(audio, k, seed):
    frames = len(audio) // 160
    return np.random.default_rng(seed).integers(0, k, -(-frames // 4))


@pytest.fixture(scope="module")
def fitted():
    audio = [_audio(i) for i in range(3)]
    units = [_units(a, 6, i) for i, a in enumerate(audio)]
    return CentroidGriffinLim.fit(units, audio, num_units=8), units, audio


def test_table_is_the_mean_log_mel_of_each_unit_and_subframe(fitted):
    t2w, units, audio = fitted
    for unit in range(6):
        for sub in range(4):
            frames = [log_mel(a).T[4 * i + sub] for u, a in zip(units, audio)
                      for i in np.flatnonzero(u == unit) if 4 * i + sub < len(log_mel(a).T)]
            if frames:
                np.testing.assert_allclose(t2w.table[unit, sub], np.mean(frames, axis=0), atol=1e-5)
    assert np.allclose(t2w.table[7], t2w.table[6])  # unseen units share the overall mean


def test_synthesis_follows_the_requested_units(fitted, tmp_path):
    t2w, units, _ = fitted
    wav = t2w(units[0])
    assert wav.dtype == np.float32 and np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    assert abs(len(wav) - 640 * len(units[0])) <= 160  # 25 Hz units at 16 kHz
    heard = log_mel(wav).T[: 4 * len(units[0])]
    asked = t2w.mel(units[0]).T[: len(heard)]
    other = t2w.mel(units[1][: len(units[0])]).T[: len(heard)]
    assert np.abs(heard - asked).mean() < np.abs(heard - other).mean()
    t2w.save(str(tmp_path / "t2w.npz"))
    np.testing.assert_array_equal(CentroidGriffinLim.load(str(tmp_path / "t2w.npz")).table, t2w.table)


def test_unit_count_must_match_the_audio():
    audio = _audio(0)
    with pytest.raises(ValueError, match="units for 60 mel frames"):
        CentroidGriffinLim.fit([np.zeros(3, int)], [audio], num_units=4)
