"""Input pipeline benchmark: utterances/s with 1 and 2 read threads, and padding per batching mode.

    python -m experiments.bench_data [--corpus data/embedded] [--n 64] [--out runs/bench_data.json]

Padding is measured on the embedded corpus (built with --n training dialogues if absent) and on a
synthetic long-tailed (lognormal) length distribution shaped like the pipeline's examples. Modes:
naive (arrival order, each batch padded to its longest example), bucket (sorted windows, lengths
rounded to 8), pack (best-fit packing into fixed rows in the data's mel : text : units ratio).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import grain
import numpy as np

from data_pipelines.batching import BucketIterDataset, pack, padding_fraction
from data_pipelines.manifest import read_manifest
from data_pipelines.pipeline import DataConfig, decode, make_dataset
from data_pipelines.tokenizer import TEMPLATES, train_bpe
from data_pipelines.validation import BadRecords
from experiments.corpus.build import build

KEYS = ("mel", "text", "units")
MODES = {"naive": dict(batching="bucket", bucket_window=1, pad_multiple=1), "bucket": dict(batching="bucket"),
         "pack": dict(batching="pack")}


def _row_lengths(examples: list[dict], mel_row: int = 3000) -> dict[str, int]:
    """Packed row lengths in the data's length ratio, rounded up to 64, each fitting the longest example."""
    total = {k: sum(len(e[k]) for e in examples) for k in KEYS}
    return {k: max(-(-int(mel_row * total[k] / total["mel"] * 1.02) // 64) * 64, max(len(e[k]) for e in examples))
            for k in KEYS}


def _corpus(args) -> tuple[list, object, int]:
    if not os.path.isfile(os.path.join(args.corpus, "train.jsonl")):
        build(args.corpus, n=args.n)
    bad = BadRecords(strict=True)
    records = read_manifest(os.path.join(args.corpus, "train.jsonl"), bad)
    with open(os.path.join(args.corpus, "corpus.json")) as f:
        k = json.load(f)["units"]["k"]
    tokenizer = train_bpe([r.assistant_text for r in records] + [r.user_text or "" for r in records], 512)
    return records, tokenizer, k


def _throughput(records, tokenizer, cfg: DataConfig) -> float:
    bad = BadRecords()
    start = time.perf_counter()
    count = sum(int(b["units_segment_ids"].max(axis=1).sum())
                for b in make_dataset(records, tokenizer, TEMPLATES["tiny"], cfg, bad))
    return count / (time.perf_counter() - start)


def _decode_all(records, tokenizer, cfg: DataConfig) -> list[dict]:
    """Every example once, unbatched (for the length statistics)."""
    bad = BadRecords(strict=True)
    return [decode(r, tokenizer, TEMPLATES["tiny"], cfg, bad) for r in records]


def _synthetic(n: int = 4000, seed: int = 0) -> list[dict]:
    """Long-tailed lengths shaped like the pipeline's: text = one placeholder per 10 mel frames plus
    the answer's tokens; units follow the answer (about 4 per token)."""
    rng = np.random.default_rng(seed)
    mel = np.clip(rng.lognormal(np.log(400), 0.8, n), 20, 2900).astype(int)
    answer = np.clip(rng.lognormal(np.log(20), 0.8, n), 1, 400).astype(int)
    units = np.clip(answer * rng.lognormal(np.log(4), 0.25, n), 1, 2000).astype(int)
    lengths = {"mel": mel, "text": mel // 10 + answer + 4, "units": units}
    return [{k: np.ones(lengths[k][i], np.int32) for k in KEYS} for i in range(n)]


def _synthetic_padding(examples: list[dict], batch_size: int) -> dict[str, dict[str, float]]:
    """Padding per mode; examples longer than a packed row are left out of all modes (the pipeline's
    max_* limits), so the tail does not dictate the row lengths."""
    total = {k: sum(len(e[k]) for e in examples) for k in KEYS}
    rows = {k: -(-int(3000 * total[k] / total["mel"] * 1.02) // 64) * 64 for k in KEYS}
    examples = [e for e in examples if all(len(e[k]) <= rows[k] for k in KEYS)]
    out = {"rows": rows, "examples": len(examples)}
    for mode in MODES:
        ds = grain.MapDataset.source(examples).to_iter_dataset()
        if mode == "pack":
            batches = pack(ds, batch_size=batch_size, lengths=rows)
        else:
            batches = BucketIterDataset(ds, batch_size=batch_size, sort_key="text",
                                        window=1 if mode == "naive" else 32, pad_multiple=1 if mode == "naive" else 8)
        batches = list(batches)
        out[mode] = {k: padding_fraction(batches, k) for k in KEYS}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="data/embedded")
    p.add_argument("--n", type=int, default=64, help="training dialogues if the corpus has to be built")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="runs/bench_data.json")
    args = p.parse_args(argv)

    records, tokenizer, k = _corpus(args)
    base = DataConfig(batch_size=args.batch_size, unit_vocab=k, num_epochs=args.epochs, max_seconds=10.0)
    rows = _row_lengths(_decode_all(records, tokenizer, base))
    base = dataclasses.replace(base, max_text=rows["text"], max_units=rows["units"],
                               **{f"pack_{key}": v for key, v in rows.items()})
    result = {"corpus": args.corpus, "records": len(records), "batch_size": args.batch_size, "pack_rows": rows,
              "utterances_per_s": {}, "padding": {"embedded": {}}}
    for threads in (1, 2):
        cfg = dataclasses.replace(base, read_threads=threads, **MODES["bucket"])
        _throughput(records[:16], tokenizer, dataclasses.replace(cfg, num_epochs=1))  # warm caches and threads
        result["utterances_per_s"][threads] = _throughput(records, tokenizer, cfg)
    for mode, overrides in MODES.items():
        cfg = dataclasses.replace(base, num_epochs=1, **overrides)
        batches = list(make_dataset(records, tokenizer, TEMPLATES["tiny"], cfg, BadRecords()))
        result["padding"]["embedded"][mode] = {key: padding_fraction(batches, key) for key in KEYS}
    result["padding"]["synthetic"] = _synthetic_padding(_synthetic(), args.batch_size)

    print(f"{len(records)} utterances of {args.corpus}, batch {args.batch_size}, pack rows {result['pack_rows']}")
    for threads, rate in result["utterances_per_s"].items():
        print(f"read threads {threads}: {rate:8.1f} utterances/s")
    print(f"\n{'padding fraction':<22}" + "".join(f"{key:>8}" for key in KEYS))
    for data, modes in result["padding"].items():
        for mode, fractions in modes.items():
            if mode not in MODES:
                continue
            print(f"{data + ' ' + mode:<22}" + "".join(f"{fractions[key]:8.3f}" for key in KEYS))
    synthetic = result["padding"]["synthetic"]
    print(f"synthetic: {synthetic['examples']} examples that fit packed rows {synthetic['rows']}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
