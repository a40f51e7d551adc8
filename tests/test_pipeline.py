"""Bucketing and packing correctness, padding fraction, exact iterator restore, per-process sharding."""

import json

import grain
import numpy as np
import pytest
import soundfile as sf

from data_pipelines.batching import BucketIterDataset, pack, padding_fraction
from data_pipelines.manifest import read_manifest
from data_pipelines.pipeline import DataConfig, make_dataset
from data_pipelines.tokenizer import SPEECH_PLACEHOLDER, TEMPLATES, encode_dialogue, num_speech_frames, train_bpe
from data_pipelines.validation import BadRecords


def _synthetic(n: int, seed: int = 0) -> list[dict]:
    """Long-tailed (lognormal) lengths; every value of example i is i, so rows can be traced back."""
    rng = np.random.default_rng(seed)
    text = np.clip(rng.lognormal(np.log(200), 0.6, n), 1, 2000).astype(int)
    units = np.clip(rng.lognormal(np.log(100), 0.5, n), 1, 1000).astype(int)
    return [
        {"text": np.full(t, i, np.int32), "mask": np.full(t, i, np.int32), "units": np.full(u, i, np.int32)}
        for i, (t, u) in enumerate(zip(text, units))
    ]


def _segments(batches: list[dict], key: str) -> list[list[np.ndarray]]:
    """Per row, the values of each segment of `key`, checking segment ids and positions on the way."""
    rows = []
    for b in batches:
        for values, seg, pos in zip(b[key], b[f"{key}_segment_ids"], b[f"{key}_positions"]):
            assert set(np.unique(seg)) <= set(range(seg.max() + 1))
            row = []
            for s in range(1, seg.max() + 1):
                (where,) = np.nonzero(seg == s)
                assert np.array_equal(where, np.arange(where[0], where[0] + len(where)))  # contiguous
                assert np.array_equal(pos[where], np.arange(len(where)))  # positions restart per example
                row.append(values[where])
            rows.append(row)
    return rows


def _check_every_example_once(batches: list[dict], examples: list[dict]) -> None:
    text, units = _segments(batches, "text"), _segments(batches, "units")
    seen = []
    for text_row, units_row in zip(text, units, strict=True):
        assert len(text_row) == len(units_row)
        for t, u in zip(text_row, units_row):
            i = int(t[0])
            assert np.array_equal(t, examples[i]["text"]) and np.array_equal(u, examples[i]["units"])
            seen.append(i)
    assert sorted(seen) == list(range(len(examples)))


def test_bucketing_keeps_every_example_once():
    examples = _synthetic(300)
    ds = BucketIterDataset(
        grain.MapDataset.source(examples).to_iter_dataset(), batch_size=8, sort_key="text", window=4, meta=("mask",)
    )
    batches = list(ds)
    _check_every_example_once(batches, examples)
    for b in batches:
        assert b["text"].shape[1] % 8 == 0 and "mask_segment_ids" not in b
        assert np.array_equal(b["mask"], b["text"])


def test_packing_keeps_every_example_once():
    examples = _synthetic(300)
    ds = pack(
        grain.MapDataset.source(examples).to_iter_dataset(),
        batch_size=4,
        lengths={"text": 2048, "mask": 2048, "units": 1024},
        meta=("mask",),
        alignment={"units": 4},
    )
    batches = list(ds)
    _check_every_example_once(batches, examples)
    for b in batches:
        assert b["text"].shape[1:] == (2048,) and b["units"].shape[1:] == (1024,)
        assert np.array_equal(b["mask"], b["text"])
        starts = (b["units_positions"] == 0) & (b["units_segment_ids"] > 0)
        assert np.all(np.nonzero(starts)[1] % 4 == 0)


def test_padding_fraction_long_tailed():
    examples = [{"text": e["text"]} for e in _synthetic(2000)]
    source = grain.MapDataset.source(examples).to_iter_dataset()
    modes = {
        "naive": BucketIterDataset(source, batch_size=8, sort_key="text", window=1, pad_multiple=1),
        "bucket": BucketIterDataset(source, batch_size=8, sort_key="text", window=128, pad_multiple=8),
        "pack": pack(source, batch_size=8, lengths={"text": 2048}),
    }
    fractions = {name: padding_fraction(list(ds), "text") for name, ds in modes.items()}
    print("padding fraction, lognormal lengths:", {k: round(v, 4) for k, v in fractions.items()})
    assert fractions["naive"] > 0.4
    assert fractions["bucket"] <= 0.05 and fractions["pack"] <= 0.05


