"""Ahead-of-time compilation from shapes alone, for devices this host may not have: the train step of a
config over its mesh, and the decode steps on one device, for a TPU slice (libtpu's own compiler) or CPUs.

    devices = target_devices("tpu:v5e:2x2")       # abstract chips of a v5e 2x2 slice
    compiled = compile_train_step(cfg, devices)    # cfg.mesh laid over them; nothing is allocated
    compiled.memory_analysis()                     # the TPU compiler's buffers per chip

Targets: `tpu:<generation>:<topology>` (`tpu:v5e:8x8`, `tpu:v5p:4x4x4`, `tpu:v6e:8x8`; libtpu must be
installed: `make setup` does), or `cpu` (this host's devices: fake ones need `jax_num_cpu_devices` before
JAX starts). MaxText's `train_compile.py` does the same for its models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.config.train import TrainConfig
from mdm_jax.decode import autoregressive, block_diffusion, streaming
from mdm_jax.model.sharding import batch_sharding, make_mesh, shardings
from mdm_jax.model.vocalnet import abstract_params
from mdm_jax.train import distill
from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch
from mdm_jax.train.optimizer import make_optimizer
from mdm_jax.train.step import init_state, make_train_step, state_specs

GENERATIONS = ("v4", "v5e", "v5p", "v6e")


def target_devices(target: str) -> list:
    """`tpu:<generation>:<topology>` -> the slice's abstract devices (compile only); `cpu` -> jax.devices()."""
    if target == "cpu":
        return jax.devices()
    platform, _, topology = target.partition(":")
    if platform != "tpu" or topology.partition(":")[0] not in GENERATIONS:
        raise ConfigError(f"target {target!r}: expected cpu or tpu:<{'|'.join(GENERATIONS)}>:<topology>, "
                          f"e.g. tpu:v5e:8x8")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile only: no chip to lock against other processes
    try:
        with quiet_stderr():  # libtpu's start-up warnings about the chips this host lacks
            return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except Exception as error:  # libtpu missing, or a topology it does not know
        raise ConfigError(f"target {target!r}: no TPU topology ({str(error).splitlines()[0]}); libtpu pinned to "
                          f"the locked jax is installed by `make setup`") from None


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null for the block (native libraries write there directly)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def on(devices) -> contextlib.AbstractContextManager:
    """Lower under the target's first device: Pallas TPU kernels read the chip generation from it."""
    return jax.default_device(devices[0])


def abstract(tree, sharding):
    """Arrays -> ShapeDtypeStructs with `sharding` (one sharding, or a tree of them matching `tree`)."""
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding)


def train_inputs(cfg: TrainConfig, devices):
    """(mesh, optimizer, state specs, abstract sharded state, abstract sharded batch) of cfg's train step."""
    mesh, optimizer = make_mesh(cfg.mesh, devices), make_optimizer(cfg)
    state = jax.eval_shape(lambda: init_state(cfg, optimizer, jax.random.key(0)))
    specs = state_specs(cfg, state)
    rows = model_batch(next(SyntheticSource(cfg)), cfg.model, SYNTHETIC_SPEECH_ID)
    return mesh, optimizer, specs, abstract(state, shardings(mesh, specs)), abstract(rows, batch_sharding(mesh))


def compile_train_step(cfg: TrainConfig, devices):
    """cfg's sharded train step (its stage and objective; distillation: its first round's), compiled for
    `devices` from shapes alone -> `jax.stages.Compiled`."""
    mesh, optimizer, specs, state, rows = train_inputs(cfg, devices)
    distill_steps = distill.student_steps(cfg.distill, 0) if cfg.stage.name == "distill" else 0
    with on(devices):
        return make_train_step(cfg, optimizer, mesh, specs, distill_steps).lower(state, rows).compile()


def compile_decode_steps(cfg: TrainConfig, device, batch: int = 2, text: int = 16, num_blocks: int = 2) -> dict:
    """The decoding programs of cfg's model on one `device`, from shapes alone -> {name: Compiled}: the LLM's
    prefill and step (the streaming path), and for block diffusion, AR and (with MTP modules) MTP the block
    interface streaming drives (begin, add_text, first_block, next_block) and the whole-answer `generate`
    evaluation runs. `batch` requests, `text` prompt and answer slots."""
    model = cfg.model
    one = SingleDeviceSharding(device)
    dtype = jnp.dtype(model.dtype)  # decoding runs on params in the compute dtype
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=one), abstract_params(model))
    sd, key = params["speech_decoder"], abstract(jax.random.key(0), one)
    s = lambda shape, dtype=jnp.int32: jax.ShapeDtypeStruct(shape, dtype, sharding=one)
    hidden, valid, flags = s((batch, text, model.llm.d_model), dtype), s((batch, text), bool), s((batch,), bool)
    capacity, speech = 2 * text, s((batch, text // 2, model.llm.d_model), dtype)
    prefill = functools.partial(streaming._prefill, cfg=model, capacity=capacity)
    methods = ("mdm", "ar", "mtp") if model.speech_decoder.mtp_modules else ("mdm", "ar")
    compiled = {}
    with on([device]):
        compiled["llm_prefill"] = prefill.func.lower(params, speech, s((batch, text)), s((batch,)),
                                                     cfg=model, capacity=capacity).compile()
        caches = abstract(jax.eval_shape(prefill, params, speech, s((batch, text)), s((batch,)))[1], one)
        compiled["llm_step"] = streaming._llm_step.lower(params, s((batch,)), s(()), s((batch,)), caches,
                                                         cfg=model).compile()
        for method in methods:
            run = dataclasses.replace(model, sampler=SamplerConfig(method=method, denoise_steps=2))
            talker = block_diffusion if method == "mdm" else autoregressive
            begin = functools.partial(talker.begin, cfg=run, num_blocks=num_blocks, text_capacity=text)
            add = functools.partial(talker.add_text, start=0, count=text, cfg=run)
            compiled[f"{method}_begin"] = begin.func.lower(sd, flags, key, **begin.keywords).compile()
            state = abstract(jax.eval_shape(begin, sd, flags, key), one)
            compiled[f"{method}_add_text"] = add.func.lower(sd, state, hidden, valid, **add.keywords).compile()
            state = abstract(jax.eval_shape(add, sd, state, hidden, valid), one)
            compiled[f"{method}_first_block"] = talker.first_block.lower(sd, state, cfg=run).compile()
            compiled[f"{method}_next_block"] = talker.next_block.lower(sd, state, cfg=run).compile()
            length = dict(num_blocks=num_blocks) if method == "mdm" else dict(
                max_tokens=num_blocks * model.speech_decoder.block_size)
            compiled[f"{method}_generate"] = talker.generate.lower(sd, hidden, valid, flags, key, cfg=run,
                                                                   **length).compile()
    return compiled
