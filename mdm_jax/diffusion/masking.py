"""Masking strategies of the absorbing forward process over speech units, selectable by name.

Every strategy maps clean units (b, l) and their valid mask to the same `Corruption` pytree, given
a `config.mask.MaskConfig` and the speech decoder's block size and mask id.
Padding (valid = False) is never masked and never a target; masked tokens are the targets.

- `iid`: one t per sequence, each token masked w.p. m(t) (LLaDA, TtT).
- `blockwise`: one t per block of `block_size` tokens (BD3-LM).
- `sampler_states`: every block is a noised target block of the vectorised [x_t ; x_0] layout; its
  masked count is a state the sampler visits, n_j of `step_schedule` with j uniform in 0..S-1;
  the masked tokens are uniform, or the least confident under caller-supplied scores.
- `sampler_states_confidence`: `sampler_states` with the model's scores, drawn in two halves (the
  levels with the batch, the tokens inside the loss from the decoder's confidence): see `train.objectives`.
- `sampler_states_single`: the same noise on one uniformly chosen target block; earlier blocks
  clean, later blocks fully masked but not targets (the sampler's view, non-vectorised layout).
- `span`: MAGNeT-style spans of `span_length` tokens covering a fraction m(t) in expectation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange, repeat
from flax import struct

from mdm_jax.config.mask import MaskConfig
from mdm_jax.diffusion.schedules import elbo_weight, mask_prob, sample_t, step_schedule


@struct.dataclass
class Corruption:
    tokens: jax.Array  # (b, l) int32: the units with the mask id at masked positions
    is_target: jax.Array  # (b, l) bool: masked valid positions, where the loss is taken
    weight: jax.Array  # (b, l) float32: per-token loss weight (ELBO weight, or 1)


def iid_mask(key, units, valid, cfg: MaskConfig, *, block_size: int, mask_id: int) -> Corruption:
    """units, valid: (b, l) -> Corruption; one level t per sequence."""
    k_t, k_m = jax.random.split(key)
    t = sample_t(k_t, units.shape[:1], t_min=cfg.t_min, t_max=cfg.t_max, method=cfg.t_sampling)[:, None]
    masked = valid & (jax.random.uniform(k_m, units.shape) < mask_prob(cfg.schedule, t))
    return _corrupt(units, masked, _level_weight(cfg, t, units.shape), mask_id)


def blockwise_mask(key, units, valid, cfg: MaskConfig, *, block_size: int, mask_id: int) -> Corruption:
    """units, valid: (b, l) -> Corruption; one level t per block of `block_size` tokens."""
    k_t, k_m = jax.random.split(key)
    b, length = units.shape
    num_blocks = -(-length // block_size)
    t = sample_t(k_t, (b, num_blocks), t_min=cfg.t_min, t_max=cfg.t_max, method=cfg.t_sampling)
    t = _per_token(t, block_size, length)
    masked = valid & (jax.random.uniform(k_m, units.shape) < mask_prob(cfg.schedule, t))
    return _corrupt(units, masked, _level_weight(cfg, t, units.shape), mask_id)


def sampler_states_mask(key, units, valid, cfg: MaskConfig, scores=None, *, block_size: int,
                        mask_id: int) -> Corruption:
    """units, valid: (b, l); scores: (b, l) confidences or None (uniform) -> Corruption.

    Each block independently gets step j ~ U{0..S-1} and keeps n_j tokens masked: the n_j with
    the lowest score. A last block with v < B valid tokens keeps ceil(n_j v / B). ELBO weight:
    v / (masked count), i.e. B / n_j for a full block, so each block's weights sum to v.
    """
    count, tiebreak = sampler_state_levels(key, valid, cfg, block_size=block_size)
    return mask_least_confident(units, valid, count, tiebreak if scores is None else scores, tiebreak, cfg,
                                block_size=block_size, mask_id=mask_id)


def sampler_state_levels(key, valid, cfg: MaskConfig, *, block_size: int):
    """The random half of `sampler_states`: valid (b, l) -> (count (b, blocks) int32 tokens each block
    keeps masked, tiebreak (b, l) float32 uniform). `sampler_states_confidence` draws these with the
    batch and picks the tokens later from the model's scores."""
    k_j, k_s = jax.random.split(key)
    bs = block_size
    n = jnp.asarray(step_schedule(bs, cfg.denoise_steps, cfg.schedule))
    v = _blocks(valid, bs, False).sum(-1)  # (b, blocks)
    n_j = n[jax.random.randint(k_j, v.shape, 0, cfg.denoise_steps)]
    return (n_j * v + bs - 1) // bs, jax.random.uniform(k_s, valid.shape)  # ceil(n_j v / B), = n_j for a full block


