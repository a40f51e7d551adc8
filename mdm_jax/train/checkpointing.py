"""Orbax checkpoints of a training run: one composite item per step, checked before it is trusted.

    ckpt = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    ckpt.save(step, state, data_state, cfg, meta)   # async; returns once arrays are copied off device
    restored = ckpt.restore(abstract_state, cfg)    # None when there is no checkpoint yet
    ckpt.close()                                    # waits for the last save

Items: `state` (TrainState arrays, restored onto whatever shardings the abstract state carries,
so a run may resume on another mesh shape), `data` (the input iterator's state), `config` (the
TrainConfig JSON) and `meta` (distillation round, counters). Orbax writes each step to a temporary
directory and renames it when complete, so a kill or a failed write during a save leaves the previous
step the latest. A step that does not restore whole (an item missing, unreadable or cut short, arrays of
other shapes than the config's) is named in one line and moved to `checkpoints/damaged/` (never
deleted), and the step before it is tried; a save that fails ends the run in one line (`SaveFailed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mdm_jax.config.overrides import ConfigError, differing_keys
from mdm_jax.config.train import CheckpointConfig, TrainConfig
from mdm_jax.convert.params_io import CheckpointError

ITEMS = ("state", "data", "config", "meta")
DAMAGED = "damaged"  # checkpoints/damaged/<step>: where a damaged step is moved


class SaveFailed(RuntimeError):
    """A checkpoint could not be written (disk full, permission denied, the folder gone): one line; every
    earlier step stays intact."""


@dataclasses.dataclass
class Restored:
    step: int
    state: object
    data: dict
    meta: dict


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, cfg: CheckpointConfig, log=print):
        self.directory, self.cfg, self.log = os.path.abspath(directory), cfg, log
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.cfg.max_to_keep,
                                               enable_async_checkpointing=self.cfg.async_save)
        with quiet_orbax():  # a damaged step's metadata: `restore` names it in one line instead
            return ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data: dict, cfg: TrainConfig, meta: dict):
        """Refuses non-finite params (the skipped-update guard should make that impossible)."""
        finite = jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.isfinite(x).all(), state.trainable))
        if not bool(finite):
            raise FloatingPointError(f"refusing to checkpoint step {step}: the params hold NaN or inf")
        with self._saving(self.manager.latest_step()):  # the previous save's asynchronous write, if it failed
            self.manager.wait_until_finished()
        with self._saving(step):
            self.manager.save(step, force=True, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(json.loads(cfg.to_json())),
                meta=ocp.args.JsonSave(meta),
            ))

    def restore(self, abstract_state, cfg: TrainConfig) -> Restored | None:
        """The newest intact step onto `abstract_state`'s shapes and shardings (None: no checkpoint yet).
        Damaged steps are named and set aside; if none is intact, `CheckpointError` unless
        `checkpoint.start_over` (then None: a fresh start). The model config must match."""
        steps = self.steps()
        for step in steps:
            reason = agreed(self._damage(step, abstract_state, cfg))
            if reason is None:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore()))
                return Restored(step, out["state"], out["data"], out["meta"])
            self._set_aside(step, reason)
        if not steps:
            return None
        if self.cfg.start_over:
            self.log(f"no intact checkpoint in {self.directory}: starting over from step 0 (checkpoint.start_over)")
            return None
        raise CheckpointError(f"no intact checkpoint in {self.directory} (damaged: {', '.join(map(str, steps))}, "
                              f"moved to {DAMAGED}/); checkpoint.start_over=true starts the run from step 0")

    def steps(self) -> list[int]:
        """The steps in the folder, newest first, as named by their folders (Orbax skips what it cannot read)."""
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        return sorted((int(n) for n in names if n.isdigit()), reverse=True)

    def _damage(self, step: int, abstract_state, cfg: TrainConfig) -> str | None:
        """Why `step` cannot be resumed, or None. A different model or stage is not damage: it raises."""
        with quiet_orbax():
            return self._check(step, abstract_state, cfg)

    def _check(self, step: int, abstract_state, cfg: TrainConfig) -> str | None:
        folder = os.path.join(self.directory, str(step))
        missing = [item for item in ITEMS if not os.path.isdir(os.path.join(folder, item))]
        if missing:
            return f"{', '.join(missing)} missing"
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(
                config=ocp.args.JsonRestore(), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
            saved = TrainConfig.from_json(json.dumps(saved["config"]))
        except Exception as error:  # noqa: BLE001 (whatever a damaged file raises, it is named, not raised)
            return f"config, data or meta unreadable: {one_line(error)}"
        diff = [k for k in differing_keys(saved, cfg) if k.startswith(("model.", "stage.name"))]
        if diff:
            raise ConfigError(f"checkpoint {folder} was written with a different model or stage: {', '.join(diff)} "
                              f"differ; use a new workdir or the same config")
        try:
            stored = ocp.StandardCheckpointer().metadata(os.path.join(folder, "state")).item_metadata
            wrong = shape_mismatch(stored, abstract_state)
            if wrong:
                return f"state does not match the config's shapes: {wrong}"
            self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as error:  # noqa: BLE001
            return f"state unreadable: {one_line(error)}"
        return None

    def _set_aside(self, step: int, reason: str):
        """Move a damaged step to damaged/<step> (process 0, the others wait) and reopen the manager."""
        aside = os.path.join(self.directory, DAMAGED, str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            n = 0
            while os.path.exists(aside + (f".{n}" if n else "")):
                n += 1
            aside += f".{n}" if n else ""
            os.rename(os.path.join(self.directory, str(step)), aside)
            self.log(f"checkpoint step {step} is damaged ({reason}): moved to {aside}")
        multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.manager.close()
        self.manager = self._open()

    def saved_state(self, step: int | None = None) -> dict:
        """The train state of `step` (default latest) as nested dicts of host arrays, without a target."""
        step = self.manager.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

    def close(self):
        with self._saving(self.manager.latest_step()):
            self.manager.wait_until_finished()
        self.manager.close()

    @contextlib.contextmanager
    def _saving(self, step):
        """Errors of a save (raised now, or by its asynchronous write when waited for) as one `SaveFailed` line."""
        try:
            yield
        except FloatingPointError:
            raise
        except Exception as error:  # noqa: BLE001 (disk full, permission denied, the folder gone, ...)
            raise SaveFailed(f"saving checkpoint step {step} in {self.directory} failed: {one_line(error)}; "
                             f"the steps saved before it are intact") from None


def shape_mismatch(stored, abstract_state) -> str:
    """The first leaves whose stored shape or dtype differ from `abstract_state`'s ('' if none); leaves are
    matched by path names (the stored tree is plain dicts and lists, the state dataclasses and tuples)."""
    def by_name(tree):
        return {"/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path): leaf
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

    want, got = by_name(abstract_state), by_name(stored)
    if set(want) != set(got):
        names = sorted(set(want) ^ set(got))
        return f"tensors {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} not in both"
    wrong = [f"{name} {tuple(got[name].shape)} vs {tuple(a.shape)}" for name, a in want.items()
             if tuple(got[name].shape) != tuple(a.shape) or np.dtype(got[name].dtype) != np.dtype(a.dtype)]
    return ", ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else "")


def agreed(reason: str | None) -> str | None:
    """Every process's verdict on a step must be the same (each checks the same files)."""
    if jax.process_count() == 1:
        return reason
    verdicts = multihost_utils.process_allgather(np.int32(reason is None))
    if len(set(np.asarray(verdicts).tolist())) > 1:
        raise CheckpointError(f"processes disagree on whether a checkpoint is intact ({reason or 'intact here'}): "
                              "do they all see the same checkpoint folder?")
    return reason


class _SaveTracebacks(logging.Filter):
    """Drops Orbax's logged tracebacks of a failed save (its background thread's, then the waiting one's):
    `SaveFailed` says it in one line."""

    def filter(self, record):
        return not (record.exc_info and record.levelno >= logging.ERROR and "orbax" in record.pathname)


logging.getLogger("absl").addFilter(_SaveTracebacks())


@contextlib.contextmanager
def quiet_orbax():
    """Orbax's own log lines off for the block (its warnings about partial restores and unreadable metadata)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
