"""Ahead-of-time memory plan of a train step, compiled for a TPU slice this host does not have: no weights are
allocated.

    python -m experiments.plan_memory --config vocalnet-8b --target tpu:v5e:8x8 --mesh data=1,fsdp=16,model=4 \\
        --batch 64 --stage speech --out runs/plan/vocalnet-8b-speech-v5e.json [model.remat=true ...]

The state and batch exist as shapes with their shardings (`jax.eval_shape`), the sharded train step
is lowered and compiled by libtpu's compiler for the slice's chips (`mdm_jax.train.aot`), and the
memory analysis of the compiled per-chip program gives its arguments (params, optimizer state, batch
shard), outputs, temporaries (activations, gradients, collectives' buffers) and, with outputs aliasing
the donated arguments, the peak = arguments + outputs - aliased + temporaries, against the chip's HBM.
`--target cpu --device h100` compiles for `data x fsdp x model` fake CPU devices instead (the CPU
compiler's buffers standing in for a GPU's: an estimate). FLOPs of the step (`train.flops`) with `--flops`;
`--find-batch` doubles the batch from `--batch` while it fits, then bisects: the largest batch that fits.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax

from experiments.json_out import write_json
from mdm_jax.config.train import get_train_config
from mdm_jax.model.vocalnet import abstract_params
from mdm_jax.train import aot
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch
from mdm_jax.train.flops import step_flops
from mdm_jax.train.optimizer import make_optimizer

DEVICES = {"v5e": 16, "v5p": 95, "v6e": 32, "h100": 80, "h200": 141}  # GiB of HBM per chip
GIB = 2.0**30


def parse_mesh(text: str) -> dict[str, int]:
    sizes = {"data": 1, "fsdp": 1, "model": 1}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if name not in sizes or not size.isdigit():
            raise SystemExit(f"--mesh {text!r}: expected e.g. data=1,fsdp=16,model=4")
        sizes[name] = int(size)
    return sizes


def device_of(target: str, device: str) -> str:
    """The chip a TPU target names (its HBM is the budget), else `device`."""
    return target.split(":")[1] if target.startswith("tpu:") else device


def plan(config: str, stage: str, mesh_sizes: dict, batch: int, device: str, overrides, flops: bool = False,
         target: str = "cpu") -> dict:
    """The memory plan of one train step (see the module's docstring)."""
    mesh_overrides = [f"mesh.{name}={size}" for name, size in mesh_sizes.items()]
    cfg = get_train_config(config, [f"stage.name={stage}", f"data.batch_size={batch}", *mesh_overrides, *overrides])
    devices = aot.target_devices(target)[: math.prod(mesh_sizes.values())]
    device = device_of(target, device)
    start = time.perf_counter()
    compiled = aot.compile_train_step(cfg, devices)
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    parts = {"arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
             "aliased": memory.alias_size_in_bytes, "temporaries": memory.temp_size_in_bytes}
    peak = (parts["arguments"] + parts["outputs"] - parts["aliased"] + parts["temporaries"]) / GIB
    result = {"config": config, "stage": stage, "target": target, "attention": cfg.model.attention,
              "mesh": mesh_sizes, "batch": batch, "device": device,
              "device_gib": DEVICES[device], "overrides": list(overrides), "remat": cfg.model.execution.remat,
              "params": sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg.model))),
              "compile_s": compile_s,
              **{f"{k}_gib": v / GIB for k, v in parts.items()}, "peak_gib": peak, "fits": peak <= DEVICES[device],
              "flops_per_step": step_flops(cfg, make_optimizer(cfg), model_batch(
                  next(SyntheticSource(cfg)), cfg.model, SYNTHETIC_SPEECH_ID)) if flops else None}
    print(f"{config} stage {stage} on {target}, attention {cfg.model.attention}, mesh {mesh_sizes}, batch {batch}, "
          f"remat {result['remat']}: per device "
          f"arguments {result['arguments_gib']:.2f} GiB, outputs {result['outputs_gib']:.2f} "
          f"(aliased {result['aliased_gib']:.2f}), temporaries {result['temporaries_gib']:.2f}, peak {peak:.2f} GiB "
          f"of {device}'s {DEVICES[device]} GiB: "
          f"{'fits' if result['fits'] else 'does NOT fit'} (compiled in {compile_s:.0f} s)", flush=True)
    return result


def largest_batch(plan_at, start: int, granule: int, limit: int = 1 << 16) -> dict | None:
    """The plan of the largest batch that fits: doubling from `start` (halving if it does not fit),
    then bisecting to within an eighth (batches stay multiples of `granule`, the rows' split);
    None if not even `granule` rows fit."""
    best, fails, batch = None, None, start
    while fails is None and batch <= limit:
        result = plan_at(batch)
        best, fails, batch = (result, None, batch * 2) if result["fits"] else (best, batch, batch)
    while best is None and fails > granule:  # `start` did not fit: halve until a batch does
        result = plan_at(max(granule, fails // 2 // granule * granule))
        best, fails = (result, fails) if result["fits"] else (None, result["batch"])
    if best is None or fails is None:
        return best
    low, high = best["batch"], fails
    while high - low > max(granule, low // 8):
        middle = (low + high) // 2 // granule * granule
        result = plan_at(middle)
        low, high, best = (middle, high, result) if result["fits"] else (low, middle, best)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--mesh", default="data=1,fsdp=2,model=2")
    parser.add_argument("--batch", type=int, default=8, help="global batch (rows)")
    parser.add_argument("--find-batch", action="store_true", help="the largest batch that fits, from --batch up")
    parser.add_argument("--stage", default="speech", choices=("text", "speech", "distill"))
    parser.add_argument("--target", default="cpu", help="tpu:<generation>:<topology> (e.g. tpu:v5e:8x8) or cpu")
    parser.add_argument("--device", default="v5e", choices=sorted(DEVICES), help="the chip of a cpu target")
    parser.add_argument("--flops", action="store_true", help="also count the step's FLOPs (an unrolled lowering)")
    parser.add_argument("--out", default="")
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. model.remat=true")
    args = parser.parse_args(argv)
    mesh_sizes = parse_mesh(args.mesh)
    if args.target == "cpu":
        jax.config.update("jax_num_cpu_devices", math.prod(mesh_sizes.values()))  # before JAX starts its backend
    plan_at = lambda batch: plan(args.config, args.stage, mesh_sizes, batch, args.device, args.overrides,
                                 args.flops, args.target)
    result = (largest_batch(plan_at, args.batch, mesh_sizes["data"] * mesh_sizes["fsdp"]) if args.find_batch
              else plan_at(args.batch))
    if result is None:
        print(f"batch {args.batch} does not fit")
    elif args.find_batch:
        print(f"largest batch that fits: {result['batch']}")
    if args.out and result is not None:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
