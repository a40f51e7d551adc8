"""Orbax checkpoints of a training run: one composite item per step.

    ckpt = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    ckpt.save(step, state, data_state, cfg, meta)   # async; returns once arrays are copied off device
    restored = ckpt.restore(abstract_state, cfg)    # None when there is no checkpoint yet
    ckpt.close()                                    # waits for the last save

Items: `state` (TrainState arrays, restored onto whatever shardings the abstract state carries,
so a run may resume on another mesh shape), `data` (the input iterator's state), `config` (the
TrainConfig JSON) and `meta` (distillation round, counters). Orbax writes each step to a temporary
directory and renames it when complete, so a kill during a save leaves the previous step restorable.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mdm_jax.config.overrides import ConfigError, differing_keys
from mdm_jax.config.train import CheckpointConfig, TrainConfig


@dataclasses.dataclass
class Restored:
    step: int
    state: object
    data: dict
    meta: dict


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, cfg: CheckpointConfig):
        options = ocp.CheckpointManagerOptions(max_to_keep=cfg.max_to_keep, enable_async_checkpointing=cfg.async_save)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=("state", "data", "config", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data: dict, cfg: TrainConfig, meta: dict):
        """Refuses non-finite params (the skipped-update guard should make that impossible)."""
        finite = jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.isfinite(x).all(), state.trainable))
        if not bool(finite):
            raise FloatingPointError(f"refusing to checkpoint step {step}: the params hold NaN or inf")
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data),
            config=ocp.args.JsonSave(json.loads(cfg.to_json())),
            meta=ocp.args.JsonSave(meta),
        ))

    def restore(self, abstract_state, cfg: TrainConfig) -> Restored | None:
        """The latest step onto `abstract_state`'s shapes and shardings; the model config must match."""
        step = self.manager.latest_step()
        if step is None:
            return None
        saved = TrainConfig.from_json(json.dumps(self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]))
        diff = [k for k in differing_keys(saved, cfg) if k.startswith(("model.", "stage.name"))]
        if diff:
            raise ConfigError(f"checkpoint {self.manager.directory}/{step} was written with a different model or "
                              f"stage: {', '.join(diff)} differ; use a new workdir or the same config")
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        return Restored(step, out["state"], out["data"], out["meta"])

    def saved_state(self, step: int | None = None) -> dict:
        """The train state of `step` (default latest) as nested dicts of host arrays, without a target."""
        step = self.manager.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()

