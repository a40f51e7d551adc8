"""Speech-token decoding speed: AR vs MTP vs block diffusion (MDM) on the same speech decoder.

    python -m experiments.bench_decode --configs tiny,tiny-vocalnet --out runs/bench/decode_tiny.json

Random weights (speed does not need trained ones) with EOS suppressed, so every method decodes
the same number of tokens. Each row is the median of repeated runs after a warm-up, and every
ratio is against the AR row of the same run. First-chunk latency is the time to the first
finished block of `block_size` tokens (prefill included).

Bandwidth: one decoder forward must read the weights it multiplies by (the decoder stack and
the head; MTP adds its k modules; the pre-NN and anchors run once, not per forward, and an
embedding lookup reads a few rows) and the KV cache it attends over (every layer's k and v over
all `prefix + 2 + blocks x B` slots, as the masks leave the whole cache in the computation).
Achieved bandwidth = those bytes x forwards / seconds; its fraction of the device's HBM peak is
given where the device kind is known (`HBM_BYTES_S`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.json_out import write_json
from mdm_jax.config.model import Execution, get_config
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.decode import speech
from mdm_jax.model.attention import init_cache
from mdm_jax.model.init import random_init
from mdm_jax.model.speech_decoder import SpeechDecoder
from mdm_jax.model.transformer import unstack_layers

HBM_BYTES_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}  # HBM peak by device-kind substring (SXM)


def hbm_peak() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for k, v in HBM_BYTES_S.items() if k in kind), None)


def bytes_per_forward(params, sd, method: str, heads: int, batch: int, slots: int, itemsize: int) -> dict:
    """Bytes one decoder forward reads: the weights it multiplies by and the KV cache it attends over."""
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    modules = heads if method == "mtp" else 0
    weights = size(params["decoder"]) + size(params["head"]) + sum(size(params[f"mtp_{k}"]) for k in range(modules))
    kv = 2 * (sd.num_layers + modules) * batch * slots * sd.num_kv_heads * sd.head_dim
    return {"weight_bytes": weights * itemsize, "kv_bytes": kv * itemsize}


def random_params(sd, text_dim: int, dtype):
    """The decoder's init distributions (drawn by numpy: fast) with EOS suppressed, so every method
    decodes every token; in the per-layer layout decoding runs on (`decode.layout`), as a server holds them."""
    params = random_init(SpeechDecoder(sd).init, jnp.zeros((1, 4, text_dim)), jnp.zeros((1, 4), jnp.int32))
    suppress = lambda head: dict(head, b=head["b"].at[sd.eos_id].set(-1e9))
    params["head"] = suppress(params["head"])
    for k in range(sd.mtp_modules):
        params[f"mtp_{k}"] = dict(params[f"mtp_{k}"], head=suppress(params[f"mtp_{k}"]["head"]))
    return jax.tree.map(lambda p: jnp.asarray(p, dtype), unstack_layers(params))


def timed(fn, repeats):
    """-> (compile + first run seconds, median seconds of `repeats` runs, last output)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    median = statistics.median(runs)
    return max(first - median, 0.0), median, out


def bench(config: str, batch: int, text_len: int, num_blocks: int, steps, threshold: float, mtp_heads: int,
          repeats: int, dtype: str = "float32", overrides: tuple[str, ...] = ()):
    cfg = get_config(config, [f"dtype={dtype}", *overrides])
    sd = cfg.speech_decoder
    B, L = sd.block_size, num_blocks * sd.block_size
    params = random_params(sd, cfg.llm.d_model, jnp.dtype(dtype))
    rng = np.random.default_rng(1)
    text = jnp.asarray(rng.standard_normal((batch, text_len, cfg.llm.d_model)), dtype)
    valid, streaming, key = jnp.ones((batch, text_len), bool), jnp.ones((batch,), bool), jax.random.key(0)

    def run(sampler: SamplerConfig):
        sampled = dataclasses.replace(cfg, sampler=sampler)
        return lambda blocks: lambda: speech.generate(params, text, valid, streaming, key, cfg=sampled,
                                                      num_blocks=blocks)

    methods = [("ar", None, None, run(SamplerConfig(method="ar"))),
               ("mtp", None, None, run(SamplerConfig(method="mtp", mtp_heads=mtp_heads)))]
    methods += [("mdm", s, None, run(SamplerConfig(denoise_steps=s))) for s in steps]
    if threshold:
        methods.append(("mdm", None, threshold, run(SamplerConfig(threshold=threshold))))
    rows, peak = [], hbm_peak()
    slots = sd.prefix_text(valid).shape[1] + 2 + L
    for method, s, tau, make in methods:
        compile_s, seconds, out = timed(make(num_blocks), repeats)
        _, first_chunk, _ = timed(make(1), repeats)
        tokens = int(np.asarray(out.lengths).min())
        assert tokens == L, f"{method} decoded {tokens} of {L} tokens"
        moved = bytes_per_forward(params, sd, method, mtp_heads, batch, slots, jnp.dtype(dtype).itemsize)
        bandwidth = (moved["weight_bytes"] + moved["kv_bytes"]) * int(out.forwards) / seconds
        rows.append({"method": method, "denoise_steps": s, "threshold": tau, "block": B,
                     "tokens_per_s": batch * L / seconds, "forwards_per_token": int(out.forwards) / L,
                     "first_chunk_s": first_chunk, "compile_s": compile_s, "seconds": seconds,
                     "ms_per_forward": 1e3 * seconds / int(out.forwards), **moved, "bytes_per_s": bandwidth,
                     "hbm_fraction": bandwidth / peak if peak else None})
    ar_row = rows[0]
    for r in rows:
        r["speedup_vs_ar"] = r["tokens_per_s"] / ar_row["tokens_per_s"]
        r["first_chunk_vs_ar"] = r["first_chunk_s"] / ar_row["first_chunk_s"]
    return {"config": config, "talker": sd.talker, "batch": batch, "text_len": text_len, "num_blocks": num_blocks,
            "dtype": dtype,
            "bare_block_forward_s": bare_forward(params, sd, text, valid, streaming, num_blocks, repeats,
                                                 jnp.dtype(dtype)),
            "rows": rows}


