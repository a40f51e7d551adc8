"""Masking strategies of the absorbing forward process over speech units, selectable by name.

Every strategy maps clean units (b, l) and their valid mask to the same `Corruption` pytree, given
a `config.mask.MaskConfig` and the speech decoder's block size and mask id.
Padding (valid = False) is never masked and never a target; masked tokens are the targets.

The VocalNet-MDM paper's two (`bernoulli` is the default; the others are ablations):
- `bernoulli` (paper stage 2, "global Bernoulli"): one ratio γ_g ~ U(0.3, 0.8) per sequence, each
  token masked w.p. γ_g.
- `hierarchical` (paper stage 3): a fraction γ_c ~ U(0.5, 1.0) of a sequence's blocks is chosen, and
  a fraction γ_t ~ U(0.3, 1.0) of each chosen block's tokens masked; the other blocks stay clean.
  Where the paper is silent: exact counts (ceil), one γ_t per chosen block, ratios by `mask.t_sampling`.

Ablations:
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

from mdm_jax.config.mask import CORRUPTIONS, MaskConfig
from mdm_jax.config.overrides import registry
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


def bernoulli_mask(key, units, valid, cfg: MaskConfig, *, block_size: int, mask_id: int) -> Corruption:
    """units, valid: (b, l) -> Corruption; one ratio γ_g ~ U(bernoulli_min, bernoulli_max] per sequence,
    each valid token masked w.p. γ_g; ELBO weight 1/γ_g."""
    k_g, k_m = jax.random.split(key)
    gamma = sample_t(k_g, units.shape[:1], t_min=cfg.bernoulli_min, t_max=cfg.bernoulli_max,
                     method=cfg.t_sampling)[:, None]
    masked = valid & (jax.random.uniform(k_m, units.shape) < gamma)
    return _corrupt(units, masked, _level_weight(cfg, gamma, units.shape, "linear"), mask_id)  # γ_g is m itself


def hierarchical_mask(key, units, valid, cfg: MaskConfig, *, block_size: int, mask_id: int) -> Corruption:
    """units, valid: (b, l) -> Corruption; the paper's hierarchical block-wise masking.

    Of the c blocks of a sequence that hold a valid token, ceil(γ_c c) are chosen uniformly without
    replacement, γ_c ~ U(block_ratio_min, block_ratio_max]; a chosen block with v valid tokens gets
    its own γ_t ~ U(token_ratio_min, token_ratio_max] and ceil(γ_t v) ≥ 1 of them masked, uniformly.
    Unchosen blocks are clean inputs. ELBO weight: v / (masked count), as `sampler_states_mask`.
    """
    k_c, k_b, k_t, k_s = jax.random.split(key, 4)
    v = _blocks(valid, block_size, False).sum(-1)  # (b, blocks)
    has_valid = v > 0
    gamma_c = sample_t(k_c, v.shape[:1], t_min=cfg.block_ratio_min, t_max=cfg.block_ratio_max, method=cfg.t_sampling)
    num_chosen = jnp.ceil(gamma_c * has_valid.sum(-1)).astype(jnp.int32)  # (b,)
    rank = _rank(jnp.where(has_valid, jax.random.uniform(k_b, v.shape), jnp.inf))  # a uniform order of the blocks
    chosen = has_valid & (rank < num_chosen[:, None])
    gamma_t = sample_t(k_t, v.shape, t_min=cfg.token_ratio_min, t_max=cfg.token_ratio_max, method=cfg.t_sampling)
    count = jnp.where(chosen, jnp.ceil(gamma_t * v), 0).astype(jnp.int32)  # (b, blocks)
    tiebreak = jax.random.uniform(k_s, units.shape)
    return mask_least_confident(units, valid, count, tiebreak, tiebreak, cfg, block_size=block_size, mask_id=mask_id)


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
    rank = _rank(_blocks(jnp.where(valid, scores, jnp.inf), bs, jnp.inf), _blocks(tiebreak, bs, jnp.inf))
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


MASKING = registry(CORRUPTIONS, {
    "bernoulli": bernoulli_mask,
    "hierarchical": hierarchical_mask,
    "iid": iid_mask,
    "blockwise": blockwise_mask,
    "sampler_states": sampler_states_mask,
    "sampler_states_single": sampler_states_single_mask,
    "span": span_mask,
}, "mask.strategy")


def corrupt(key, units, valid, cfg: MaskConfig, *, block_size: int, mask_id: int) -> Corruption:
    """The strategy named by `cfg.strategy`: units, valid (b, l) -> Corruption."""
    if cfg.strategy not in MASKING:
        raise ValueError(f"masking strategy {cfg.strategy!r} is not a function of the units alone; "
                         f"expected one of {sorted(MASKING)}")
    return MASKING[cfg.strategy](key, units, valid, cfg, block_size=block_size, mask_id=mask_id)


def _corrupt(units, masked, weight, mask_id: int, is_target=None) -> Corruption:
    tokens = jnp.where(masked, mask_id, units).astype(units.dtype)
    return Corruption(tokens, masked if is_target is None else is_target, weight.astype(jnp.float32))


def _level_weight(cfg: MaskConfig, t, shape, schedule: str | None = None):
    """Per-token weight for level t broadcast to `shape`: ELBO weight m'(t)/m(t) of `schedule` (by
    default `cfg.schedule`), or 1."""
    return jnp.broadcast_to(elbo_weight(schedule or cfg.schedule, t) if cfg.elbo else jnp.ones_like(t), shape)


def _rank(*keys):
    """keys: arrays (..., k), the primary first -> (..., k) int32 rank of each entry along the last
    axis, 0 = the lowest; ties broken by the later keys."""
    return jnp.argsort(jnp.lexsort(keys[::-1], axis=-1), axis=-1)


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
