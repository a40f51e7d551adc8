"""Speech units at 25 Hz: k-means over frame features of the answers' speech.

Features are the real Whisper tiny.en encoder's output (50 Hz) averaged over pairs of frames — the
small-scale analogue of supervised semantic speech tokens — or, without the weights, the 100 Hz
log-mel averaged over groups of four. Either way an utterance of F mel frames gets ceil(F / 4) units.

The encoder runs once per utterance, batched and jitted, on audio padded with silence to a whole
second (Whisper itself pads with silence, to 30 s; whole seconds keep the number of compiled shapes
small). Its features are cached next to the corpus; nothing here runs inside a training loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.features import HOP, SAMPLE_RATE, log_mel, num_frames
from mdm_jax.eval.asr import encode, load_asr


def num_units(num_samples: int) -> int:
    """Units for `num_samples` of 16 kHz audio: 25 Hz, the last partial frame rounded up."""
    return math.ceil(num_frames(num_samples) / 4)


def _pool(x: np.ndarray, factor: int) -> np.ndarray:
    """(T, d) -> (ceil(T / factor), d): mean over groups of `factor` frames, the last one partial."""
    groups = -(-len(x) // factor)
    padded = np.concatenate([x, np.repeat(x[-1:], groups * factor - len(x), axis=0)])  # repeat the edge
    return padded.reshape(groups, factor, -1).mean(axis=1)


def mel_features(audio: Sequence[np.ndarray], n_mels: int = 80) -> list[np.ndarray]:
    """Log-mel fallback: per utterance (ceil(F / 4), n_mels) float32."""
    return [_pool(log_mel(a, n_mels).T, 4).astype(np.float32) for a in audio]


def whisper_features(audio: Sequence[np.ndarray], asr=None, batch_size: int = 16) -> list[np.ndarray]:
    """Whisper encoder features at 25 Hz: per utterance (ceil(F / 4), d) float32.

    `asr`: a `mdm_jax.eval.asr.WhisperASR` (default: the bundled tiny.en).
    """
    asr = asr or load_asr()
    cfg = asr.encoder_config
    seconds = [max(1, math.ceil(len(a) / SAMPLE_RATE)) for a in audio]
    out: list[np.ndarray | None] = [None] * len(audio)
    for length in sorted(set(seconds)):
        same = [i for i, s in enumerate(seconds) if s == length]
        for start in range(0, len(same), batch_size):
            rows = same[start : start + batch_size]
            mel = np.zeros((batch_size, cfg.num_mel_bins, length * SAMPLE_RATE // HOP), np.float32)
            for row, i in enumerate(rows):
                padded = np.pad(audio[i], (0, length * SAMPLE_RATE - len(audio[i])))
                mel[row] = log_mel(padded, cfg.num_mel_bins)
            encoded = np.asarray(encode(cfg, asr.encoder_params, mel))  # (batch, 50 * length, d)
            for row, i in enumerate(rows):
                frames = -(-num_frames(len(audio[i])) // 2)  # the stride-2 conv: ceil(F / 2)
                out[i] = _pool(encoded[row, :frames], 2).astype(np.float32)
    return out


@functools.partial(jax.jit, static_argnums=1)
def _kmeans_pp(x: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """k-means++ seeding: each new centre drawn with probability proportional to squared distance."""
    first = x[jax.random.randint(key, (), 0, len(x))]
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    dist = jnp.sum((x - first) ** 2, axis=1)

    def add(i, carry):
        centroids, dist = carry
        new = x[jax.random.categorical(jax.random.fold_in(key, i), jnp.log(jnp.maximum(dist, 1e-30)))]
        return centroids.at[i].set(new), jnp.minimum(dist, jnp.sum((x - new) ** 2, axis=1))

    return jax.lax.fori_loop(1, k, add, (centroids, dist))[0]


@jax.jit
def assign(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """x: (n, d), centroids: (k, d) -> (n,) int32 index of the nearest centroid."""
    dist = jnp.sum(centroids**2, axis=1)[None, :] - 2.0 * x @ centroids.T  # |x|^2 is the same for every centre
    return jnp.argmin(dist, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=2)
def _lloyd(x: jax.Array, centroids: jax.Array, iterations: int) -> jax.Array:
    k = len(centroids)

    def step(_, centroids):
        a = assign(x, centroids)
        sums = jax.ops.segment_sum(x, a, k)
        counts = jax.ops.segment_sum(jnp.ones(len(x), x.dtype), a, k)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)  # empty: stay

    return jax.lax.fori_loop(0, iterations, step, centroids)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 30, max_points: int = 200_000) -> np.ndarray:
    """k-means++ then Lloyd iterations on (n, d) points (a seeded sample of `max_points` if more).

    Returns the (k, d) float32 codebook.
    """
    if len(x) < k:
        raise ValueError(f"k-means with k={k} needs at least {k} frames, got {len(x)}: build more audio or lower k")
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    x = jnp.asarray(x, jnp.float32)
    return np.asarray(_lloyd(x, _kmeans_pp(x, k, jax.random.key(seed)), iterations))
