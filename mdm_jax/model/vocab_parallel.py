"""Cross-entropy over a vocabulary split across the 'model' axis (Megatron vocab-parallel head).

Each device holds logits for its slice of the vocabulary; the max is a `pmax` and the softmax
denominator and the label's logit are `psum`s over 'model', so no device ever holds all V logits.
With 'model' unbound (or of size 1) this is the ordinary cross-entropy.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from mdm_jax.model.sharding import MODEL, model_axis_index, model_axis_size, psum_model


def cross_entropy(logits, labels):
    """logits: (..., V / tp) this device's slice; labels: (...) global ids -> (ce (...), correct (...) bool).

    `correct`: the label's logit is the global maximum (argmax accuracy, ties counted correct).
    """
    logits = logits.astype(jnp.float32)
    v = logits.shape[-1]
    split = model_axis_size() > 1
    top = lax.stop_gradient(logits.max(-1))  # the max only stabilises the softmax: no gradient through it
    top = lax.pmax(top, MODEL) if split else top
    log_z = jnp.log(psum_model(jnp.exp(logits - top[..., None]).sum(-1))) + top
    local_ids = labels - model_axis_index() * v if split else labels
    mine = (local_ids >= 0) & (local_ids < v)
    picked = jnp.take_along_axis(logits, jnp.clip(local_ids, 0, v - 1)[..., None], axis=-1)[..., 0]
    picked = psum_model(jnp.where(mine, picked, 0.0))
    return log_z - picked, picked >= top
