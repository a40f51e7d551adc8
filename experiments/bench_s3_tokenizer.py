"""S3 tokenizer throughput: hours of audio tokenized per hour of wall clock, CosyVoice2's speech_tokenizer_v2 at
real size (random weights: the time does not depend on their values), log-mel included, per batch and
clip length.

    python -m experiments.bench_s3_tokenizer --batches 1,8 --seconds 5,10 --out runs/bench/s3_tokenizer.json
    python -m experiments.bench_s3_tokenizer --small ...      # reduced sizes, a smoke run

Each (batch, seconds) shape is compiled by one untimed call, then timed over `--repeats` calls (the
median); audio_h_per_h = batch · seconds / median call seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from experiments.json_out import write_json
from mdm_jax.model import s3_tokenizer as s3

SMALL = s3.S3TokenizerConfig(d_model=128, num_heads=2, num_layers=2)


def measure(params, cfg, batch: int, seconds: float, repeats: int, dtype: str) -> dict:
    rng = np.random.default_rng(0)
    audio, samples = s3.pad_batch([rng.normal(0, 0.1, int(seconds * 16_000)).astype(np.float32)] * batch)
    jax.block_until_ready(s3.tokenize(params, cfg, audio, samples, dtype))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(s3.tokenize(params, cfg, audio, samples, dtype))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"batch": batch, "seconds": seconds, "dtype": dtype, "call_s": median,
            "audio_h_per_h": batch * seconds / median}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--seconds", default="5,10")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="reduced sizes (a smoke run)")
    parser.add_argument("--out", default="runs/bench/s3_tokenizer.json")
    args = parser.parse_args(argv)
    cfg = SMALL if args.small else s3.PRESETS["v2"]
    params = s3.random_params(cfg, jax.random.key(0))
    rows = [measure(params, cfg, int(b), float(s), args.repeats, d) for d in args.dtypes.split(",")
            for b in args.batches.split(",") for s in args.seconds.split(",")]
    device = jax.devices()[0]
    print(f"S3 tokenizer v2 {'(small) ' if args.small else ''}on {device.device_kind} ({jax.device_count()} device)")
    print(f"{'dtype':>9} {'batch':>5} {'seconds':>7} {'call s':>8} {'audio h / h':>11}")
    for r in rows:
        print(f"{r['dtype']:>9} {r['batch']:>5} {r['seconds']:>7g} {r['call_s']:>8.3f} {r['audio_h_per_h']:>11.1f}")
    result = {"device": device.device_kind, "platform": device.platform, "config": "small" if args.small else "v2",
              "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
