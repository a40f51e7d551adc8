"""Token2wav: the baseline (per-unit mean log-mel) and the flow-matching token->mel model, both inverted
by Griffin-Lim."""

import jax
import numpy as np
import pytest

from data_pipelines.features import SAMPLE_RATE, log_mel
from mdm_jax.vocoder.base import Token2Wav
from mdm_jax.vocoder.centroid import CentroidGriffinLim
from mdm_jax.vocoder.flow import FlowToken2Wav, flow_matching_loss, init_params, pad_batch

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


def test_units_are_checked(fitted):
    t2w = fitted[0]
    for bad, reason in [(np.array([], int), "non-empty"), (np.array([1, 8]), r"\[0, 8\)"),
                        (np.array([0.5]), "integers")]:
        with pytest.raises(ValueError, match=reason):
            t2w.mel(bad)


# --- FlowToken2Wav: flow matching to the mel ---

FLOW = dict(d_model=32, num_heads=2, ffn_dim=64, encoder_layers=1, estimator_layers=1, chunk_units=3)


@pytest.fixture(scope="module")
def flow_data():
    audio = [_audio(i, seconds) for i, seconds in enumerate([0.6, 0.9, 0.5, 0.8])]
    units = [_units(a, 6, i) for i, a in enumerate(audio)]
    return units, audio


@pytest.fixture(scope="module")
def flow(flow_data):
    units, audio = flow_data
    return FlowToken2Wav.fit(units, audio, num_units=8, train_steps=150, batch_size=8, crop_units=9, learning_rate=1e-2,
                             progress=False, **FLOW)


def test_training_lowers_the_flow_matching_loss(flow, flow_data):
    units, audio = flow_data
    batch = pad_batch(units, [log_mel(a) for a in audio])
    key = jax.random.key(1)
    loss = jax.jit(flow_matching_loss, static_argnums=1)
    (_, before), (_, after) = (loss(p, flow.config, batch, key) for p in (init_params(flow.config), flow.params))
    assert after["flow"] < 0.6 * before["flow"] and after["prior"] < 0.3 * before["prior"]


def test_flow_synthesis_shapes_and_protocol(flow, flow_data):
    units = flow_data[0][1]
    t2w: Token2Wav = flow
    mel = flow.mel(units)
    assert mel.shape == (80, 4 * len(units)) and mel.dtype == np.float32 and np.isfinite(mel).all()
    wav = t2w(units)
    assert t2w.sample_rate == SAMPLE_RATE and wav.dtype == np.float32 and np.isfinite(wav).all()
    assert abs(len(wav) - 640 * len(units)) <= 160
    # trained mel lies nearer the audio's own log-mel than to another utterance's
    target = log_mel(flow_data[1][1])
    other = log_mel(flow_data[1][0])
    n = min(target.shape[1], other.shape[1])
    assert np.abs(mel[:, :n] - target[:, :n]).mean() < np.abs(mel[:, :n] - other[:, :n]).mean()


def test_first_chunk_ignores_later_units(flow):
    chunk = flow.config.chunk_units
    units = np.arange(2 * chunk + 2) % 8
    changed = units.copy()
    changed[chunk:] = (changed[chunk:] + 3) % 8
    first, other = flow.mel(units), flow.mel(changed)
    np.testing.assert_allclose(first[:, : 4 * chunk], other[:, : 4 * chunk], atol=1e-5)
    np.testing.assert_allclose(flow.mel(units[:chunk]), first[:, : 4 * chunk], atol=1e-5)  # as if streamed
    assert np.abs(first[:, 4 * chunk:] - other[:, 4 * chunk:]).max() > 1e-2  # later chunks do follow their units


def test_flow_save_load_round_trip(flow, flow_data, tmp_path):
    flow.save(str(tmp_path / "flow.msgpack"))
    loaded = FlowToken2Wav.load(str(tmp_path / "flow.msgpack"))
    assert loaded.config == flow.config and loaded.ode_steps == flow.ode_steps
    np.testing.assert_array_equal(loaded.mel(flow_data[0][0]), flow.mel(flow_data[0][0]))


def test_flow_rejects_bad_input(flow, flow_data):
    with pytest.raises(ValueError, match="non-empty"):
        flow(np.array([], int))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        flow.mel(np.array([0, 9]))
    with pytest.raises(ValueError, match="units for 60 mel frames"):
        FlowToken2Wav.fit([np.zeros(3, int)], [flow_data[1][0]], num_units=8, train_steps=1, progress=False)
