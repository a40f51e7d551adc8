"""First-step compile time: scanned layer stacks vs the same model unrolled, per preset and program.

    python -m experiments.bench_compile --configs tiny,vocalnet-1b --out runs/bench/compile.json

Every (preset, program, layout) is lowered and compiled ahead of time in a fresh process from
shapes alone (`jax.eval_shape`: no weights are allocated), so a 1B model costs only its compile.
Programs: the stage I and stage II (MDM) train steps at `--batch` synthetic rows, "scanned" (the
trainer's) against "unrolled" (`model.unroll_layers=true`: one module per layer, the program this
project compiled before its layers were scanned), with unrolled / scanned of their total; and the
block diffusion (S = 1) and AR samplers over `--num-blocks` blocks at batch 1, which always decode
unrolled (`decode.layout`). Reported: trace + lower seconds and XLA compile seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm

from experiments.json_out import write_json
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.config.train import get_train_config
from mdm_jax.decode import speech
from mdm_jax.model.speech_decoder import SpeechDecoder
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch
from mdm_jax.train.optimizer import make_optimizer
from mdm_jax.train.step import init_state, make_train_step

PROGRAMS = ("train_text", "train_speech", "sample_mdm", "sample_ar")
LAYOUTS = ("scanned", "unrolled")  # of the train steps; samplers have one, "decoding"


def layouts(program: str) -> tuple[str, ...]:
    return LAYOUTS if program.startswith("train_") else ("decoding",)


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def lowered(config: str, program: str, layout: str, batch: int, num_blocks: int):
    """The program's `jax.stages.Lowered`, from shapes alone."""
    overrides = [f"model.unroll_layers={layout == 'unrolled'}", f"data.batch_size={batch}"]  # decoding: as stored
    if program.startswith("train_"):
        stage = program.removeprefix("train_")
        cfg = get_train_config(config, [*overrides, f"stage.name={stage}"])
        optimizer = make_optimizer(cfg)
        state = jax.eval_shape(lambda: init_state(cfg, optimizer, jax.random.key(0)))
        rows = model_batch(next(SyntheticSource(cfg)), cfg.model, SYNTHETIC_SPEECH_ID)
        return make_train_step(cfg, optimizer).lower(state, abstract(rows))
    method = program.removeprefix("sample_")
    cfg = get_train_config(config, overrides).model
    cfg = dataclasses.replace(cfg, sampler=SamplerConfig(method=method, denoise_steps=1))
    sd, text = cfg.speech_decoder, 8 * cfg.speech_decoder.text_per_block
    params = jax.eval_shape(lambda k: SpeechDecoder(sd, jnp.float32, cfg.execution).init(
        k, jnp.zeros((1, text, cfg.llm.d_model)), jnp.zeros((1, 4), jnp.int32))["params"], jax.random.key(0))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(cfg.dtype)), params)
    generate = jax.jit(speech.generate, static_argnames=("cfg", "num_blocks"))
    return generate.lower(params, jax.ShapeDtypeStruct((1, text, cfg.llm.d_model), jnp.dtype(cfg.dtype)),
                          jax.ShapeDtypeStruct((1, text), bool), jax.ShapeDtypeStruct((1,), bool),
                          jax.random.key(0), cfg=cfg, num_blocks=num_blocks)


def measure_one(config: str, program: str, layout: str, batch: int, num_blocks: int) -> dict:
    start = time.perf_counter()
    low = lowered(config, program, layout, batch, num_blocks)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    low.compile()
    return {"lower_s": lower_s, "compile_s": time.perf_counter() - start}


def measure(config: str, program: str, layout: str, batch: int, num_blocks: int, timeout: float) -> dict:
    """`measure_one` in a fresh process (nothing cached from another layout), or a timeout."""
    cmd = [sys.executable, "-m", "experiments.bench_compile", "--one", config, program, layout,
           "--batch", str(batch), "--num-blocks", str(num_blocks)]
    row = {"config": config, "program": program, "layout": layout}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**row, "timed_out_s": timeout}
    if done.returncode:
        raise RuntimeError(f"{config} {program} {layout} failed:\n{done.stderr[-3000:]}")
    return {**row, **json.loads(done.stdout.strip().splitlines()[-1])}


def ratios(rows: list[dict]) -> list[dict]:
    """unrolled / scanned total seconds per (config, program); a timeout gives a lower bound."""
    out = []
    for config, program in dict.fromkeys((r["config"], r["program"]) for r in rows):
        pair = {r["layout"]: r for r in rows if (r["config"], r["program"]) == (config, program)}
        total = lambda r: r.get("timed_out_s") or r["lower_s"] + r["compile_s"]
        if {"scanned", "unrolled"} <= set(pair) and "timed_out_s" not in pair["scanned"]:
            out.append({"config": config, "program": program,
                        "unrolled_over_scanned": total(pair["unrolled"]) / total(pair["scanned"]),
                        "lower_bound": "timed_out_s" in pair["unrolled"]})
    return out


def print_table(result: dict):
    print(f"\nfirst-step compile on {result['device']} (train batch {result['batch']}, "
          f"samplers {result['num_blocks']} blocks)")
    print(f"{'config':>14} {'program':>13} {'layout':>9} {'lower s':>8} {'compile s':>9} {'total s':>8}")
    for r in result["rows"]:
        if "timed_out_s" in r:
            timeout = f">{r['timed_out_s']:.0f}"
            print(f"{r['config']:>14} {r['program']:>13} {r['layout']:>9} {'':>8} {'':>9} {timeout:>8}")
        else:
            print(f"{r['config']:>14} {r['program']:>13} {r['layout']:>9} {r['lower_s']:>8.1f} "
                  f"{r['compile_s']:>9.1f} {r['lower_s'] + r['compile_s']:>8.1f}")
    for r in result["ratios"]:
        bound = ">=" if r["lower_bound"] else ""
        print(f"{r['config']:>14} {r['program']:>13}  unrolled / scanned {bound}{r['unrolled_over_scanned']:.1f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,vocalnet-1b")
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    parser.add_argument("--batch", type=int, default=8, help="train steps: global batch of synthetic rows")
    parser.add_argument("--num-blocks", type=int, default=8, help="samplers: blocks decoded")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per (preset, program, layout)")
    parser.add_argument("--out", default="runs/bench/compile.json")
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "PROGRAM", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(*args.one, args.batch, args.num_blocks)))
        return
    todo = [(c, p, layout) for c in args.configs.split(",") for p in args.programs.split(",") for layout in layouts(p)]
    rows = [measure(*one, args.batch, args.num_blocks, args.timeout) for one in tqdm(todo, desc="compile")]
    device = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})"
    result = {"device": device, "batch": args.batch, "num_blocks": args.num_blocks, "rows": rows,
              "ratios": ratios(rows)}
    print_table(result)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