def mask_least_confident(units, valid, count, scores, tiebreak, cfg: MaskConfig, *, block_size: int,
                         mask_id: int) -> Corruption:
    """Masks the `count` (b, blocks) valid tokens of each block with the lowest `scores` (b, l),
    ties broken by the lowest `tiebreak` (b, l); ELBO weight as `sampler_states_mask`."""
    bs, length = block_size, units.shape[1]
    v = _blocks(valid, bs, False).sum(-1)  # (b, blocks)
    ranked = _blocks(jnp.where(valid, scores, jnp.inf), bs, jnp.inf)
    order = jnp.lexsort((_blocks(tiebreak, bs, jnp.inf), ranked), axis=-1)  # last key primary
    rank = jnp.argsort(order, axis=-1)  # 0 = least confident
    masked = valid & _unblock(rank < count[..., None], length)
    block_weight = v / jnp.maximum(count, 1) if cfg.elbo else jnp.ones_like(v, jnp.float32)
    return _corrupt(units, masked, _per_token(block_weight, bs, length), mask_id)


def sampler_states_single_mask(key, units, valid, cfg: MaskConfig, scores=None, *, block_size: int,
                             mask_id: int) -> Corruption:
    """units, valid: (b, l) -> Corruption with one noised target block per sequence.

    The target block is uniform among blocks holding a valid token; blocks before it are clean,
    blocks after it fully masked (inputs only, not targets), the target noised as `sampler_states`.
    """
    k_b, k_h = jax.random.split(key)
    bs = block_size
    noised = sampler_states_mask(k_h, units, valid, cfg, scores, block_size=block_size, mask_id=mask_id)
    has_valid = _blocks(valid, bs, False).any(-1)  # (b, blocks)
    target = jnp.argmax(jnp.where(has_valid, jax.random.uniform(k_b, has_valid.shape), -1.0), -1)
    block = jnp.arange(units.shape[1]) // bs
    is_target = noised.is_target & (block == target[:, None])
    masked = is_target | (valid & (block > target[:, None]))
    return _corrupt(units, masked, noised.weight, mask_id, is_target)


def span_mask(key, units, valid, cfg: MaskConfig, *, block_size: int, mask_id: int) -> Corruption:
    """units, valid: (b, l) -> Corruption masking spans of `span_length` tokens.

    Span starts are Bernoulli(p) over all l + span - 1 start positions (spans may begin before the
    sequence), p = 1 - (1 - m(t))^(1/span), so every token is masked with probability exactly m(t).
    Masks are not independent across tokens, so the ELBO weight is only a heuristic here; MAGNeT
    trains unweighted (`elbo=False`).
    """
    k_t, k_s = jax.random.split(key)
    b, length = units.shape
    span = cfg.span_length
    t = sample_t(k_t, (b,), t_min=cfg.t_min, t_max=cfg.t_max, method=cfg.t_sampling)[:, None]
    p = 1.0 - (1.0 - mask_prob(cfg.schedule, t)) ** (1.0 / span)
    starts = jax.random.uniform(k_s, (b, length + span - 1)) < p
    covered = jnp.cumsum(jnp.pad(starts, ((0, 0), (1, 0))), axis=-1)  # token i: starts i..i+span-1
    masked = valid & (covered[:, span:] - covered[:, :length] > 0)
    return _corrupt(units, masked, _level_weight(cfg, t, units.shape), mask_id)


MASKING = {
    "iid": iid_mask,
    "blockwise": blockwise_mask,
    "sampler_states": sampler_states_mask,
    "sampler_states_single": sampler_states_single_mask,
    "span": span_mask,
}


def corrupt(key, units, valid, cfg: MaskConfig, *, block_size: int, mask_id: int) -> Corruption:
    """The strategy named by `cfg.strategy`: units, valid (b, l) -> Corruption."""
    if cfg.strategy not in MASKING:
        raise ValueError(f"masking strategy {cfg.strategy!r} is not a function of the units alone; "
                         f"expected one of {sorted(MASKING)}")
    return MASKING[cfg.strategy](key, units, valid, cfg, block_size=block_size, mask_id=mask_id)


def _corrupt(units, masked, weight, mask_id: int, is_target=None) -> Corruption:
    tokens = jnp.where(masked, mask_id, units).astype(units.dtype)
    return Corruption(tokens, masked if is_target is None else is_target, weight.astype(jnp.float32))


def _level_weight(cfg: MaskConfig, t, shape):
    """Per-token weight for level t broadcast to `shape`: ELBO weight m'(t)/m(t), or 1."""
    return jnp.broadcast_to(elbo_weight(cfg.schedule, t) if cfg.elbo else jnp.ones_like(t), shape)


def _blocks(x, block_size: int, fill):
    """(b, l) -> (b, blocks, block_size), the last block padded with `fill`."""
    pad = -x.shape[1] % block_size
    return rearrange(jnp.pad(x, ((0, 0), (0, pad)), constant_values=fill), "b (n k) -> b n k", k=block_size)


def _unblock(x, length: int):
    """(b, blocks, block_size) -> (b, length)."""
    return rearrange(x, "b n k -> b (n k)")[:, :length]


def _per_token(x, block_size: int, length: int):
    """(b, blocks) -> (b, length): each block's value on its tokens."""
    return repeat(x, "b n -> b (n k)", k=block_size)[:, :length]
