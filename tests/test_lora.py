"""LoRA as a params transform: a fresh LoRA merges to the identity, merged weights equal the unmerged
low-rank path, the merged model runs, and the factors' specs follow their weights' sharding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mdm_jax.config.model import get_config
from mdm_jax.model import lora
from mdm_jax.model.init import random_init
from mdm_jax.model.llm import LLM
from mdm_jax.model.speech_decoder import causal_mask
from mdm_jax.model.transformer import STACKED

CFG = get_config("tiny", ["llm.num_layers=2"])
TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def random_lora(params, key):
    """A LoRA whose b is random too (a fresh one has b = 0)."""
    fresh = lora.init({"llm": params["llm"]}, TARGETS, 4, key)
    leaves, tree = jax.tree.flatten(fresh)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_merge_equals_unmerged_low_rank_path_and_fresh_lora_is_identity():
    ids = jnp.array([[1, 7, 9, 4]])
    run = jax.jit(lambda p: LLM(CFG.llm).apply({"params": p["llm"]}, ids, jnp.arange(4)[None], causal_mask(1, 4),
                                               method=LLM.forward_ids)[0])  # one program, not op by op
    params = {"llm": random_init(functools.partial(LLM(CFG.llm).init, method=LLM.forward_ids), ids,
                                 jnp.arange(4)[None], causal_mask(1, 4))}
    fresh = lora.init({"llm": params["llm"]}, TARGETS, 4, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, lora.merge(params, fresh, 2.0), params)

    factors = random_lora(params, jax.random.key(1))
    merged = lora.merge(params, factors, 2.0)
    layer = lambda tree: jax.tree.map(lambda w: w[1], tree["llm"]["layers"][STACKED]["attn"])
    attn, f, new = layer(params), layer(factors), layer(merged)  # the second layer of the stack
    x = jax.random.normal(jax.random.key(2), (3, CFG.llm.d_model))
    # x W' == x W + 2 (x a) b, for an input-first weight (wq: D -> h, d) and the output one (wo: h, d -> D)
    np.testing.assert_allclose(jnp.einsum("bd,dhk->bhk", x, new["wq"]),
                               jnp.einsum("bd,dhk->bhk", x, attn["wq"]) + 2.0 * jnp.einsum("bd,dr,rhk->bhk", x,
                                                                                          f["wq"]["a"], f["wq"]["b"]),
                               atol=1e-5)
    y = jax.random.normal(jax.random.key(3), (3, CFG.llm.num_heads, CFG.llm.head_dim))
    np.testing.assert_allclose(jnp.einsum("bhk,hkd->bd", y, new["wo"]),
                               jnp.einsum("bhk,hkd->bd", y, attn["wo"]) + 2.0 * jnp.einsum("bhk,hkr,rd->bd", y,
                                                                                          f["wo"]["a"], f["wo"]["b"]),
                               atol=1e-5)
    assert merged["llm"]["embed"] is params["llm"]["embed"]  # untargeted leaves are the same objects

    assert float(jnp.abs(run(merged) - run(params)).max()) > 1e-3  # the adapter changes the model


def test_factor_specs_follow_the_weight_sharding():
    specs = {"wq": P(None, "model", None), "wo": P("model", None, None), "w_down": P("model", None)}
    factors = {"wq": {"a": jnp.zeros((8, 2)), "b": jnp.zeros((2, 4, 2))},
               "wo": {"a": jnp.zeros((4, 2, 2)), "b": jnp.zeros((2, 8))},
               "w_down": {"a": jnp.zeros((16, 2)), "b": jnp.zeros((2, 8))}}
    assert lora.specs(specs, factors) == {"wq": {"a": P(None, None), "b": P(None, "model", None)},
                                          "wo": {"a": P("model", None, None), "b": P(None, None)},
                                          "w_down": {"a": P("model", None), "b": P(None, None)}}
    # a scanned stack's weights lead with the layer axis, and so do both factors
    stacked = {STACKED: {"wq": P(None, None, "model", None)}}
    factors = {STACKED: {"wq": {"a": jnp.zeros((3, 8, 2)), "b": jnp.zeros((3, 2, 4, 2))}}}
    assert lora.specs(stacked, factors) == {STACKED: {"wq": {"a": P(None, None, None),
                                                             "b": P(None, None, "model", None)}}}


def test_unknown_target_is_an_error():
    params = {"llm": {"attn": {"wq": jnp.zeros((4, 2, 2))}}}
    with pytest.raises(ValueError, match="q_proj"):
        lora.init(params, ("wq", "q_proj"), 2, jax.random.key(0))
