"""Rotary position embeddings (LLaMA layout: rotate the two halves), with llama3 frequency scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 8.0,
                        low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                        original_max_positions: int = 8192) -> np.ndarray:
    """(head_dim // 2,) float32 inverse frequencies; "llama3" stretches the long wavelengths."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim)
    if scaling == "none":
        return inv.astype(np.float32)
    if scaling != "llama3":
        raise ValueError(f"unknown rope scaling {scaling!r} (expected 'none' or 'llama3')")
    wavelen = 2 * math.pi / inv
    low_wavelen = original_max_positions / low_freq_factor
    high_wavelen = original_max_positions / high_freq_factor
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x, positions, inv_freq):
    """x: (b, t, h, d); positions: (b, t) int -> x rotated, computed in float32, returned in x.dtype."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # (b, t, d/2)
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)
