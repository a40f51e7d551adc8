"""Model building blocks and the VocalNet composition (f32 unless stated)."""

import functools
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.tokenizer import SPEECH_PLACEHOLDER
from mdm_jax.config.model import REMAT_POLICIES, Execution, get_config
from mdm_jax.convert.params_io import load_params, save_params
from mdm_jax.model.attention import Attention, dot_product_attention, init_cache
from mdm_jax.model.init import random_init
from mdm_jax.model.llm import LLM
from mdm_jax.model.rope import apply_rope, inverse_frequencies
from mdm_jax.model.speech_decoder import causal_mask
from mdm_jax.model.transformer import POLICIES, STACKED, stack_layers, unstack_layers
from mdm_jax.model.vocalnet import VocalNet, abstract_params, init_params, random_params

CFG = get_config("tiny", ["llm.num_layers=2", "encoder.num_layers=1", "speech_decoder.num_layers=1",
                          "speech_decoder.mtp_modules=1"])


def jitted(module, method=None):
    """`module.apply` as one compiled program (eager dispatch compiles every op on its own, far slower here)."""
    return jax.jit(functools.partial(module.apply, method=method))


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))  # Flax's own init: the reference of `random_params` below


def assert_same_distributions(ours, flax_params):
    """Leaf by leaf: same shapes and dtypes; Flax's fixed leaves (norms, biases, position table) equal, its random
    ones matched in mean, std and truncation (max |x| under 2.5 std exactly when Flax's is), to 6 standard errors."""
    assert jax.tree.structure(ours) == jax.tree.structure(flax_params)
    for (path, ref), x in zip(jax.tree_util.tree_leaves_with_path(flax_params), jax.tree.leaves(ours)):
        ref, x, name = np.asarray(ref), np.asarray(x), jax.tree_util.keystr(path)
        assert x.shape == ref.shape and x.dtype == ref.dtype, name
        if np.array_equal(x, ref):
            continue
        tol = 6 / np.sqrt(x.size)
        assert ref.std() > 0 and abs(x.std() / ref.std() - 1) < tol and abs(x.mean()) < tol * ref.std(), name
        assert (np.abs(x).max() < 2.5 * x.std()) == (np.abs(ref).max() < 2.5 * ref.std()), name


def test_random_params_draw_what_the_flax_initializers_draw(params):
    boxed = random_params(CFG, boxed=True)
    assert jax.tree.structure(boxed) == jax.tree.structure(abstract_params(CFG, boxed=True))
    assert_same_distributions(nn.unbox(boxed), params)
    embedding = lambda p: p["llm"]["embed"]["embedding"]
    assert not np.array_equal(embedding(random_params(CFG, seed=1)), embedding(nn.unbox(boxed)))
    # Qwen2's q/k/v biases, absent from CFG's LLaMA-style LLM
    c = CFG.llm
    attn = Attention(c.num_heads, c.num_kv_heads, c.head_dim, tuple(inverse_frequencies(c.head_dim, 1e4)), True)
    x, pos = jnp.zeros((1, 3, c.d_model)), jnp.zeros((1, 3), jnp.int32)
    flax_attn = nn.unbox(attn.init(jax.random.key(0), x, pos, causal_mask(1, 3))["params"])
    assert_same_distributions(random_init(attn.init, x, pos, causal_mask(1, 3)), flax_attn)


