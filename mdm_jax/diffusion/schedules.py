"""Absorbing-state noise schedules, their ELBO weights, sampling of t, and the sampler's step schedule.

At level t in (0, 1] each token is `[MASK]` with probability m(t) ("mask prob"); t = 1 is fully
masked. The same m gives the sampler's step schedule: after step j of S, a block of B tokens still
has n_j ≈ B·m(1 - j/S) masked tokens. `step_schedule` is the one definition of n_j, used by the
sampler-state masking and by the sampler.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.config.mask import T_SAMPLING
from mdm_jax.config.sampler import SCHEDULES


def mask_prob(schedule: str, t):
    """m(t): probability that a token is masked at level t (linear: t; cosine: sin(πt/2))."""
    if schedule == "linear":
        return t
    if schedule == "cosine":  # MaskGIT's cos(π/2 · progress), with progress = 1 - t
        return jnp.sin(0.5 * math.pi * t)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")


def elbo_weight(schedule: str, t):
    """m'(t) / m(t), the continuous-time ELBO weight of a masked token's CE (linear: 1/t)."""
    if schedule == "linear":
        return 1.0 / t
    if schedule == "cosine":
        return 0.5 * math.pi / jnp.tan(0.5 * math.pi * t)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")


def sample_t(key, shape, *, t_min: float = 0.0, t_max: float = 1.0, method: str = "antithetic"):
    """Levels t in (t_min, t_max], drawn jointly over all `shape` entries (e.g. (b,) or (b, blocks)).

    iid: independent uniforms. antithetic: pairs (u, 1 - u). stratified: one uniform in each of
    n = prod(shape) equal strata, strata randomly permuted over the entries. Each entry is
    marginally uniform in all three; t > t_min always, so 1/t is finite even for t_min = 0.
    A window other than (0, 1] (clipped schedule) trades the exact ELBO for lower variance.
    """
    n = math.prod(shape)
    k_u, k_perm = jax.random.split(key)
    if method == "iid":
        u = jax.random.uniform(k_u, (n,))
    elif method == "antithetic":
        half = jax.random.uniform(k_u, ((n + 1) // 2,))
        u = jnp.concatenate([half, 1.0 - half])[:n]
    elif method == "stratified":
        u = (jax.random.permutation(k_perm, n) + jax.random.uniform(k_u, (n,))) / n
    else:
        raise ValueError(f"unknown t sampling {method!r}; expected one of {T_SAMPLING}")
    u = jnp.where(u > 0.0, u, 1.0)  # u = 0 would give t = 0: no mask and an infinite weight
    return (t_min + (t_max - t_min) * u).reshape(shape)


def step_schedule(block_size: int, num_steps: int, schedule: str = "linear") -> np.ndarray:
    """n: (S + 1,) int32, tokens of a B-token block still masked after step j of S steps.

    n_0 = B, n_S = 0, non-increasing, and n_j ≥ 1 for j < S. Where S ≤ B it is strictly
    decreasing (every step unmasks ≥ 1 token): one token per remaining step is reserved and the
    other B - S follow the schedule. Linear gives exactly n_j = ceil(B (S - j) / S).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    j = np.arange(num_steps + 1)
    reserved = num_steps - j if num_steps <= block_size else np.zeros_like(j)
    with jax.ensure_compile_time_eval():  # static: a numpy constant even when called under jit
        rest = (block_size - reserved[0]) * np.asarray(mask_prob(schedule, 1.0 - j / num_steps), np.float64)
    return (reserved + np.ceil(rest - 1e-4)).astype(np.int32)  # tolerance: float32 error must not add a token
