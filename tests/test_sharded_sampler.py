"""The block-diffusion sampler under `jax.shard_map` on the training mesh (8 fake CPU devices, in a
subprocess): requests over 'data', heads / MLP / KV cache over 'model', the same greedy tokens."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import flax.linen as nn, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, PartitionSpec as P
    from mdm_jax.decode.block_diffusion import BlockDiffusionConfig, generate
    from mdm_jax.config.model import SpeechDecoderConfig
    from mdm_jax.model.init import random_init
    from mdm_jax.model.sharding import for_mesh, logical_specs
    from mdm_jax.model.speech_decoder import SpeechDecoder

    cfg = SpeechDecoderConfig(num_units=40, d_model=64, num_heads=8, num_kv_heads=4, ffn_dim=128, prenn_layers=1,
                              num_layers=2, mtp_modules=0, block_size=5, text_per_block=2)
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.standard_normal((8, 6, 64)).astype(np.float32))
    valid = jnp.asarray(np.arange(6)[None] < rng.integers(2, 7, (8, 1)))
    streaming = jnp.asarray(rng.random(8) < 0.5)
    boxed = random_init(SpeechDecoder(cfg).init, text, jnp.zeros((8, 4), jnp.int32), boxed=True)
    specs = logical_specs(boxed)
    params = jax.tree.map(lambda p: p * 3.0 if p.ndim == 2 else p, nn.unbox(boxed))
    sampler = BlockDiffusionConfig(steps=2)
    run = lambda p, t, v, s: generate(p, t, v, s, jax.random.key(0), cfg=cfg, num_blocks=3, sampler=sampler,
                                      record_logits=True)
    ref = run(params, text, valid, streaming)
    ref_tokens, ref_logits = np.asarray(ref.tokens), np.asarray(ref.logits)
    top2 = np.sort(ref_logits, -1)[..., -2:]
    for shape in [(8, 1), (4, 2), (2, 4)]:
        mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2)
        tokens_of = lambda p, t, v, s: run(p, t, v, s).tokens
        sharded = jax.jit(jax.shard_map(tokens_of, mesh=mesh,
                                        in_specs=(for_mesh(specs, mesh), P("data"), P("data"), P("data")),
                                        out_specs=P("data"), check_vma=True))
        tokens = np.asarray(jax.block_until_ready(sharded(params, text, valid, streaming)))
        near_ties = 0
        for r in range(8):
            diff = np.flatnonzero(tokens[r] != ref_tokens[r])
            if diff.size:
                gap = top2[r, diff[0], 1] - top2[r, diff[0], 0]
                assert gap < 1e-5, f"mesh {shape} row {r}: token {diff[0]} differs, top-2 gap {gap}"
                near_ties += 1
        print(f"mesh {shape}: identical tokens, {near_ties} near-ties")
""")


def test_sharded_greedy_decoding_matches_unsharded():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout)
    assert out.stdout.count("identical tokens") == 3