def bare_forward(params, cfg, text, valid, streaming, num_blocks, repeats, dtype):
    """One decoder forward over one block against a full cache: the floor for an MDM step."""
    B = cfg.block_size
    dec = SpeechDecoder(cfg, dtype, Execution(unroll=True))  # the decoding layout
    b, t = cfg.prefix_text(valid).shape  # the anchor Talker holds no text in its cache
    n_slots = t + 2 + num_blocks * B
    caches = init_cache(b, n_slots, cfg.num_kv_heads, cfg.head_dim, dtype, layers=cfg.num_layers)
    x = jnp.zeros((b, B, cfg.d_model), dtype)
    positions = jnp.broadcast_to(jnp.arange(B), (b, B))
    mask = jnp.ones((b, B, n_slots), bool)
    fwd = jax.jit(lambda p, x, c: dec.apply({"params": p}, dec.apply({"params": p}, x, positions, mask, c, t + 2,
                                                                    method=SpeechDecoder.backbone)[0][:, -B:],
                                            method=SpeechDecoder.logits))
    return timed(lambda: fwd(params, x, caches), repeats)[1]


def print_table(result, device: str):
    print(f"\n{result['config']} ({result['talker']} talker) on {device}: batch {result['batch']}, "
          f"{result['num_blocks']} blocks, bare block forward {1e3 * result['bare_block_forward_s']:.2f} ms")
    print(f"{'method':>6} {'S':>4} {'tau':>5} {'tok/s':>10} {'fwd/tok':>8} {'speedup':>8} "
          f"{'1st chunk ms':>12} {'vs AR':>6} {'ms/fwd':>8} {'MB/fwd':>8} {'GB/s':>7} {'of HBM':>6} {'compile s':>9}")
    for r in result["rows"]:
        fraction = f"{r['hbm_fraction']:.0%}" if r["hbm_fraction"] else "-"
        print(f"{r['method']:>6} {r['denoise_steps'] or '-':>4} {r['threshold'] or '-':>5} {r['tokens_per_s']:>10.1f} "
              f"{r['forwards_per_token']:>8.3f} {r['speedup_vs_ar']:>7.2f}x {1e3 * r['first_chunk_s']:>12.1f} "
              f"{r['first_chunk_vs_ar']:>6.2f} {r['ms_per_forward']:>8.2f} "
              f"{(r['weight_bytes'] + r['kv_bytes']) / 1e6:>8.1f} {r['bytes_per_s'] / 1e9:>7.1f} {fraction:>6} "
              f"{r['compile_s']:>9.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,tiny-vocalnet",
                        help="presets measured in this run, e.g. the anchor Talker and VocalNet's")
    parser.add_argument("--out", default="runs/bench/decode.json")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-len", type=int, default=40)
    parser.add_argument("--num-blocks", type=int, default=8)
    parser.add_argument("--denoise-steps", default="1,2,4,8,16", help="MDM rows: sampler.denoise_steps values")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--mtp-heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("overrides", nargs="*", help="model config overrides, e.g. attention=cudnn")
    args = parser.parse_args(argv)
    device = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}, {jax.device_count()} device)"
    result = {"device": device, "runs": [
        bench(config, args.batch, args.text_len, args.num_blocks, [int(s) for s in args.denoise_steps.split(",")],
              args.threshold, args.mtp_heads, args.repeats, args.dtype, args.overrides)
        for config in args.configs.split(",")], "overrides": args.overrides}
    for run in result["runs"]:
        print_table(run, device)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
