"""Every kind of bad record: strict mode names it and the reason; default mode skips, counts and lists it."""

import json

import numpy as np
import pytest
import soundfile as sf
from small_train import small_overrides

from data_pipelines.manifest import read_manifest, read_vocalnet
from data_pipelines.pipeline import DataConfig, make_dataset
from data_pipelines.tokenizer import TEMPLATES, train_bpe
from data_pipelines.validation import BadRecordError, BadRecords
from mdm_jax.train.__main__ import main as train_main

CFG = DataConfig(batch_size=2, batching="bucket", unit_vocab=100, max_seconds=2.0, read_threads=2)


def _tone(seconds: float, rate: int = 16_000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


EXPECTED = {  # id -> outcome
    "good": "ok",
    "stereo": "ok",  # averaged to mono
    "rate8k": "ok",  # resampled
    "missing": "missing_file",
    "corrupt": "corrupt_audio",
    "truncated": "truncated_audio",  # a WAV cut off after its header: libsndfile would read what is there
    "empty_audio": "empty_audio",
    "nan": "non_finite_audio",
    "long": "too_long",
    "empty_text": "empty_text",
    "units": "units_out_of_range",
    "broken": "malformed_record",
}


def _write_corpus(folder, ids=tuple(EXPECTED)) -> str:
    """Writes the audio and a manifest with the records `ids`, in order (see EXPECTED); -> its path."""
    sf.write(folder / "good.wav", _tone(1.0), 16_000)
    sf.write(folder / "stereo.wav", np.stack([_tone(1.0), -_tone(1.0)], axis=1), 16_000)
    sf.write(folder / "rate8k.wav", _tone(1.0, 8_000), 8_000)
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), 16_000)
    sf.write(folder / "long.wav", _tone(3.0), 16_000)
    nan = _tone(1.0)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 16_000, subtype="FLOAT")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    (folder / "truncated.wav").write_bytes((folder / "good.wav").read_bytes()[:20_000])

    def line(id_, wav="good.wav", text="four", units=(1, 2, 3)):
        return json.dumps({"id": id_, "user_audio": wav, "assistant_text": text, "assistant_units": list(units)})

    lines = {
        "good": line("good"),
        "stereo": line("stereo", "stereo.wav"),
        "rate8k": line("rate8k", "rate8k.wav"),
        "missing": line("missing", "nowhere.wav"),
        "corrupt": line("corrupt", "corrupt.wav"),
        "truncated": line("truncated", "truncated.wav"),
        "empty_audio": line("empty_audio", "empty.wav"),
        "nan": line("nan", "nan.wav"),
        "long": line("long", "long.wav"),
        "empty_text": line("empty_text", text="  "),
        "units": line("units", units=(1, 100)),
        "broken": '{"id": "broken", "user_audio": ',
    }
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines[i] for i in ids) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["four five six", "what is two plus two"], vocab_size=300)


def _run(records, tokenizer, bad, cfg=CFG) -> list[dict]:
    return list(make_dataset(records, tokenizer, TEMPLATES["tiny"], cfg, bad))


def test_default_mode_skips_counts_and_lists(tmp_path, tokenizer):
    path = _write_corpus(tmp_path)
    bad = BadRecords()
    batches = _run(read_manifest(path, bad), tokenizer, bad)

    kept_rows = sum(int(b["units_segment_ids"][:, 0].sum()) for b in batches)
    assert kept_rows == 3  # good, stereo (made mono), rate8k (resampled)
    skipped = [r for r in EXPECTED.values() if r != "ok"]
    assert bad.counts() == {r: 1 for r in skipped} | {"stereo_to_mono": 1, "resampled": 1}

    bad.write(tmp_path / "skipped.jsonl")
    listed = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert sorted(e["reason"] for e in listed) == sorted(skipped)
    for e in listed:
        id_ = next(i for i, r in EXPECTED.items() if r == e["reason"])
        assert id_ in e["record"] or e["reason"] == "malformed_record"
    assert any(e["record"] == f"{path}:12" for e in listed)  # the malformed line is named by its line number


@pytest.mark.parametrize(
    "id_",
    ["missing", "corrupt", "truncated", "empty_audio", "nan", "long", "empty_text", "units", "broken"],
)
def test_strict_mode_names_record_and_reason(tmp_path, tokenizer, id_):
    path = _write_corpus(tmp_path, ("good", id_))
    bad = BadRecords(strict=True)
    with pytest.raises(BadRecordError) as info:
        _run(read_manifest(path, bad), tokenizer, bad)
    assert info.value.reason.value == EXPECTED[id_]
    assert EXPECTED[id_] in str(info.value)
    assert (f"{path}:2" if id_ == "broken" else id_) in str(info.value)


@pytest.mark.parametrize(
    "cfg_change, id_, reason",
    [({"allow_stereo": False}, "stereo", "stereo"), ({"resample": False}, "rate8k", "wrong_sample_rate")],
)
def test_fixes_can_be_refused(tmp_path, tokenizer, cfg_change, id_, reason):
    records = read_manifest(_write_corpus(tmp_path, (id_,)), BadRecords())
    with pytest.raises(BadRecordError, match=f"{id_}.*{reason}"):
        _run(records, tokenizer, BadRecords(strict=True), DataConfig(**{**CFG.__dict__, **cfg_change}))


