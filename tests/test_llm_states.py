"""The stage II states cache: one entry per record equal to what the trainer computes each step,
a deterministic resumable source of fixed-shape batches, clear errors. (Training on it end to end:
tests/test_demo.py.)"""

import json

import jax
import numpy as np
import pytest
import soundfile as sf
from small_train import small_overrides

from data_pipelines.tokenizer import train_bpe
from data_pipelines.validation import BadRecords
from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import get_train_config
from mdm_jax.model.vocalnet import init_params
from mdm_jax.train import llm_states
from mdm_jax.train.data import model_batch
from mdm_jax.train.grain_source import grain_source
from mdm_jax.train.objectives import speech_inputs

N = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """N spoken questions of noise; answer i has i % 4 + 1 words and units [i] * (i + 3)."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    answers = [" ".join(["yes"] * (i % 4 + 1)) for i in range(N)]
    with open(folder / "train.jsonl", "w") as f:
        for i, answer in enumerate(answers):
            sf.write(folder / f"{i}.wav", (0.1 * rng.standard_normal(int(rng.uniform(0.2, 0.5) * 16_000))), 16_000)
            f.write(json.dumps({"id": f"q{i}", "user_audio": f"{i}.wav", "assistant_text": answer,
                                "assistant_units": [i] * (i + 3)}) + "\n")
    tok = train_bpe(answers, vocab_size=100, path=str(folder / "tokenizer.json"))
    cfg = get_train_config("tiny", small_overrides(batch=4, vocab=300) + [f"data.manifest={folder}/train.jsonl",
                                                               "stage.name=speech", "stage.objective=ar"])
    params = init_params(cfg.model, jax.random.key(0))
    states = llm_states.compute(params, cfg, BadRecords(strict=True))
    path = llm_states.save(str(folder / "states.npz"), states)
    return cfg, params, states, path, [len(tok.encode(a).ids) for a in answers]


def test_one_entry_per_record_equal_to_the_trainers_own_states(setup):
    cfg, params, states, _, answer_tokens = setup
    eos = cfg.model.speech_decoder.eos_id
    units = np.split(states["units"], np.cumsum(states["unit_lengths"])[:-1])
    hidden = np.split(states["hidden"], np.cumsum(states["text_lengths"])[:-1])
    by_record = {int(u[0]): i for i, u in enumerate(units)}
    assert sorted(by_record) == list(range(N))  # every record exactly once
    for r, i in by_record.items():
        np.testing.assert_array_equal(units[i], [r] * (r + 3) + [eos])
        assert len(hidden[i]) == answer_tokens[r] + 1  # the answer and its end token
    # the trainer's per-step computation on a fresh pass over the same data gives the same states
    source, speech_id = grain_source(cfg, BadRecords(strict=True), epochs=1)
    for raw in source:
        batch = model_batch(raw, cfg.model, speech_id)
        out = speech_inputs(params, dict(batch, streaming=np.zeros(len(batch["text"]), bool)), cfg)
        for row in np.flatnonzero(batch["text_valid"].any(1)):
            i = by_record[int(batch["units"][row, 0])]
            t = int(np.asarray(out["text_valid"][row]).sum())
            np.testing.assert_allclose(np.asarray(out["text_hidden"][row, :t]), hidden[i], atol=1e-5)


def test_source_batches_are_fixed_shape_deterministic_and_cover_each_epoch(setup):
    cfg, _, states, path, _ = setup
    cfg = get_train_config("tiny", small_overrides(batch=5) + [f"data.llm_states={path}", "stage.name=speech"])
    source = llm_states.StatesSource(cfg)
    batches = [next(source) for _ in range(4)]  # 20 rows = 2 epochs of 10 records
    shapes = {k: {b[k].shape for b in batches} for k in batches[0]}
    assert all(len(s) == 1 for s in shapes.values()), shapes
    assert batches[0]["units"].shape[1] % cfg.model.speech_decoder.block_size == 0
    for epoch in (batches[:2], batches[2:]):
        firsts = sorted(int(u[0]) for b in epoch for u in b["units"])
        assert firsts == list(range(N))
    pad = cfg.model.speech_decoder.pad_id
    assert all((b["speech_valid"].sum(1) == (b["units"] != pad).sum(1)).all() for b in batches)
    again = llm_states.StatesSource(cfg)
    again.set_state({"index": 2})
    third = next(again)
    for k in third:
        np.testing.assert_array_equal(third[k], batches[2][k])


def test_bucketed_batches_are_short_deterministic_and_cover_each_epoch(setup):
    cfg, _, states, path, _ = setup
    cfg = get_train_config("tiny", small_overrides(batch=2) + [f"data.llm_states={path}", "stage.name=speech",
                                                                 "data.bucket_window=5",
                                                                 "model.speech_decoder.block_size=4"])
    source = llm_states.StatesSource(cfg)
    batches = [next(source) for _ in range(10)]  # 2 epochs of 5 batches of 2 records (lengths 4..13 with EOS)
    for epoch in (batches[:5], batches[5:]):
        firsts = sorted(int(u[0]) for b in epoch for u in b["units"])
        assert firsts == list(range(N))  # one window = the epoch: every record once
        for b in epoch:  # sorted in the window: a batch holds neighbours in length, padded to its own longest
            lengths = b["speech_valid"].sum(1)
            assert b["units"].shape[1] == -(-lengths.max() // 4) * 4 and np.ptp(lengths) <= 2
    assert len({b["units"].shape[1] for b in batches}) > 1
    assert [int(b["units"][0, 0]) for b in batches[:5]] != [int(b["units"][0, 0]) for b in batches[5:]]  # reshuffled
    again = llm_states.StatesSource(cfg)
    again.set_state({"index": 7})
    for k, v in next(again).items():
        np.testing.assert_array_equal(v, batches[7][k])


def test_bad_caches_are_named(setup, tmp_path):
    cfg, _, states, path, _ = setup
    with pytest.raises(ConfigError, match="no such file"):
        llm_states.load(str(tmp_path / "none.npz"), cfg)
    np.savez(tmp_path / "other.npz", hidden=np.zeros((3, 7)))
    with pytest.raises(ConfigError, match="other.npz.*missing"):
        llm_states.load(str(tmp_path / "other.npz"), cfg)
    wide = get_train_config("tiny", small_overrides(width=64) + ["stage.name=speech"])
    with pytest.raises(ConfigError, match="d_model=64"):
        llm_states.load(path, wide)
    with pytest.raises(ConfigError, match="cannot train stage.name=text"):
        get_train_config("tiny", [f"data.llm_states={path}", "stage.name=text"])



def test_packed_batches_fill_rows_whole_blocks_per_answer_and_resume(setup):
    cfg, _, states, path, _ = setup
    cfg = get_train_config("tiny", small_overrides(batch=2) + [
        f"data.llm_states={path}", "stage.name=speech", "data.batching=pack", "data.pack_units=16",
        "data.pack_text=16", "model.speech_decoder.block_size=4"])
    source = llm_states.StatesSource(cfg)
    batches = [next(source) for _ in range(8)]
    assert {b["units"].shape for b in batches} == {(2, 16)} and {b["text_hidden"].shape[1] for b in batches} == {16}
    epoch = []
    for b in batches[:3]:  # 100 speech slots of answers in rows of 16: at least 7 rows, 3 batches, per epoch
        for row in range(2):
            seg, index, units = b["speech_segments"][row], b["speech_index"][row], b["units"][row]
            for s in range(1, seg.max() + 1):
                own = np.flatnonzero(seg == s)
                assert len(own) % 4 == 0 and (index[own] == np.arange(len(own))).all()  # whole blocks, from 0
                valid = b["speech_valid"][row, own]
                assert valid[: valid.sum()].all() and units[own][valid.sum() - 1] == cfg.model.speech_decoder.eos_id
                assert (b["text_segments"][row] == s).sum() >= 1
                epoch.append(int(units[own[0]]))
    assert len(epoch) == len(set(epoch)) >= 7  # no record twice in an epoch, rows hold several
    slots = sum(b["speech_segments"].size for b in batches)
    assert sum(int(b["speech_valid"].sum()) for b in batches) / slots > 0.6  # vs 0.47 one answer per 16-slot row
    again = llm_states.StatesSource(cfg)
    again.set_state({"index": 5})
    for k, v in next(again).items():
        np.testing.assert_array_equal(v, batches[5][k])
    with pytest.raises(ConfigError, match="cannot hold the longest"):
        llm_states.StatesSource(get_train_config("tiny", small_overrides(batch=2) + [
            f"data.llm_states={path}", "stage.name=speech", "data.batching=pack", "data.pack_units=8"]))
    with pytest.raises(ConfigError, match="needs data.cache_encoder=true"):
        get_train_config("tiny", ["stage.name=text", "data.batching=pack"])


@pytest.mark.parametrize("stage", ["stage.objective=mtp", "stage.name=distill"])
def test_the_trainer_trains_on_packed_rows(setup, tmp_path, stage):
    """The loop end to end on the packed source (MDM and MTP steps on packed rows: test_sharded_step; every
    objective's packed loss: test_packing)."""
    from mdm_jax.train.loop import train

    _, _, _, path, _ = setup
    cfg = get_train_config("tiny", small_overrides(batch=2, steps=2) + [
        f"data.llm_states={path}", "stage.name=speech", stage, "model.speech_decoder.mtp_modules=1",
        "data.batching=pack", "data.pack_units=40", "data.pack_text=16", "distill.teacher_steps=2"])
    summary = train(cfg, str(tmp_path), log=lambda *_: None)
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
