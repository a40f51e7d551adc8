"""`python -m mdm_jax.tokenize_speech`: every good record's .npy holds the ids the tokenizer gives its
audio alone (ragged batches, a resampled file), bad audio is skipped and counted by reason, a rerun skips
what is done and redoes a damaged .npy, VocalNet's JSON works the same, and on 2 fake CPU devices
(shard_map over 'data') the files are identical."""

import json
import shutil
from importlib import resources

import jax
import numpy as np
import pytest
import soundfile as sf
import soxr
from processes import run_together
from s3tokenizer_reference import reference

from data_pipelines.manifest import load_units, read_manifest
from data_pipelines.validation import BadRecords
from mdm_jax import tokenize_speech
from mdm_jax.model import s3_tokenizer as s3

CFG = s3.S3TokenizerConfig(d_model=128, num_heads=2, num_layers=2)
GOOD = ("a", "b", "c", "d", "e", "f")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = s3.S3Tokenizer(jax.device_get(s3.random_params(CFG, jax.random.key(0))), CFG)
    return tok, tok.save(tmp_path_factory.mktemp("tok") / "s3")


@pytest.fixture(scope="module")
def waves():
    reference()  # the speech clips ship with the reference package
    clip = sf.read(str(resources.files("s3tokenizer") / "assets" / "BAC009S0764W0121.wav"), dtype="float32")[0]
    return {"a": clip, "b": clip[:20_000], "c": clip[30_000:37_000], "d": clip[:50_000], "e": clip[10_000:12_345]}


