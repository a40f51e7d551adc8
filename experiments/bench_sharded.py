"""Sanity figure: the train step sharded over 8 fake CPU devices vs unsharded, same global batch.

    python -m experiments.bench_sharded --out runs/bench/sharded.json [key=value ...]

Fake CPU devices share the same cores, so the ratio measures the overhead of the sharded program
(collectives, smaller matmuls), not a speed-up. Prints a table and writes JSON.
"""

from __future__ import annotations

import jax

jax.config.update("jax_num_cpu_devices", 8)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from mdm_jax.config.train import MeshConfig, get_train_config  # noqa: E402
from mdm_jax.model.sharding import batch_sharding, make_mesh, shardings  # noqa: E402
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch  # noqa: E402
from mdm_jax.train.optimizer import make_optimizer  # noqa: E402
from mdm_jax.train.step import init_state, make_train_step, state_specs  # noqa: E402


def time_steps(step, state, batches, place):
    state, m = step(state, place(batches[0]))  # compile
    jax.block_until_ready(m)
    start = time.perf_counter()
    for b in batches[1:]:
        state, m = step(state, place(b))
        jax.block_until_ready(m)  # fake CPU devices deadlock when collectives queue up
    return (time.perf_counter() - start) / (len(batches) - 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--meshes", default="8x1,4x2,2x4")
    parser.add_argument("--out", default="runs/bench/sharded.json")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    cfg = get_train_config(args.config, ["data.batch_size=8", *args.overrides])
    opt = make_optimizer(cfg)
    host = jax.device_get(jax.jit(lambda: init_state(cfg, opt, jax.random.key(0)))())
    source = SyntheticSource(cfg)
    batches = [model_batch(next(source), cfg.model, SYNTHETIC_SPEECH_ID) for _ in range(args.steps + 1)]
    rows = [{"mesh": "unsharded", "step_s": time_steps(make_train_step(cfg, opt), host, batches, lambda b: b)}]
    specs = state_specs(cfg, host)
    for shape in args.meshes.split(","):
        data, model = map(int, shape.split("x"))
        mesh = make_mesh(MeshConfig(data, model))
        state = jax.device_put(host, shardings(mesh, specs))
        step = make_train_step(cfg, opt, mesh, specs)
        place = lambda b, s=batch_sharding(mesh): jax.device_put(b, s)
        rows.append({"mesh": f"({data}, {model})", "step_s": time_steps(step, state, batches, place)})
    for row in rows:
        row["ratio"] = row["step_s"] / rows[0]["step_s"]
    print(f"{'mesh':>10} {'step (s)':>9} {'ratio':>6}   [{cfg.stage.name}/{cfg.stage.objective}, batch 8, "
          f"{jax.devices()[0].device_kind}]")
    for row in rows:
        print(f"{row['mesh']:>10} {row['step_s']:9.3f} {row['ratio']:6.2f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"config": args.config, "overrides": args.overrides, "device": jax.devices()[0].device_kind,
                   "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
