"""The train state and the sharded train step.

    mesh = make_mesh(cfg.mesh)                    # mdm_jax.model.sharding
    optimizer = make_optimizer(cfg)
    specs = state_specs(cfg, jax.eval_shape(lambda: init_state(cfg, optimizer, key)))
    state = jax.jit(lambda: init_state(cfg, optimizer, key), out_shardings=shardings(mesh, specs))()
    step = make_train_step(cfg, optimizer, mesh, specs)
    state, metrics = step(state, global_batch)    # batch leaves sharded over 'data' on axis 0

Loss and gradients run under `jax.jit(jax.shard_map(..., check_vma=True))`: params sharded by
the logical-axis table (Megatron column/row-parallel layers, vocab-parallel text head), the batch
over 'data', the loss reduced over 'data' inside the differentiated function. The optimizer
update runs outside the shard_map under the same jit: it is elementwise apart from the global
gradient norm, which jit computes over the sharded leaves without hand-written collectives.
`mesh=None` gives the same step unsharded (the reference of the equivalence tests).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mdm_jax.config.train import TrainConfig
from mdm_jax.model import lora as lora_lib
from mdm_jax.model.sharding import BATCH, for_mesh, logical_specs, shardings
from mdm_jax.model.vocalnet import init_params
from mdm_jax.train import distill, objectives
from mdm_jax.train.optimizer import combine, learning_rate, partition


@struct.dataclass
class TrainState:
    step: jax.Array  # int32: updates attempted (skipped ones included)
    params: Any  # the whole model's params (frozen parts included)
    lora: Any  # LoRA factors ({} outside stage I)
    opt_state: Any
    teacher: Any  # distillation teacher: speech-decoder params ({} outside distillation)
    skipped: jax.Array  # int32: updates skipped for a non-finite loss or gradient
    bad_streak: jax.Array  # int32: consecutive skipped updates

    @property
    def trainable(self):
        return {"params": self.params, "lora": self.lora}


def lora_targets(cfg: TrainConfig) -> tuple[str, ...]:
    if cfg.stage.name != "text" or cfg.stage.train_llm:
        return ()
    return tuple(t for t in cfg.stage.lora_targets.split(",") if t)


def init_state(cfg: TrainConfig, optimizer: optax.GradientTransformation, key, params=None) -> TrainState:
    """A fresh state; `params`: start from these (e.g. stage I's, LoRA merged) instead of random ones."""
    k_params, k_lora = jax.random.split(key)
    params = init_params(cfg.model, k_params) if params is None else params
    targets = lora_targets(cfg)
    lora = lora_lib.init({"llm": params["llm"]}, targets, cfg.stage.lora_rank, k_lora) if targets else {}
    teacher = distill.promote(params["speech_decoder"]) if cfg.stage.name == "distill" else {}
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated
    return TrainState(zero(), params, lora, optimizer.init({"params": params, "lora": lora}), teacher, zero(), zero())


def state_specs(cfg: TrainConfig, state: TrainState) -> TrainState:
    """PartitionSpecs of every leaf of `state` (arrays or ShapeDtypeStructs)."""
    params = logical_specs(jax.eval_shape(lambda: init_params(cfg.model, jax.random.key(0), boxed=True)))
    lora = lora_lib.specs(params, state.lora)
    by_path = dict(jax.tree_util.tree_flatten_with_path({"params": params, "lora": lora},
                                                        is_leaf=lambda x: isinstance(x, P))[0])

    def opt_spec(path, _):  # optimizer moments mirror the params: match the param's key path as a suffix
        return next((by_path[path[i:]] for i in range(len(path)) if path[i:] in by_path), P())

    return TrainState(P(), params, lora, jax.tree_util.tree_map_with_path(opt_spec, state.opt_state),
                      params["speech_decoder"] if state.teacher else {}, P(), P())


def make_grad_fn(cfg: TrainConfig, mesh: Mesh | None = None, specs: TrainState | None = None,
                 distill_steps: int = 0):
    """(trainable, teacher, prepared batch, key) -> ((loss, metrics), grads), under shard_map when `mesh`.

    grads: the trained part of `trainable` (None at frozen leaves). Params and grads sharded by
    `specs`, batch rows over 'data'; loss and metrics replicated.
    """
    loss = functools.partial(objectives.loss_fn, cfg=cfg, distill_steps=distill_steps)
    grad_fn = jax.value_and_grad(loss, has_aux=True)
    if mesh is not None:
        specs = for_mesh(specs, mesh)
        trained, frozen = partition(specs.trainable, cfg.stage)
        grad_fn = jax.shard_map(grad_fn, mesh=mesh, in_specs=(trained, frozen, specs.teacher, P(BATCH), P()),
                                out_specs=((P(), P()), trained), check_vma=True)
    return lambda trainable, teacher, batch, key: grad_fn(*partition(trainable, cfg.stage), teacher, batch, key)


def make_train_step(cfg: TrainConfig, optimizer: optax.GradientTransformation, mesh: Mesh | None = None,
                    specs: TrainState | None = None, distill_steps: int = 0):
    """-> jitted (state, batch) -> (state, metrics); the input state is donated.

    batch: the model batch (see `objectives`), global, leaf axis 0 = batch. `distill_steps`: the
    student steps of the current distillation round (static: each round compiles its own step).
    """
    grad_fn = make_grad_fn(cfg, mesh, specs, distill_steps)
    accum = cfg.optimizer.accum_steps
    lr = learning_rate(cfg.optimizer, cfg.train_steps)

    def step(state: TrainState, batch):
        k_noise, k_loss = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), state.step))
        batch = objectives.prepare(batch, k_noise, cfg)
        # micro-batch j = rows j, j + accum, ...: each data shard keeps its own rows
        micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(-1, accum, *x.shape[1:]), 1, 0), batch)

        def accumulate(carry, xs):  # each micro-batch weighted by the tokens its loss averages over
            grads, tokens = carry
            j, mb = xs
            (loss_j, metrics_j), grads_j = grad_fn(state.trainable, state.teacher, mb, jax.random.fold_in(k_loss, j))
            w = metrics_j[objectives.LOSS_TOKENS].astype(jnp.float32)
            return (jax.tree.map(lambda g, gj: g + w * gj, grads, grads_j), tokens + w), (loss_j, metrics_j)

        trained, frozen = partition(state.trainable, cfg.stage)
        (grads, tokens), (losses, metrics) = lax.scan(
            accumulate, (jax.tree.map(jnp.zeros_like, trained), jnp.float32(0)), (jnp.arange(accum), micro))
        grads = jax.tree.map(lambda g: g / jnp.maximum(tokens, 1.0), grads)
        grads = combine(grads, jax.tree.map(jnp.zeros_like, frozen))  # zeros that `set_to_zero` never reads
        counts = metrics.pop(objectives.COUNTS, {})
        mean = lambda m, n: (m * n).sum() / jnp.maximum(n.sum(), 1.0)  # over micro-batches, n (accum,) weights
        loss = mean(losses, metrics[objectives.LOSS_TOKENS])
        metrics = {k: mean(m, counts.get(k, metrics[objectives.LOSS_TOKENS])) for k, m in metrics.items()}
        metrics[objectives.LOSS_TOKENS] = tokens
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        new = optax.apply_updates(state.trainable, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # skip bad updates
        new, opt_state = keep(new, state.trainable), keep(opt_state, state.opt_state)
        teacher = state.teacher
        if cfg.stage.name == "distill":
            teacher = keep(distill.follow(teacher, new["params"]["speech_decoder"], cfg.distill), teacher)
        bad = (~finite).astype(jnp.int32)
        state = TrainState(state.step + 1, new["params"], new["lora"], opt_state, teacher,
                           state.skipped + bad, (state.bad_streak + bad) * bad)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, lr=lr(state.step - 1), finite=finite,
                       skipped=state.skipped, bad_streak=state.bad_streak)
        return state, metrics

    out = None if mesh is None else (shardings(mesh, specs), NamedSharding(mesh, P()))
    return jax.jit(step, out_shardings=out, donate_argnums=0)

