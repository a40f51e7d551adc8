"""What the last speech block holds after EOS (`mask.after_eos`), for the block-diffusion objectives.

The sampler decodes whole blocks: the positions of the last block after EOS are masked inputs it
sees and predicts like any other. `pad` (the default) leaves them padding in training: never seen,
never a target. `eos` (LLaDA's fill) repeats EOS to the end of its block and trains those
positions like any unit, so the block the sampler meets at the end of speech is a trained state.
Measured (docs/talker_quality.md): with length-bucketed batches both end speech on time,
and `pad` scored higher; the 10-20 % overlong speech came from fixed-shape batches, not from this.
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
