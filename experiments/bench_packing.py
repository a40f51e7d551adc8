"""Packed vs bucketed training rows: padding and useful tokens/s of stage I and stage II, same run.

    python -m experiments.bench_packing --out runs/bench/packing.json [--examples 96] [--corpus data/embedded]

Two length distributions: synthetic long-tailed (lognormal, like real dialogue data: a 2 s question
beside a 30 s one) and, when `--corpus` holds the embedded corpus, its own lengths. Random weights and
random values at those lengths (speed does not depend on them).

Stage II (the speech decoder on cached LLM states, MDM objective): batches from the trainer's own
`StatesSource` over a states cache of those lengths, `data.bucket_window=8` (bucket) vs
`data.batching=pack`. Stage I (the LLM over cached encoder frames, answer CE): batches built from the
lengths, bucket = windows of 32 batches sorted by length, each padded to its longest (rounded up to
8), pack = the same best-fit packer (`llm_states.pack_rows`) into rows of a fixed length. Padding =
padded slots / all slots of the sequences the step computes over (stage II: text states + speech;
stage I: text); "row padding" leaves out each answer's own block tail, which the anchor Talker's
blocks need in both modes (a block never holds two answers). Useful tokens/s = real tokens of an
epoch / the epoch's step time: every shape compiled first, then `--repeats` epochs per mode taking
turns, the median.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np
import soundfile as sf

from data_pipelines.manifest import load_units, read_manifest
from data_pipelines.tokenizer import SPEECH_PLACEHOLDER, load_tokenizer, num_speech_frames
from data_pipelines.validation import BadRecords
from experiments.json_out import write_json
from mdm_jax.config.train import get_train_config
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train import llm_states
from mdm_jax.train.optimizer import make_optimizer
from mdm_jax.train.step import init_state, make_train_step

SMALL = ["model.llm.num_layers=2", "model.speech_decoder.num_layers=2", "train_steps=1000"]


def synthetic_lengths(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Long-tailed: speech placeholders (10 Hz), answer tokens, units (about 4 per token)."""
    rng = np.random.default_rng(seed)
    speech = np.clip(rng.lognormal(np.log(20), 0.8, n), 2, 150).astype(int)
    answer = np.clip(rng.lognormal(np.log(12), 0.8, n), 1, 80).astype(int)
    units = np.clip(answer * rng.lognormal(np.log(4), 0.25, n), 2, 320).astype(int)
    return {"speech": speech, "answer": answer, "units": units}


def corpus_lengths(corpus: str) -> dict[str, np.ndarray] | None:
    """The embedded corpus's training dialogues: placeholders from the audio's length, answer tokens by its
    tokenizer, units from its files."""
    if not os.path.isfile(os.path.join(corpus, "train.jsonl")):
        return None
    tokenizer = load_tokenizer(os.path.join(corpus, "tokenizer.json"))
    records = read_manifest(os.path.join(corpus, "train.jsonl"), BadRecords(strict=True))
    with open(os.path.join(corpus, "corpus.json")) as f:
        k = json.load(f)["units"]["k"]
    return {"speech": np.array([num_speech_frames(int(sf.info(r.user_audio).duration * 100)) for r in records]),
            "answer": np.array([len(tokenizer.encode(r.assistant_text).ids) for r in records]),
            "units": np.array([len(load_units(r, k)) for r in records])}


def _compare(runs: dict, repeats: int) -> dict[str, float]:
    """runs: mode -> (step, state, batches, useful tokens) -> mode -> median useful tokens/s over `repeats`
    epochs, the modes taking turns (so a slow spell of the machine hits both), every shape compiled first."""
    states, times = {}, {mode: [] for mode in runs}
    for mode, (step, state, batches, _) in runs.items():
        seen = set()
        for b in batches:
            shape = tuple(v.shape for v in b.values())
            if shape not in seen:
                seen.add(shape)
                state, m = step(state, b)
                jax.block_until_ready(m["loss"])
        states[mode] = state
    for _ in range(repeats):
        for mode, (step, _, batches, _) in runs.items():
            start = time.perf_counter()
            for b in batches:
                states[mode], m = step(states[mode], b)
                jax.block_until_ready(m["loss"])
            times[mode].append(time.perf_counter() - start)
    return {mode: runs[mode][3] / float(np.median(times[mode])) for mode in runs}


def _padding(batches, keys) -> float:
    real = sum(int(b[k].sum()) for b in batches for k in keys)
    return 1.0 - real / sum(b[k].size for b in batches for k in keys)