def make_dataset(folder, waves) -> str:
    """Six good answers (one at 24 kHz), one missing, one corrupt, one too long; our JSONL manifest."""
    (folder / "wav").mkdir(parents=True)
    for name, w in waves.items():
        sf.write(folder / "wav" / f"{name}.wav", w, 16_000)
    sf.write(folder / "wav" / "f.wav", soxr.resample(waves["b"], 16_000, 24_000), 24_000)
    (folder / "wav" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(folder / "wav" / "long.wav", np.zeros(31 * 16_000, np.float32), 16_000)
    lines = [{"id": n, "user_audio": f"wav/{n}.wav", "assistant_text": "x", "assistant_units": f"units/{n}.npy",
              "assistant_audio": f"wav/{n}.wav"} for n in (*GOOD, "missing", "corrupt", "long")]
    lines.append({"id": "inline", "user_audio": "wav/a.wav", "assistant_text": "x", "assistant_units": [1, 2]})
    (folder / "m.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return str(folder / "m.jsonl")


def run(manifest, tok_dir, out, *extra) -> dict:
    assert tokenize_speech.main(["--manifest", manifest, "--tokenizer", str(tok_dir), "--out", str(out),
                                 "--batch", "3", "--no-progress", *extra]) == 0
    return json.loads((out / "tokenize.json").read_text())


def alone(tok, folder, name):
    audio = sf.read(folder / "wav" / f"{name}.wav", dtype="float32")[0]
    audio = audio if name != "f" else soxr.resample(audio, 24_000, 16_000).astype(np.float32)
    return tok([audio])[0]


def test_tokenize_resume_and_bad_audio(tokenizer, waves, tmp_path):
    tok, tok_dir = tokenizer
    manifest = make_dataset(tmp_path / "data", waves)
    report = run(manifest, tok_dir, tmp_path / "out")
    assert report["written"] == len(GOOD) and report["inline_units"] == 1 and report["bad"] == 3
    assert report["bad_reasons"] == {"missing_file": 1, "corrupt_audio": 1, "too_long": 1, "resampled": 1}
    bad = [json.loads(line)["record"] for line in (tmp_path / "out" / "bad_records.jsonl").read_text().splitlines()]
    assert sorted(bad) == ["corrupt", "long", "missing"]
    for name in GOOD:  # batches of 3 ragged rows, padded to their bucket: each row as alone
        np.testing.assert_array_equal(np.load(tmp_path / "data" / "units" / f"{name}.npy"),
                                      alone(tok, tmp_path / "data", name))
    assert not list((tmp_path / "data" / "units").glob("*.tmp*"))

    units = tmp_path / "data" / "units"
    before = {n: (units / f"{n}.npy").stat().st_mtime_ns for n in GOOD}
    np.save(units / "c.npy", np.load(units / "c.npy")[:-1])  # one token short: not done
    np.save(units / "d.npy", np.full(s3.num_tokens(50_000), 7000))  # ids outside the codebook
    again = run(manifest, tok_dir, tmp_path / "out2")
    assert (again["already_done"], again["redone"], again["written"]) == (len(GOOD) - 2, 2, 2)
    for name in GOOD:
        np.testing.assert_array_equal(np.load(units / f"{name}.npy"), alone(tok, tmp_path / "data", name))
        assert (units / f"{name}.npy").stat().st_mtime_ns == before[name] or name in "cd"


def test_vocalnet_json_and_strict(tokenizer, waves, tmp_path):
    tok, tok_dir = tokenizer
    (tmp_path / "wav").mkdir()
    sf.write(tmp_path / "wav" / "q.wav", waves["c"], 16_000)
    sf.write(tmp_path / "wav" / "a.wav", waves["b"], 16_000)
    entry = {"id": "v1", "speech": "wav/q.wav", "units": "units/v1.npy", "assistant_audio": "wav/a.wav",
             "conversations": [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "hi"}]}
    (tmp_path / "v.json").write_text(json.dumps([entry, {**entry, "id": "v2", "assistant_audio": "wav/none.wav"}]))
    report = run(str(tmp_path / "v.json"), tok_dir, tmp_path / "out", "--manifest-out", str(tmp_path / "t.jsonl"))
    assert report["written"] == 1 and report["bad_reasons"] == {"missing_file": 1}
    np.testing.assert_array_equal(np.load(tmp_path / "units" / "v1.npy"), tok([waves["b"]])[0])
    (record,) = read_manifest(str(tmp_path / "t.jsonl"), BadRecords(strict=True))  # what the trainer reads
    assert (record.id, record.assistant_text, record.user_audio) == ("v1", "hi", str(tmp_path / "wav" / "q.wav"))
    np.testing.assert_array_equal(load_units(record, CFG.codebook_size), tok([waves["b"]])[0])
    (tmp_path / "units" / "v1.npy").unlink()
    assert tokenize_speech.main(["--manifest", str(tmp_path / "v.json"), "--tokenizer", str(tok_dir), "--out",
                                 str(tmp_path / "o"), "--strict", "--no-progress"]) == 2  # names v2's missing file
    assert tokenize_speech.main(["--manifest", str(tmp_path / "v.json"), "--tokenizer", str(tmp_path), "--out",
                                 str(tmp_path / "o"), "--no-progress"]) == 2  # not a tokenizer folder


SHARDED = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
from mdm_jax import tokenize_speech
from data_pipelines.manifest import load_units, read_manifest
from data_pipelines.validation import BadRecords
assert jax.device_count() == 2
sys.exit(tokenize_speech.main(["--manifest", sys.argv[1], "--tokenizer", sys.argv[2], "--out", sys.argv[3],
                               "--batch", "3", "--no-progress"]))
"""


def test_sharded_over_two_devices_writes_the_same(tokenizer, waves, tmp_path):
    tok, tok_dir = tokenizer
    manifest = make_dataset(tmp_path / "data", waves)
    run_together([[SHARDED, manifest, str(tok_dir), str(tmp_path / "out")]], timeout=300)
    report = json.loads((tmp_path / "out" / "tokenize.json").read_text())
    assert report["devices"] == 2 and report["written"] == len(GOOD) and report["bad"] == 3
    for name in GOOD:
        np.testing.assert_array_equal(np.load(tmp_path / "data" / "units" / f"{name}.npy"),
                                      alone(tok, tmp_path / "data", name))
    shutil.rmtree(tmp_path / "data")
