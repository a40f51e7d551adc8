"""The training loop: input, sharded steps, checkpoints, metrics, fault handling.

    summary = train(get_train_config("tiny", overrides), "runs/x")

Resumes from the latest intact checkpoint in `workdir/checkpoints` (train state, input position,
distillation round), so a killed run restarted with the same command continues exactly; damaged steps
are named and set aside (`checkpointing`). SIGTERM
saves a checkpoint and returns normally. A non-finite loss or gradient skips the update (counted);
`max_bad_steps` in a row stop the run with `TrainingDiverged`. Metrics go to
`workdir/metrics.jsonl` and TensorBoard (`workdir/tb`), progress to a tqdm bar.
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

from data_pipelines.validation import BadRecords
from mdm_jax.config.model import ModelConfig, param_mismatch
from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import DistributedConfig, TrainConfig
from mdm_jax.convert.params_io import CheckpointError, load_params, save_params
from mdm_jax.model import lora
from mdm_jax.model.sharding import batch_sharding, data_parallel, make_mesh, shardings
from mdm_jax.train import distill
from mdm_jax.train.checkpointing import Checkpointer
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, batch_stats, model_batch
from mdm_jax.train.encoder_cache import EncoderCache
from mdm_jax.train.flops import peak_flops, step_flops
from mdm_jax.train.grain_source import grain_source
from mdm_jax.train.llm_states import StatesSource
from mdm_jax.train.optimizer import make_optimizer
from mdm_jax.train.step import init_state, make_train_step, state_specs


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


def initialize_distributed(cfg: DistributedConfig):
    """Start jax.distributed for multi-host runs (before any other JAX call); a no-op for one process."""
    if cfg.coordinator:
        jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
    elif cfg.auto:
        jax.distributed.initialize()


def train(cfg: TrainConfig, workdir: str, source=None, log=print) -> dict:
    """Run (or resume) to `cfg.train_steps`. `source`: an iterator of pipeline batches with get/set_state
    (default: Grain over `cfg.data.manifest`, or synthetic batches). Returns a summary dict."""
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh(cfg.mesh)
    if cfg.data.batch_size % (data_parallel(mesh) * cfg.optimizer.accum_steps):
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be a multiple of the 'data' x 'fsdp' mesh "
                          f"axes ({data_parallel(mesh)}) x optimizer.accum_steps ({cfg.optimizer.accum_steps})")
    speech_id, bad = SYNTHETIC_SPEECH_ID, None
    if source is None and cfg.data.llm_states:
        source = StatesSource(cfg, jax.process_index(), jax.process_count())
        log(f"data: {len(source)} cached LLM states from {cfg.data.llm_states}")
    elif source is None and cfg.data.manifest:
        bad = BadRecords(strict=False)
        source, speech_id = grain_source(cfg, bad, jax.process_index(), jax.process_count())
        log(f"data: Grain pipeline over {cfg.data.manifest}")
    elif source is None:
        source = SyntheticSource(cfg, jax.process_index(), jax.process_count())
        log("data: synthetic batches (no data.manifest given): for tests and smoke runs, not for real training")

    optimizer = make_optimizer(cfg)
    make = lambda params=None: init_state(cfg, optimizer, jax.random.key(cfg.seed), params)
    abstract = jax.eval_shape(make)
    specs = state_specs(cfg, abstract)
    state_shardings = shardings(mesh, specs)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint, log)
    restored = ckpt.restore(jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                         abstract, state_shardings), cfg)
    if restored is None:
        state = jax.jit(make, out_shardings=state_shardings)(load_init_params(cfg))
        start, meta = 0, {"distill_round": 0}
    else:
        state, start, meta = restored.state, restored.step, restored.meta
        source.set_state(restored.data)
        log(f"resumed from step {start} ({ckpt.manager.directory})")

    cache = (EncoderCache(jax.device_get(state.params["encoder"]), cfg.model, cfg.data.pad_multiple)
             if cfg.data.cache_encoder else None)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    steps_fns, flops = {}, None
    summary = {"start_step": start}
    bar = tqdm(total=cfg.train_steps, initial=start, disable=jax.process_index() != 0, dynamic_ncols=True)
    try:
        step_i, logged, t_last, tokens_since = start, start, time.perf_counter(), 0
        while step_i < cfg.train_steps:
            round_ = distill.round_at(cfg.distill, step_i) if cfg.stage.name == "distill" else 0
            if round_ != meta["distill_round"]:  # next round: teacher <- student, S halves
                state = state.replace(teacher=distill.promote(state.params["speech_decoder"]))
                meta["distill_round"] = round_
            steps = distill.student_steps(cfg.distill, round_) if cfg.stage.name == "distill" else 0
            if steps not in steps_fns:
                steps_fns[steps] = make_train_step(cfg, optimizer, mesh, specs, distill_steps=steps)
            step_fn = steps_fns[steps]

            raw = next(source)
            packed = cfg.data.batching == "pack"
            host = raw if "text_hidden" in raw else model_batch(raw, cfg.model, speech_id, packed)
            stats = batch_stats(host)
            if cache is not None:
                host = cache.packed(host) if packed else cache(host, (raw["mel_segment_ids"] > 0).sum(1))
            batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh), x), host)
            if flops is None and peak_flops(cfg):  # MFU needs both; CPUs have no peak to divide by
                flops = step_flops(cfg, optimizer, batch, steps)
            state, metrics = step_fn(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}  # blocks: CPU collectives need it
            step_i += 1
            tokens_since += stats["tokens"] * jax.process_count()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

            if step_i == start + 1:  # leave the compilation out of tokens/s and step time
                logged, t_last, tokens_since = step_i, time.perf_counter(), 0
            if step_i % cfg.log_every == 0 or step_i == cfg.train_steps:
                metrics.update(padding=stats["padding"], distill_round=meta["distill_round"])
                if step_i > logged:  # throughput since the last log; the first step (compilation) is left out
                    elapsed = time.perf_counter() - t_last
                    metrics.update(tokens_per_s=tokens_since / elapsed, step_time=elapsed / (step_i - logged))
                    if flops and peak_flops(cfg):
                        metrics["mfu"] = flops / metrics["step_time"] / (peak_flops(cfg) * jax.device_count())
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                writer.write(step_i, metrics)
                t_last, tokens_since, logged = time.perf_counter(), 0, step_i
            if metrics["bad_streak"] >= cfg.max_bad_steps:
                raise TrainingDiverged(
                    f"{int(metrics['bad_streak'])} consecutive non-finite losses/gradients up to step {step_i} "
                    f"(max_bad_steps={cfg.max_bad_steps}); updates were skipped, the last checkpoint "
                    f"({ckpt.latest_step()}) holds finite params. Lower optimizer.lr or check the data.")
            if step_i % cfg.checkpoint.every == 0 or step_i == cfg.train_steps or stop["signal"]:
                ckpt.save(step_i, state, source.get_state(), cfg, meta)
            if stop["signal"]:
                log(f"SIGTERM: saved step {step_i}, exiting")
                break
        summary.update(step=step_i, skipped=int(state.skipped), loss=metrics["loss"] if step_i > start else None)
    finally:
        bar.close()
        ckpt.close()
        writer.close()
        signal.signal(signal.SIGTERM, previous)
        if bad is not None:
            bad.write(os.path.join(workdir, "skipped_records.jsonl"))
    return summary


def load_init_params(cfg: TrainConfig):
    """Params of `cfg.init_from`, or None for random ones. The saved model config may differ from
    `cfg.model` only in how params are used (`config.model.USAGE_KEYS`: block layout, sampler, dtype)."""
    if not cfg.init_from:
        return None
    try:
        params, saved = load_params(cfg.init_from)
    except CheckpointError as e:
        raise ConfigError(f"init_from={cfg.init_from!r}: {e}") from None
    if not isinstance(saved, ModelConfig):
        raise ConfigError(f"init_from={cfg.init_from!r} holds a text LLM alone, not a VocalNet")
    mismatch = param_mismatch(saved, cfg.model)
    if mismatch:
        raise ConfigError(f"init_from={cfg.init_from!r} holds params of another model: {', '.join(mismatch)} differ")
    return params


def export(cfg: TrainConfig, workdir: str, out: str) -> str:
    """The latest checkpoint's model params, LoRA merged, as `params_io` files: `load_params(out)` in one call."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
    if ckpt.latest_step() is None:
        raise ConfigError(f"no checkpoint in {workdir}/checkpoints to export")
    state = ckpt.saved_state()
    ckpt.close()
    params = lora.merge(state["params"], state["lora"], cfg.stage.lora_alpha / cfg.stage.lora_rank)
    return str(save_params(out, params, cfg.model))



class MetricsWriter:
    """One JSON line per logged step in metrics.jsonl, and the same scalars to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            if np.isfinite(value):
                self.tb.add_scalar(name, value, step)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
