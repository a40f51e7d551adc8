"""Exponential moving average of a params pytree (the EMA teacher of self-distillation).

    ema = ema_update(ema, params, decay)  # every optimizer step; ema starts as a copy of params

After n updates from e_0 with a constant decay d: e_n = d^n e_0 + (1 - d) Σ_t d^(n-1-t) p_t.
"""

from __future__ import annotations

import jax


def ema_update(ema, params, decay):
    """ema ← decay·ema + (1 - decay)·params, leaf by leaf; `decay` may be traced. Each leaf keeps
    the EMA's dtype, so a float32 EMA of bfloat16 params stays float32."""
    return jax.tree.map(lambda e, p: (e + (1.0 - decay) * (p.astype(e.dtype) - e)).astype(e.dtype), ema, params)