def test_vocalnet_layout(tmp_path):
    sf.write(tmp_path / "q.wav", _tone(1.0), 16_000)
    np.save(tmp_path / "q.npy", np.array([[5, 6, 7]]))
    entries = [
        {
            "id": "q",
            "speech": "q.wav",
            "units": "q.npy",
            "conversations": [{"from": "human", "value": "<speech>\nAnswer."}, {"from": "gpt", "value": "Seven."}],
        },
        {"id": "no_answer", "speech": "q.wav", "units": "q.npy", "conversations": [{"from": "human", "value": "x"}]},
    ]
    (tmp_path / "vocalnet.json").write_text(json.dumps(entries))
    bad = BadRecords()
    (record,) = read_vocalnet(str(tmp_path / "vocalnet.json"), bad)
    assert (record.id, record.assistant_text) == ("q", "Seven.")
    assert record.user_audio == str(tmp_path / "q.wav") and record.assistant_units == str(tmp_path / "q.npy")
    assert bad.counts() == {"malformed_record": 1} and "no_answer" in next(iter(bad.skipped))


@pytest.mark.parametrize("override,names", [
    ("init_from=/nonexistent", "init_from='/nonexistent'"),
    ("data.manifest=/nonexistent/m.jsonl", "data.manifest='/nonexistent/m.jsonl'")])
def test_a_missing_init_from_or_manifest_is_one_line_naming_it(tmp_path, capsys, override, names):
    with pytest.raises(SystemExit) as exit_:
        train_main(["--workdir", str(tmp_path), *small_overrides(), override])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: {names}") and err.count("\n") == 1, err


def _escaping_corpus(tmp_path):
    """data/manifest.jsonl whose records lead outside data/ in every way (-> their ids), and ones that stay."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "wav").mkdir(parents=True)
    outside.mkdir()
    for folder in (data, outside):
        sf.write(folder / "x.wav", _tone(1.0), 16_000)
        np.save(folder / "x.npy", np.array([1, 2, 3]))
    (data / "out.wav").symlink_to(outside / "x.wav")  # a symlink leading out
    (data / "outdir").symlink_to(outside)  # a symlinked folder leading out
    (data / "wav" / "in.wav").symlink_to(data / "x.wav")  # a symlink that stays inside

    def line(id_, wav="x.wav", units=(1, 2, 3), answer=None):
        return json.dumps({"id": id_, "user_audio": wav, "assistant_text": "four", "assistant_units": units,
                           "assistant_audio": answer})

    escaping = {"relative": line("relative", "../outside/x.wav"),
                "absolute": line("absolute", str(outside / "x.wav")),
                "units": line("units", units="../outside/x.npy"),
                "answer": line("answer", answer="../outside/x.wav"),
                "symlink": line("symlink", "out.wav"),
                "symlinked_folder": line("symlinked_folder", "outdir/x.wav")}
    staying = [line("plain"), line("dotdot_inside", "wav/../x.wav", units="x.npy"), line("inner_link", "wav/in.wav")]
    (data / "manifest.jsonl").write_text("\n".join([*escaping.values(), *staying]) + "\n")
    vocalnet = [{"id": "vn", "speech": "../outside/x.wav", "units": "x.npy",
                 "conversations": [{"from": "gpt", "value": "four"}]}]
    (data / "vocalnet.json").write_text(json.dumps(vocalnet))
    return data, outside, set(escaping)


def test_manifest_paths_stay_inside_its_folder_or_the_data_root(tmp_path):
    data, outside, escaping = _escaping_corpus(tmp_path)
    manifest = str(data / "manifest.jsonl")
    bad = BadRecords()
    kept = read_manifest(manifest, bad)
    assert {r.id for r in kept} == {"plain", "dotdot_inside", "inner_link"}
    assert bad.counts() == {"path_outside_root": len(escaping)}
    assert {record.split(" ")[0] for record in bad.skipped} == escaping
    assert all(str(outside) in e.detail for e in bad.skipped.values())  # where it leads, named
    with pytest.raises(BadRecordError, match=r"relative \(.*manifest.jsonl:1\).*path_outside_root.*outside"):
        read_manifest(manifest, BadRecords(strict=True))
    vn_bad = BadRecords()
    assert read_vocalnet(str(data / "vocalnet.json"), vn_bad) == [] and vn_bad.counts() == {"path_outside_root": 1}
    # a named data root above both folders, or the explicit opt-in, keeps every record
    for options in ({"root": str(tmp_path)}, {"allow_outside_root": True}):
        ok = BadRecords(strict=True)
        assert len(read_manifest(manifest, ok, **options)) == len(escaping) + 3 and not ok.counts()
    partial = BadRecords()  # a root elsewhere admits only what is under it
    read_manifest(manifest, partial, root=str(tmp_path / "elsewhere"))
    assert partial.counts() == {"path_outside_root": len(escaping)}


def test_the_trainer_confines_manifest_paths_unless_told(tmp_path, tokenizer):
    from mdm_jax.config.train import get_train_config
    from mdm_jax.train.grain_source import grain_source

    data, _, escaping = _escaping_corpus(tmp_path)
    tokenizer.save(str(data / "tokenizer.json"))
    for override, skipped in [([], len(escaping)), (["data.allow_outside_root=true"], 0),
                              ([f"data.root={tmp_path}"], 0)]:
        bad = BadRecords()
        grain_source(get_train_config("tiny", [*small_overrides(vocab=512), f"data.manifest={data / 'manifest.jsonl'}",
                                               *override]), bad)
        assert bad.counts().get("path_outside_root", 0) == skipped, override
