"""What the last speech block holds after EOS (`mask.after_eos`), for the block-diffusion objectives.

The sampler decodes whole blocks: the positions of the last block after EOS are masked inputs it
sees and predicts like any other. `pad` (what the speech objectives had before) leaves them padding
in training: never seen, never a target, so the model never learns what follows EOS inside a
block, and its speech ran 10-20 % long. `eos` (LLaDA's fill, the default) repeats EOS to the end of
its block and trains those positions like any unit: the block the sampler meets at the end of
speech is a state the model was trained on.
"""

from __future__ import annotations

import jax.numpy as jnp


def fill_after_eos(units, valid, *, block_size: int, eos_id: int):
    """units, valid (b, L), L whole blocks, each valid row ending in EOS -> (units, valid) with EOS
    repeated to the end of the block holding the first EOS, those positions valid."""
    position = jnp.arange(units.shape[1])
    eos = jnp.argmax((units == eos_id) & valid, axis=1)  # (b,)
    has_eos = jnp.any((units == eos_id) & valid, axis=1)
    block_end = (eos // block_size + 1) * block_size
    fill = has_eos[:, None] & (position > eos[:, None]) & (position < block_end[:, None])
    return jnp.where(fill, eos_id, units), valid | fill