def _row_padding(batches, block: int) -> float:
    """Stage II slots no answer occupies: beyond each answer's whole blocks (speech) and beyond the text."""
    slots = sum(b["speech_valid"].size + b["text_valid"].size for b in batches)
    owned = 0
    for b in batches:
        owned += int(b["text_valid"].sum())
        if "speech_segments" in b:
            owned += int((b["speech_segments"] > 0).sum())
        else:
            owned += int((-(-b["speech_valid"].sum(1) // block) * block).sum())
    return 1.0 - owned / slots


def stage_two(lengths: dict, batch: int, pack_units: int, folder: str, repeats: int) -> dict:
    """MDM Talker steps on StatesSource batches of these lengths: bucket vs pack."""
    n = len(lengths["answer"])
    base = get_train_config("tiny", SMALL).model
    rng = np.random.default_rng(0)
    text = lengths["answer"] + 1
    units = lengths["units"] + 1
    states = {"hidden": rng.standard_normal((int(text.sum()), base.llm.d_model)).astype(np.float32),
              "text_lengths": text.astype(np.int32), "unit_lengths": units.astype(np.int32),
              "units": rng.integers(0, base.speech_decoder.num_units, int(units.sum())).astype(np.int32)}
    path = llm_states.save(os.path.join(folder, "states.npz"), states)
    out, runs = {}, {}
    block = base.speech_decoder.block_size
    blocks = -(-units // block) * block
    pack_text = max(int(text.max()), int(np.ceil(pack_units * text.sum() / blocks.sum() * 1.05)))
    packing = ["data.batching=pack", f"data.pack_units={pack_units}", f"data.pack_text={pack_text}"]
    for mode, extra in (("bucket", ["data.bucket_window=8"]), ("pack", packing)):
        rows = batch if mode == "bucket" else max(1, batch // 2)
        cfg = get_train_config("tiny", SMALL + [f"data.llm_states={path}", "stage.name=speech",
                                                f"data.batch_size={rows}", *extra])
        source = llm_states.StatesSource(cfg)
        batches, seen = [], 0
        while seen < n * 0.9:  # about an epoch (the incomplete last batch is dropped)
            b = next(source)
            batches.append(b)
            seen += int(b["speech_valid"].any(1).sum()) if mode == "bucket" else int(
                sum(len(set(s[s > 0].tolist())) for s in b["speech_segments"]))
        useful = sum(int(b["speech_valid"].sum() + b["text_valid"].sum()) for b in batches)
        optimizer = make_optimizer(cfg)
        state = init_state(cfg, optimizer, jax.random.key(0), random_params(cfg.model))
        runs[mode] = (make_train_step(cfg, optimizer), state, batches, useful)
        out[mode] = {"padding": _padding(batches, ("speech_valid", "text_valid")),
                     "row_padding": _row_padding(batches, block), "batches": len(batches), "rows": rows,
                     "speech_slots": int(batches[0]["units"].shape[1])}
    return _finish(out, _compare(runs, repeats))


def _finish(out: dict, tokens_per_s: dict) -> dict:
    for mode, value in tokens_per_s.items():
        out[mode]["useful_tokens_per_s"] = value
    out["speedup"] = out["pack"]["useful_tokens_per_s"] / out["bucket"]["useful_tokens_per_s"]
    return out


def _stage_one_batch(rows: list[list[int]], text: np.ndarray, speech: np.ndarray, width: int, k: int, d_enc: int,
                     packed: bool) -> dict:
    b = {"text": np.zeros((len(rows), width), np.int32), "text_valid": np.zeros((len(rows), width), bool),
         "text_loss_mask": np.zeros((len(rows), width), bool),
         "encoded": np.zeros((len(rows), width * k, d_enc), np.float32)}
    if packed:
        b |= {"text_segments": np.zeros((len(rows), width), np.int32),
              "text_index": np.zeros((len(rows), width), np.int32)}
    for r, ids in enumerate(rows):
        t0 = 0
        for segment, i in enumerate(ids, 1):
            n = int(text[i])
            b["text"][r, t0 : t0 + n] = np.r_[1, 3, [SPEECH_PLACEHOLDER] * speech[i], 4, [7] * (n - speech[i] - 3)]
            b["text_valid"][r, t0 : t0 + n] = True
            b["text_loss_mask"][r, t0 + speech[i] + 3 : t0 + n] = True
            if packed:
                b["text_segments"][r, t0 : t0 + n], b["text_index"][r, t0 : t0 + n] = segment, np.arange(n)
            t0 += n
    return b


def stage_one(lengths: dict, batch: int, pack_text: int, repeats: int) -> dict:
    """LLM answer-CE steps over cached encoder frames at these lengths: bucket vs pack."""
    cfg = get_train_config("tiny", SMALL + ["stage.name=text", "stage.train_llm=true"])
    k, d_enc = cfg.model.adaptor.downsample, cfg.model.encoder.d_model
    speech, text = lengths["speech"], lengths["speech"] + lengths["answer"] + 4
    n = len(text)
    order = np.random.default_rng(0).permutation(n)
    window = [sorted(order[s : s + 32 * batch], key=lambda i: text[i]) for s in range(0, n, 32 * batch)]
    bucket = [[[int(i)] for i in w[j : j + batch]] for w in window for j in range(0, len(w), batch)]
    bucket = [b for b in bucket if len(b) == batch]
    packed_rows = llm_states.pack_rows(order, text, np.zeros(n, int), text_len=pack_text, unit_len=1, bins=4 * batch)
    rows = max(1, batch // 2)
    packed = [packed_rows[j : j + rows] for j in range(0, len(packed_rows) - rows + 1, rows)]
    batches = {
        "bucket": [_stage_one_batch(b, text, speech, -(-max(int(text[r[0]]) for r in b) // 8) * 8, k, d_enc, False)
                   for b in bucket],
        "pack": [_stage_one_batch(b, text, speech, pack_text, k, d_enc, True) for b in packed]}
    out, runs = {}, {}
    for mode, bs in batches.items():
        c = get_train_config("tiny", SMALL + ["stage.name=text", "stage.train_llm=true",
                                              f"data.batch_size={len(bs[0]['text'])}"])
        optimizer = make_optimizer(c)
        state = init_state(c, optimizer, jax.random.key(0), random_params(c.model))
        runs[mode] = (make_train_step(c, optimizer), state, bs, sum(int(b["text_valid"].sum()) for b in bs))
        padding = _padding(bs, ("text_valid",))
        out[mode] = {"padding": padding, "row_padding": padding, "batches": len(bs), "rows": len(bs[0]["text"])}
    return _finish(out, _compare(runs, repeats))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench/packing.json")
    p.add_argument("--examples", type=int, default=96, help="synthetic long-tailed dialogues")
    p.add_argument("--batch", type=int, default=8, help="rows of a bucketed batch (a packed batch has half)")
    p.add_argument("--corpus", default="data/embedded", help="also the embedded corpus's lengths, if present")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per mode, taking turns; the median")
    p.add_argument("--row-examples", type=int, default=2,
                   help="packed rows hold this many examples of mean length (or the longest, if longer)")
    args = p.parse_args(argv)
    dists = {"long-tailed": synthetic_lengths(args.examples)}
    if (embedded := corpus_lengths(args.corpus)) is not None:
        dists["embedded"] = {k: v[: args.examples] for k, v in embedded.items()}
    results, table = {"device": jax.devices()[0].device_kind, "examples": args.examples,
                      "row_examples": args.row_examples}, []
    with tempfile.TemporaryDirectory() as folder:
        for name, lengths in dists.items():
            text, units = lengths["speech"] + lengths["answer"] + 4, lengths["units"] + 1
            rows = lambda longest, mean: max(longest, args.row_examples * mean)
            results[name] = {
                "stage I": stage_one(lengths, args.batch, -(-rows(int(text.max()), int(text.mean())) // 8) * 8,
                                     args.repeats),
                "stage II": stage_two(lengths, args.batch, -(-rows(int(units.max()), int(units.mean())) // 32) * 32,
                                      folder, args.repeats)}
            for stage, r in results[name].items():
                for mode in ("bucket", "pack"):
                    table.append([name, stage, mode, f"{r[mode]['row_padding']:.3f}", f"{r[mode]['padding']:.3f}",
                                  f"{r[mode]['useful_tokens_per_s']:.0f}",
                                  f"{r['speedup']:.2f}x" if mode == "pack" else ""])
                print(f"{name} {stage}: pack {r['speedup']:.2f}x bucket's useful tokens/s", flush=True)
    print("| lengths | stage | rows | row padding | all padding | useful tokens/s | pack / bucket |\n"
          "|---|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    write_json(args.out, results)

if __name__ == "__main__":
    main()
