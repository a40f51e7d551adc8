"""EMA of a params pytree against its closed form."""

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.diffusion.ema import ema_update


def test_n_updates_match_the_closed_form():
    """e_n = d^n e_0 + (1 - d) Σ_t d^(n-1-t) p_t, leaf by leaf, with a traced decay under jit."""
    rng = np.random.default_rng(0)
    shapes = {"layer": {"w": (3, 4), "b": (4,)}, "head": [(2, 2), ()]}
    draw = lambda: jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shapes,
                                is_leaf=lambda s: isinstance(s, tuple))
    e0, params, decay = draw(), [draw() for _ in range(7)], 0.8
    step = jax.jit(ema_update)
    ema = e0
    for p in params:
        ema = step(ema, p, jnp.float32(decay))
    n = len(params)
    expected = jax.tree.map(
        lambda e, *ps: decay**n * np.float64(e) + (1 - decay) * sum(decay ** (n - 1 - t) * np.float64(p)
                                                                    for t, p in enumerate(ps)), e0, *params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ema, expected)
    assert jax.tree.structure(ema) == jax.tree.structure(e0)


def test_limits_and_dtype():
    ema, params = {"w": jnp.ones((2, 2), jnp.float32)}, {"w": jnp.full((2, 2), 3.0, jnp.bfloat16)}
    np.testing.assert_array_equal(ema_update(ema, params, 1.0)["w"], ema["w"])  # decay 1: frozen
    np.testing.assert_array_equal(ema_update(ema, params, 0.0)["w"], 3.0)  # decay 0: a copy of params
    out = ema_update(ema, params, 0.9)["w"]
    assert out.dtype == jnp.float32  # a float32 EMA of bfloat16 params keeps its precision
    np.testing.assert_allclose(out, 0.9 * 1.0 + 0.1 * 3.0, rtol=1e-6)
