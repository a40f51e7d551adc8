"""The optimizer of a stage: AdamW, warmup + cosine, global-norm clipping, weight-decay and freezing masks.

The optimizer sees the whole trainable pytree `{'params': model params, 'lora': LoRA factors}`;
what a stage trains is a mask over it (`trainable`), applied with `optax.multi_transform`
(frozen leaves get `set_to_zero` and no optimizer state), never by moving params around.
"""

from __future__ import annotations

import jax
import optax

from mdm_jax.config.train import OptimizerConfig, StageConfig, TrainConfig
from mdm_jax.model.transformer import layer_axes

TRAINS = {  # stage -> top-level subtrees that train
    "text": (("params", "adaptor"), ("lora",)),  # stage I: adaptor + LoRA; encoder and LLM weights frozen
    "speech": (("params", "speech_decoder"),),  # stage II: the speech decoder alone
    "distill": (("params", "speech_decoder"),),
}
NO_DECAY = ("embedding", "embed_positions", "bq", "bk", "bv")  # matrices that are embeddings or biases


def _names(path) -> tuple[str, ...]:
    return tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)


def trainable(tree, stage: StageConfig):
    """Bool pytree: True where `stage` trains the leaf."""
    prefixes = TRAINS[stage.name] + ((("params", "llm"),) if stage.name == "text" and stage.train_llm else ())
    return jax.tree_util.tree_map_with_path(lambda p, _: any(_names(p)[: len(q)] == q for q in prefixes), tree)


def partition(tree, stage: StageConfig):
    """(trained part, frozen part): the same tree with None where the leaf belongs to the other part.

    Gradients are taken with respect to the trained part only, so frozen weights (an 8B LLM in
    stage II) never get gradient buffers.
    """
    mask = trainable(tree, stage)
    return (jax.tree.map(lambda x, t: x if t else None, tree, mask),
            jax.tree.map(lambda x, t: None if t else x, tree, mask))


def combine(trained, frozen):
    """Inverse of `partition`."""
    return jax.tree.map(lambda t, f: f if t is None else t, trained, frozen, is_leaf=lambda x: x is None)


def decays(tree):
    """Bool pytree: weight decay on matrices only (norms and biases are 1-D per layer; embeddings excluded by name)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x.ndim - layer_axes(_names(p)) >= 2 and _names(p)[-1] not in NO_DECAY, tree)


def learning_rate(cfg: OptimizerConfig, steps: int) -> optax.Schedule:
    """Linear warmup over `warmup`·steps, then cosine to `final_lr`·lr at `steps`."""
    warmup = max(1, round(cfg.warmup * steps))
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(steps, warmup + 1), cfg.final_lr * cfg.lr)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    c = cfg.optimizer
    adamw = optax.adamw(learning_rate(c, cfg.train_steps), c.b1, c.b2, c.eps, weight_decay=c.weight_decay, mask=decays)
    train = optax.chain(optax.clip_by_global_norm(c.clip_norm), adamw) if c.clip_norm > 0 else adamw
    labels = lambda tree: jax.tree.map(lambda t: "train" if t else "frozen", trainable(tree, cfg.stage))
    return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels)
