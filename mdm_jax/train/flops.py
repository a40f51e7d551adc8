"""The FLOPs a train step needs, and the device peaks MFU divides them by.

XLA's cost analysis counts a scanned loop's body once, not once per layer, so the step is counted
as the same step lowered (never compiled, from shapes alone) with its layers unrolled, unsharded
and without remat: the model's FLOPs (forward, backward and optimizer, each matmul as 2·m·n·k),
recomputation left out as MaxText leaves it out.
"""

from __future__ import annotations

import dataclasses

import jax

from mdm_jax.config.train import TrainConfig
from mdm_jax.train.step import init_state, make_train_step

PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "v6": 918e12, "v5p": 459e12, "v5 lite": 197e12,
              "v5e": 197e12, "v4": 275e12}  # dense bf16 per device, by device-kind substring


def counting_config(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with every layer stack unrolled and no remat: the program whose FLOPs XLA counts fully."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, unroll_layers=True, remat=False))


def step_flops(cfg: TrainConfig, optimizer, batch, distill_steps: int = 0) -> float | None:
    """Global FLOPs of one train step on `batch` (arrays or ShapeDtypeStructs); None where XLA gives no count."""
    counting = counting_config(cfg)
    state = jax.eval_shape(lambda: init_state(counting, optimizer, jax.random.key(0)))  # per-layer params
    step = make_train_step(counting, optimizer, distill_steps=distill_steps)
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # no shardings: the whole batch
    try:
        return float(step.lower(state, jax.tree.map(abstract, batch)).cost_analysis()["flops"])
    except (KeyError, TypeError, NotImplementedError):
        return None


def peak_flops(cfg: TrainConfig) -> float | None:
    """Per-device peak: `cfg.peak_tflops`, else by device kind (None when unknown, e.g. CPU)."""
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops * 1e12
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)