# --- the whole pipeline on real wav files ---


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """24 dialogues of 0.3-2.5 s noise; record i answers with units [i, i, i]."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    answers = [f"the answer is {i}" for i in range(24)]
    with open(folder / "manifest.jsonl", "w") as f:
        for i, answer in enumerate(answers):
            audio = 0.1 * rng.standard_normal(int(rng.uniform(0.3, 2.5) * 16_000))
            sf.write(folder / f"{i}.wav", audio.astype(np.float32), 16_000)
            entry = {"id": f"u{i}", "user_audio": f"{i}.wav", "assistant_text": answer, "assistant_units": [i] * 3}
            f.write(json.dumps(entry) + "\n")
    bad = BadRecords(strict=True)
    return read_manifest(str(folder / "manifest.jsonl"), bad), train_bpe(answers, vocab_size=300), bad


def _dataset(corpus, batching, **kw):
    records, tok, bad = corpus
    cfg = DataConfig(
        batch_size=4,
        batching=batching,
        unit_vocab=64,
        max_seconds=3.0,
        read_threads=2,
        bucket_window=2,
        pack_mel=600,
        max_text=200,
        pack_text=256,
        max_units=64,
        pack_units=64,
        **kw,
    )
    return make_dataset(records, tok, TEMPLATES["tiny"], cfg, bad)


def _record_ids(batches: list[dict]) -> list[int]:
    return [int(u[0]) for row in _segments(batches, "units") for u in row]


@pytest.mark.parametrize("batching", ["bucket", "pack"])
def test_pipeline_batches(corpus, batching):
    _, tok, _ = corpus
    batches = list(_dataset(corpus, batching))
    assert sorted(_record_ids(batches)) == list(range(24))
    speech_id = SPEECH_PLACEHOLDER
    for b in batches:
        assert b["mel"].shape[:2] == (4, 80) and b["mel"].shape[2] == b["mel_segment_ids"].shape[1]
        time_first = b | {"mel": b["mel"].transpose(0, 2, 1)}
        for mel_row, text_row in zip(_segments([time_first], "mel"), _segments([b], "text"), strict=True):
            for mel, text in zip(mel_row, text_row, strict=True):
                # The n-th mel segment and the n-th text segment are the same dialogue.
                assert np.count_nonzero(text == speech_id) == num_speech_frames(len(mel))
    if batching == "pack":
        starts = (batches[0]["mel_positions"] == 0) & (batches[0]["mel_segment_ids"] > 0)
        assert np.all(np.nonzero(starts)[1] % 10 == 0)  # adaptor groups never straddle examples


def test_loss_mask_covers_answer():
    tok = train_bpe(["the answer is four"], vocab_size=300)
    ids, mask = encode_dialogue(tok, TEMPLATES["tiny"], 3, "the answer is four")
    answer = tok.encode("the answer is four<eos>").ids
    assert ids[mask == 1].tolist() == answer
    assert ids[mask == 0].tolist().count(SPEECH_PLACEHOLDER) == 3


@pytest.mark.parametrize("batching", ["bucket", "pack"])
@pytest.mark.parametrize("stop", [1, 2])  # mid-window / mid-pack and at a boundary
def test_iterator_state_restores_exactly(corpus, batching, stop):
    ds = _dataset(corpus, batching, num_epochs=2)
    it = iter(ds)
    for _ in range(stop):
        next(it)
    state = it.get_state()
    expected = list(it)
    assert expected
    restored = iter(_dataset(corpus, batching, num_epochs=2))
    restored.set_state(state)
    got = list(restored)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_processes_split_the_data(corpus):
    records, tok, bad = corpus
    cfg = DataConfig(batch_size=2, batching="bucket", unit_vocab=64, max_seconds=3.0, read_threads=1)
    shards = [
        _record_ids(list(make_dataset(records, tok, TEMPLATES["tiny"], cfg, bad, process_index=p, process_count=3)))
        for p in range(3)
    ]
    assert all(len(s) == 8 for s in shards)
    assert sorted(i for shard in shards for i in shard) == list(range(24))
