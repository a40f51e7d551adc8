"""Tokenize the spoken answers of a manifest with CosyVoice2's S3 tokenizer: each record's 25 Hz speech
tokens (6561 codes) written as a (U,) int32 .npy where the manifest expects its units.

    python -m mdm_jax.tokenize_speech --manifest data/train.jsonl --tokenizer s3_v2_jax --out runs/tok

The answer's audio is the record's `assistant_audio` (our manifest; in VocalNet's JSON the same field
beside `units`), its units path `assistant_units`. Records are sorted by length and batched in whole- /
even-second buckets (one compiled program per bucket); with several devices each batch is split over the
'data' axis under `jax.shard_map`. Resumable: a record whose .npy exists and holds valid ids of the
right count is skipped (one that fails the check is redone); each .npy is written whole or not at all.
Bad audio (missing, corrupt, truncated, empty, longer than 30 s, ...) is skipped and counted as the data
pipeline does; --out receives `tokenize.json` (the counts) and `bad_records.jsonl`. `--manifest-out FILE`
also writes the records whose units are now on disk as our JSONL manifest (what `data.manifest` of the
trainer reads), e.g. from VocalNet's JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
import soundfile as sf
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from data_pipelines.audio import load_audio
from data_pipelines.features import SAMPLE_RATE
from data_pipelines.manifest import Record, load_units, read_manifest, read_vocalnet
from data_pipelines.validation import BadRecordError, BadRecords, Reason
from mdm_jax.config.train import MeshConfig
from mdm_jax.model.s3_tokenizer import MAX_SECONDS, S3Tokenizer, num_tokens, pad_batch, tokenize
from mdm_jax.model.sharding import BATCH, data_parallel, make_mesh

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Counts:
    records: int = 0
    written: int = 0
    already_done: int = 0
    redone: int = 0  # a .npy was there but failed the check
    inline_units: int = 0  # units written into the manifest itself: nothing to tokenize
    bad: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


def _expected_samples(path: str) -> tuple[int, bool] | None:
    """(16 kHz samples `load_audio` will return, whether exactly: no resampling), from the header; None if
    unreadable."""
    try:
        info = sf.info(path)
    except (RuntimeError, OSError):
        return None
    if info.samplerate == SAMPLE_RATE:
        return info.frames, True
    return round(info.frames * SAMPLE_RATE / info.samplerate), False


def is_done(record: Record, vocab_size: int) -> bool | None:
    """True: its .npy holds valid ids, as many as its audio gives; False: a .npy that fails that; None: none yet."""
    if not os.path.isfile(record.assistant_units):
        return None
    header = _expected_samples(record.assistant_audio)
    try:
        units = load_units(record, vocab_size)
    except BadRecordError:
        return False
    if header is None:
        return False
    samples, exact = header
    return abs(len(units) - num_tokens(samples)) <= (0 if exact else 1)  # resampling may round the length


def save_units(path: str, units: np.ndarray) -> None:
    """Whole or not at all: written beside, then renamed into place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, units.astype(np.int32))
    os.replace(tmp, path)


