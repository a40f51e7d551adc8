"""Losses: masked diffusion (ELBO or unweighted) and VocalNet MTP (AR is its main head alone: one entry).

Logits may come in any float dtype; the softmax is taken in float32. Each loss returns
(scalar loss, metrics dict of scalars).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mdm_jax.diffusion.masking import Corruption


def cross_entropy(logits, labels):
    """logits: (..., V), labels: (...) int in [0, V) -> CE (...) float32."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def mdm_loss(logits, units, corruption: Corruption, valid, *, elbo: bool = True):
    """logits: (b, l, V) at the x_t positions; units, valid: (b, l) clean ids and validity.

    loss = Σ weight·CE·is_target / max(1, N), with N = the number of valid tokens when `elbo`
    (then each sequence contributes its ELBO estimate per token, an unbiased estimate of the
    per-token ELBO for any fixed batch), else N = the number of targets (mean CE over masked
    tokens, MaskGIT / MAGNeT; use with weight 1). Metrics: `accuracy` (argmax = unit over
    targets), `ce` (unweighted mean CE over targets), `num_targets`.
    """
    ce = cross_entropy(logits, units)
    target = corruption.is_target.astype(jnp.float32)
    num_targets = target.sum()
    norm = valid.sum() if elbo else num_targets
    loss = (corruption.weight * ce * target).sum() / jnp.maximum(1.0, norm)
    correct = (jnp.argmax(logits, axis=-1) == units).astype(jnp.float32)
    return loss, {"accuracy": _mean(correct, target), "ce": _mean(ce, target), "num_targets": num_targets}


def mtp_loss(logits, tokens, valid, *, decay: float = 0.8):
    """VocalNet MTP: CE₀ + Σ_k decay^k CE_k.

    logits: sequence of (b, l, V), entry k (0 = the main head) at position i predicting
    tokens[:, i + k + 1]; tokens, valid: (b, l). CE_k is the mean over its own valid targets.
    Metrics: `ce_k` and `accuracy_k` per head.
    """
    loss, metrics = 0.0, {}
    for k, logits_k in enumerate(logits):
        ce, correct, weight = _shifted(logits_k, tokens, valid, k + 1)
        metrics[f"ce_{k}"], metrics[f"accuracy_{k}"] = _mean(ce, weight), _mean(correct, weight)
        loss = loss + decay**k * metrics[f"ce_{k}"]
    return loss, metrics


def packed_mtp_loss(logits, units, valid, segments, index, *, decay: float = 0.8):
    """`mtp_loss` over packed rows (`diffusion.packing`).

    logits: sequence of (b, S + L, V) over `[SOS (S slots, slot s for segment s + 1)][units (L)]`,
    entry k at a segment's SOS predicting its unit k and at its unit j predicting unit j + k + 1;
    units, valid, segments, index: (b, L). CE_k is the mean over its own targets (units with index >= k).
    """
    slots, length = logits[0].shape[1] - units.shape[1], units.shape[1]
    loss, metrics = 0.0, {}
    for k, logits_k in enumerate(logits):  # the predictor of unit j: SOS if j == k, else unit j - k - 1
        source = jnp.where(index == k, segments - 1, slots + jnp.arange(length) - k - 1)
        picked = jnp.take_along_axis(logits_k, jnp.clip(source, 0, slots + length - 1)[..., None], axis=1)
        weight = (valid & (index >= k) & (segments > 0)).astype(jnp.float32)
        correct = (jnp.argmax(picked, axis=-1) == units).astype(jnp.float32)
        metrics[f"ce_{k}"] = _mean(cross_entropy(picked, units), weight)
        metrics[f"accuracy_{k}"] = _mean(correct, weight)
        loss = loss + decay**k * metrics[f"ce_{k}"]
    return loss, metrics


def _shifted(logits, tokens, valid, shift: int):
    """CE, correctness and target weight (b, l - shift) of logits[:, i] against tokens[:, i + shift]."""
    logits, targets = logits[:, : logits.shape[1] - shift], tokens[:, shift:]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return cross_entropy(logits, targets), correct, valid[:, shift:].astype(jnp.float32)


def _mean(x, weight):
    return (x * weight).sum() / jnp.maximum(1.0, weight.sum())
