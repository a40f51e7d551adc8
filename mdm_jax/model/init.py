"""Random params drawn by numpy into the shapes of a Flax init, in about a second instead of Flax's eager init.

    params = random_init(SpeechDecoder(cfg).init, text, tokens, seed=0)   # like init(key, text, tokens)["params"]

Same tree, shapes, dtypes (and logical-axis boxes with `boxed=True`) and the same distributions
as the modules' initializers: norm scales 1, biases 0, Whisper's sinusoidal position table,
Flax `kernel`s LeCun truncated normal, every other weight Normal(0, `layers.WEIGHT_STD`)
(`tests/test_model.py` checks this against Flax's own init, leaf by leaf). Not traceable: for
a sharded init of a large model, jit the Flax init instead.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.model.layers import WEIGHT_STD
from mdm_jax.model.whisper import sinusoids

BIAS = re.compile(r"bias|b[12qkvo]?")  # Flax's `bias`, ours: b, b1, b2, bq, bk, bv, bo
TRUNCATED_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2] (Flax's variance_scaling)


def _truncated_normal(rng, shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    while (out := np.abs(x) > 2).any():  # redraw until inside [-2, 2]
        x[out] = rng.standard_normal(int(out.sum()), dtype=np.float32)
    return x


def _draw(rng, name: str, shape: tuple) -> np.ndarray:
    if name == "scale":
        return np.ones(shape, np.float32)
    if BIAS.fullmatch(name):
        return np.zeros(shape, np.float32)
    if name == "embed_positions":
        return sinusoids(*shape)
    if name == "kernel":  # lecun_normal: fan_in = receptive field x input features
        return _truncated_normal(rng, shape) * np.float32(np.sqrt(1 / np.prod(shape[:-1])) / TRUNCATED_STD)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(WEIGHT_STD)


def random_init(init_fn, *args, seed: int = 0, boxed: bool = False):
    """`init_fn(key, *args)["params"]` (a Flax `Module.init`, or a partial of one) filled by numpy from `seed`."""
    abstract = jax.eval_shape(init_fn, jax.random.key(0), *args)["params"]
    rng = np.random.default_rng(seed)
    values = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(_draw(rng, path[-1].key, x.shape).astype(x.dtype)), nn.unbox(abstract))
    if not boxed:
        return values
    return jax.tree.map(lambda box, v: box.replace_boxed(v) if isinstance(box, nn.meta.AxisMetadata) else v,
                        abstract, values, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