class Runner:
    """The tokenizer on all local devices: batches of `batch` rows (a multiple of the device count)."""

    def __init__(self, tok: S3Tokenizer, batch: int):
        self.tok, devices = tok, jax.devices()
        if len(devices) == 1:
            self.batch, self.mesh = batch, None
            self.fn = lambda audio, samples: tokenize(tok.params, tok.config, audio, samples, tok.dtype)
            return
        self.mesh = make_mesh(MeshConfig())  # every device on 'data'
        ways = data_parallel(self.mesh)
        self.batch = -(-batch // ways) * ways
        rows = NamedSharding(self.mesh, PartitionSpec(BATCH))
        params = jax.device_put(tok.params, NamedSharding(self.mesh, PartitionSpec()))
        sharded = jax.jit(jax.shard_map(
            lambda p, a, s: tokenize(p, tok.config, a, s, tok.dtype), mesh=self.mesh,
            in_specs=(PartitionSpec(), PartitionSpec(BATCH), PartitionSpec(BATCH)),
            out_specs=(PartitionSpec(BATCH), PartitionSpec(BATCH))))
        self.fn = lambda audio, samples: sharded(params, jax.device_put(audio, rows), jax.device_put(samples, rows))

    def __call__(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        audio, samples = pad_batch(waves, self.batch)
        ids, tokens = jax.device_get(self.fn(audio, samples))
        return [row[:n] for row, n in zip(ids[: len(waves)], tokens)]


def _load(record: Record, bad: BadRecords) -> np.ndarray | None:
    try:
        audio, notes = load_audio(record.assistant_audio, record.id, max_seconds=MAX_SECONDS)
    except BadRecordError as e:
        bad.skip(e)
        return None
    bad.note(record.id, notes)
    return audio


def tokenize_records(records: Sequence[Record], tok: S3Tokenizer, bad: BadRecords, batch: int = 16,
                     progress: bool = True) -> Counts:
    """Write the units of every record not already done; bad audio goes to `bad`."""
    start, counts = time.perf_counter(), Counts(records=len(records))
    todo = []
    for r in records:
        if not isinstance(r.assistant_units, str):
            counts.inline_units += 1
        elif r.assistant_audio is None:
            bad.skip(BadRecordError(r.id, Reason.MALFORMED, "no assistant_audio to tokenize"))
        else:
            done = is_done(r, tok.config.codebook_size)
            counts.already_done += done is True
            counts.redone += done is False
            if not done:
                todo.append(r)
    todo.sort(key=lambda r: (_expected_samples(r.assistant_audio) or (0,))[0])  # similar lengths share a batch
    runner = Runner(tok, batch)
    bar = tqdm(total=len(todo), unit="rec", desc="tokenize", disable=not progress)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for i in range(0, len(todo), runner.batch):
            group = todo[i: i + runner.batch]
            loaded = [(r, a) for r, a in zip(group, pool.map(lambda r: _load(r, bad), group)) if a is not None]
            if loaded:
                for (r, _), units in zip(loaded, runner([a for _, a in loaded])):
                    save_units(r.assistant_units, units)
                counts.written += len(loaded)
                counts.audio_seconds += sum(len(a) for _, a in loaded) / SAMPLE_RATE
            bar.update(len(group))
            bar.set_postfix(audio_h=f"{counts.audio_seconds / 3600:.2f}", bad=len(bad.skipped))
    bar.close()
    counts.bad = len(bad.skipped)
    counts.wall_seconds = time.perf_counter() - start
    return counts


def write_manifest(path: str, records: Sequence[Record], bad: BadRecords) -> int:
    """Our JSONL manifest of the records not skipped, paths relative to `path`'s folder -> lines written."""
    folder = os.path.dirname(os.path.abspath(path))
    rel = lambda p: os.path.relpath(os.path.abspath(p), folder)
    kept = [r for r in records if r.id not in bad.skipped and isinstance(r.assistant_units, str)]
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        for r in kept:
            entry = {"id": r.id, "user_audio": rel(r.user_audio), "user_text": r.user_text,
                     "assistant_text": r.assistant_text, "assistant_units": rel(r.assistant_units),
                     "assistant_audio": rel(r.assistant_audio), "speaker": r.speaker, "duration": r.duration}
            f.write(json.dumps(entry) + "\n")
    return len(kept)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdm_jax.tokenize_speech", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="our JSONL manifest, or VocalNet's JSON list (.json)")
    parser.add_argument("--tokenizer", required=True, help="a converted S3 tokenizer (convert s3tokenizer)")
    parser.add_argument("--out", required=True, help="folder for tokenize.json and bad_records.jsonl")
    parser.add_argument("--root", help="data root the manifest's paths may also lead into")
    parser.add_argument("--manifest-out", help="also write the tokenized records as our JSONL manifest (for training)")
    parser.add_argument("--batch", type=int, default=16, help="rows per batch (rounded up to the device count)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bad = BadRecords(strict=args.strict)
    try:
        tok = S3Tokenizer.load(args.tokenizer, args.dtype)
        read = read_vocalnet if args.manifest.endswith(".json") else read_manifest
        records = read(args.manifest, bad, root=args.root)
        counts = tokenize_records(records, tok, bad, args.batch, progress=not args.no_progress)
    except (BadRecordError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.manifest_out:
        counts_out = write_manifest(args.manifest_out, records, bad)
        log.info("wrote %s (%d records)", args.manifest_out, counts_out)
    os.makedirs(args.out, exist_ok=True)
    bad.write(os.path.join(args.out, "bad_records.jsonl"))
    report = {**dataclasses.asdict(counts), "bad_reasons": bad.counts(), "devices": jax.device_count(),
              "audio_hours_per_hour": counts.audio_seconds / max(counts.wall_seconds, 1e-9)}
    with open(os.path.join(args.out, "tokenize.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