def test_attention_matches_naive_gqa():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 5, 4, 8)).astype(np.float32)
    k = rng.standard_normal((2, 7, 2, 8)).astype(np.float32)
    v = rng.standard_normal((2, 7, 2, 8)).astype(np.float32)
    mask = rng.random((2, 5, 7)) < 0.7
    mask[:, :, 0] = True
    ours = np.asarray(dot_product_attention(q, k, v, mask))
    ref = np.zeros_like(ours)
    for b in range(2):
        for h in range(4):
            s = q[b, :, h] @ k[b, :, h // 2].T / np.sqrt(8)  # query head h reads kv head h // 2
            s = np.where(mask[b], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            ref[b, :, h] = (p / p.sum(-1, keepdims=True)) @ v[b, :, h // 2]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_fully_masked_rows_stay_finite():
    x = jnp.ones((1, 3, 2, 4))
    out = dot_product_attention(x, x[:, :, :1], x[:, :, :1], jnp.zeros((1, 3, 3), bool))
    assert np.isfinite(np.asarray(out)).all()


def test_rope_is_a_rotation_that_depends_on_relative_position():
    inv = inverse_frequencies(16, 500_000.0, "llama3", 32.0)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 1, 1, 16)).astype(np.float32)
    rot = lambda x, p: np.asarray(apply_rope(x, jnp.array([[p]]), inv))[0, 0, 0]
    np.testing.assert_allclose(np.linalg.norm(rot(q, 123)), np.linalg.norm(q), rtol=1e-5)
    np.testing.assert_allclose(rot(q, 10) @ rot(k, 3), rot(q, 1010) @ rot(k, 1003), rtol=1e-4)


def test_llm_kv_cache_decoding_equals_full_forward(params):
    llm, p = jitted(LLM(CFG.llm), LLM.forward_ids), {"params": params["llm"]}
    ids = jax.random.randint(jax.random.key(1), (2, 12), 0, CFG.llm.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    full, _, _ = llm(p, ids, pos, causal_mask(2, 12))

    cache_len = 16
    caches = init_cache(2, cache_len, CFG.llm.num_kv_heads, CFG.llm.head_dim, layers=CFG.llm.num_layers)
    visible = lambda start, n: jnp.broadcast_to(
        jnp.arange(cache_len)[None] <= (start + jnp.arange(n))[:, None], (2, n, cache_len))
    logits, _, caches = llm(p, ids[:, :7], pos[:, :7], visible(0, 7), caches, 0)
    steps = [logits]
    for t in range(7, 12):
        logits, _, caches = llm(p, ids[:, t:t + 1], pos[:, t:t + 1], visible(t, 1), caches, t)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


def test_speech_placeholders_are_replaced_in_order(params):
    model = VocalNet(CFG)
    ids = jnp.array([[5, SPEECH_PLACEHOLDER, SPEECH_PLACEHOLDER, SPEECH_PLACEHOLDER, 9]])
    speech = jax.random.normal(jax.random.key(2), (1, 3, CFG.llm.d_model))
    x = model.apply({"params": params}, ids, speech, method=VocalNet.embed_prompt)
    table = params["llm"]["embed"]["embedding"]
    np.testing.assert_array_equal(x[0, 1:4], speech[0])
    np.testing.assert_array_equal(x[0, [0, 4]], table[jnp.array([5, 9])])


def test_whole_model_forward_shapes_and_finite(params):
    model = VocalNet(CFG)
    mel = jax.random.normal(jax.random.key(3), (2, CFG.encoder.num_mel_bins, 200))
    speech = jitted(model, VocalNet.encode_speech)({"params": params}, mel)
    assert speech.shape == (2, 200 // 2 // CFG.adaptor.downsample, CFG.llm.d_model)
    ones = jnp.ones((2, 2), jnp.int32)
    ids = jnp.concatenate([ones, jnp.full((2, 20), SPEECH_PLACEHOLDER), jnp.ones((2, 3), jnp.int32)], 1)
    tokens = jnp.full((2, 6), CFG.speech_decoder.sos_id)
    logits, mtp, states = jitted(model)({"params": params}, mel, ids, tokens)
    assert logits.shape == (2, 6, CFG.speech_decoder.output_vocab) and len(mtp) == 1
    text = ids.shape[1] if CFG.speech_decoder.text_in_prefix else 0  # the anchor Talker has no text prefix
    assert states.shape == (2, 1 + text + 6, CFG.speech_decoder.d_model)
    assert np.isfinite(np.asarray(logits)).all()


def test_bf16_compute_keeps_f32_params_and_stays_close(params):
    ids = jax.random.randint(jax.random.key(4), (2, 10), 0, CFG.llm.vocab_size)
    pos, mask = jnp.broadcast_to(jnp.arange(10), (2, 10)), causal_mask(2, 10)
    f32, _, _ = jitted(LLM(CFG.llm), LLM.forward_ids)({"params": params["llm"]}, ids, pos, mask)
    bf16, h, _ = jitted(LLM(CFG.llm, jnp.bfloat16), LLM.forward_ids)({"params": params["llm"]}, ids, pos, mask)
    assert h.dtype == jnp.bfloat16 and bf16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    np.testing.assert_allclose(bf16, f32, atol=0.05 * float(jnp.abs(f32).max()))


def test_every_remat_policy_and_unrolling_give_identical_loss_and_grads(params):
    ids = jax.random.randint(jax.random.key(5), (2, 10), 0, CFG.llm.vocab_size)
    pos, mask = jnp.broadcast_to(jnp.arange(10), (2, 10)), causal_mask(2, 10)

    def loss(p, execution):
        logits, _, _ = LLM(CFG.llm, execution=execution).apply({"params": p}, ids, pos, mask, method=LLM.forward_ids)
        return jax.nn.logsumexp(logits, -1).mean()

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    l0, g0 = grad(params["llm"], Execution())
    assert set(POLICIES) == set(REMAT_POLICIES)
    for execution in [Execution(unroll=True), *(Execution(remat=name) for name in POLICIES)]:
        if execution.unroll:  # one module per layer: the per-layer params, gradients stacked back to compare
            l1, g1 = grad(unstack_layers(params["llm"]), execution)
            g1 = stack_layers(g1, g0)
        else:
            l1, g1 = grad(params["llm"], execution)
        np.testing.assert_allclose(l0, l1, rtol=1e-6, err_msg=str(execution))
        jax.tree.map(lambda a, b, m=str(execution): np.testing.assert_allclose(a, b, atol=1e-6, err_msg=m), g0, g1)


def test_a_stack_unstacks_into_the_per_layer_layout_and_back(params):
    """Converters name layers one by one: `unstack_layers` gives layers_0.. with each layer's slice."""
    flat = unstack_layers(params)
    wq = params["llm"]["layers"][STACKED]["attn"]["wq"]
    assert sorted(flat["llm"]["layers"]) == [f"layers_{i}" for i in range(CFG.llm.num_layers)]
    np.testing.assert_array_equal(flat["llm"]["layers"]["layers_1"]["attn"]["wq"], wq[1])
    assert "layers_0" in flat["encoder"] and "conv1" in flat["encoder"]
    back = stack_layers(flat, params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_params_saved_one_subtree_per_layer_load_stacked(params, tmp_path):
    """Exports written before the stacks were scanned (`layers_0`, ...) still load, into the stacked layout."""
    save_params(tmp_path / "old", unstack_layers(params), CFG)
    loaded, cfg = load_params(tmp_path / "old")
    assert cfg == CFG and jax.tree.structure(loaded) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


TENSOR_PARALLEL_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from mdm_jax.config.model import get_config
    from mdm_jax.config.train import MeshConfig
    from mdm_jax.model.llm import LLM
    from mdm_jax.model.sharding import BATCH, for_mesh, logical_specs, make_mesh
    from mdm_jax.model.speech_decoder import causal_mask
    from mdm_jax.model.vocalnet import random_params

    cfg = get_config("tiny", ["llm.num_layers=2"]).llm
    boxed = random_params(get_config("tiny", ["llm.num_layers=2"]), boxed=True)["llm"]
    params = jax.tree.map(lambda b: b.unbox(), boxed, is_leaf=lambda x: hasattr(x, "unbox"))
    specs = logical_specs(boxed)
    ids = jax.random.randint(jax.random.key(1), (4, 9), 0, cfg.vocab_size)
    pos, mask = jnp.broadcast_to(jnp.arange(9), (4, 9)), causal_mask(4, 9)
    fwd = lambda p, i, q, m: LLM(cfg).apply({"params": p}, i, q, m, method=LLM.forward_ids)[0]
    ref = fwd(params, ids, pos, mask)
    for shape in [(4, 1, 1), (2, 2, 1), (1, 2, 1), (1, 1, 4), (1, 2, 2)]:  # (data, model, fsdp)
        mesh = make_mesh(MeshConfig(*shape), devices=jax.devices()[: np.prod(shape)])
        in_specs = (for_mesh(specs, mesh), P(BATCH), P(BATCH), P(BATCH))
        sharded = jax.jit(jax.shard_map(fwd, mesh=mesh, in_specs=in_specs, out_specs=P(BATCH, None, "model"),
                                        check_vma=True))
        out = jax.block_until_ready(sharded(params, ids, pos, mask))
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
        print("ok", shape)
""")


def test_llm_runs_tensor_parallel_under_shard_map():
    """Megatron and FSDP layouts from the logical-axis table: same logits on 1, 2 and 4 fake CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", TENSOR_PARALLEL_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ok") == 5
