"""Whole-model train steps: stage I (encoder -> adaptor -> LoRA LLM) and stage II (speech decoder,
MDM) on synthetic batches, with tokens/s and MFU.

    python -m experiments.bench_train_full --config vocalnet-1b --batch 8 --out runs/bench/train_full.json

Each stage: random params, `--steps` timed steps after a compiling one (median). FLOPs per step are
XLA's cost analysis of the same step with its layers unrolled and no remat (`train.flops`: forward,
backward and optimizer; frozen parts forward, and backward through activations where gradients
pass): MFU = FLOPs / step seconds / (device peak x devices). CPUs have no peak: FLOP/s are given.
Tokens = real text + speech positions of the batch (padding left out).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from tqdm import tqdm

from experiments.json_out import write_json
from mdm_jax.config.train import get_train_config
from mdm_jax.model.sharding import batch_sharding, make_mesh, shardings
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, batch_stats, model_batch
from mdm_jax.train.flops import peak_flops, step_flops
from mdm_jax.train.optimizer import make_optimizer
from mdm_jax.train.step import init_state, make_train_step, state_specs

STAGES = {"text": "stage I", "speech": "stage II"}


def bench_stage(config: str, stage: str, batch: int, steps: int, overrides: list[str]) -> dict:
    cfg = get_train_config(config, [f"stage.name={stage}", f"data.batch_size={batch}", *overrides])
    mesh, optimizer = make_mesh(cfg.mesh), make_optimizer(cfg)
    make = lambda: init_state(cfg, optimizer, jax.random.key(cfg.seed))
    specs = state_specs(cfg, jax.eval_shape(make))
    state = jax.jit(make, out_shardings=shardings(mesh, specs))()
    step = make_train_step(cfg, optimizer, mesh, specs)
    source = SyntheticSource(cfg)
    hosts = [model_batch(next(source), cfg.model, SYNTHETIC_SPEECH_ID) for _ in range(steps + 1)]
    put = lambda host: jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh)), host)
    flops = step_flops(cfg, optimizer, hosts[0])
    times = []
    for i, host in enumerate(tqdm(hosts, desc=STAGES[stage], leave=False)):
        start = time.perf_counter()
        state, metrics = step(state, put(host))
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
        if i == 0:
            compile_s = times.pop()
    seconds = statistics.median(times)
    tokens = statistics.mean(batch_stats(h)["tokens"] for h in hosts[1:])
    peak = peak_flops(cfg)
    return {"stage": stage, "batch": batch, "remat": cfg.model.execution.remat, "dtype": cfg.model.dtype,
            "compile_s": compile_s, "step_s": seconds, "tokens_per_step": tokens, "tokens_per_s": tokens / seconds,
            "padding": statistics.mean(batch_stats(h)["padding"] for h in hosts[1:]),
            "flops_per_step": flops, "flops_per_s": flops / seconds if flops else None,
            "mfu": flops / seconds / (peak * jax.device_count()) if flops and peak else None,
            "loss": float(metrics["loss"])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--stages", default="text,speech")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per stage (after one compiling step)")
    parser.add_argument("--out", default="runs/bench/train_full.json")
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. model.remat=true")
    args = parser.parse_args(argv)
    rows = [bench_stage(args.config, stage, args.batch, args.steps, args.overrides) for stage in args.stages.split(",")]
    device = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}, {jax.device_count()} device)"
    result = {"config": args.config, "device": device, "overrides": args.overrides,
              "flops_counted": "XLA cost analysis of the step unrolled, unsharded, without remat", "rows": rows}
    print(f"\n{args.config} train steps on {device}")
    print(f"{'stage':>9} {'batch':>5} {'step s':>8} {'tokens/s':>10} {'pad':>5} {'TFLOP/step':>10} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'compile s':>9}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        tf = lambda x: f"{x / 1e12:.3f}" if x else "-"
        print(f"{STAGES[r['stage']]:>9} {r['batch']:>5} {r['step_s']:>8.3f} {r['tokens_per_s']:>10.0f} "
              f"{r['padding']:>5.0%} {tf(r['flops_per_step']):>10} {tf(r['flops_per_s']):>8} {mfu:>6} "
              f"{r['compile_s']:>9.1f}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
