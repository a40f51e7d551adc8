"""`decode.sharded.generate` on the training mesh (8 fake CPU devices, in a subprocess): requests
over 'data', heads / MLP / KV cache over 'model', the same greedy tokens as the unsharded sampler,
for block diffusion and AR."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import dataclasses
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import flax.linen as nn, jax.numpy as jnp, numpy as np
    from mdm_jax.config.model import ModelConfig, SpeechDecoderConfig
    from mdm_jax.config.sampler import SamplerConfig
    from mdm_jax.config.train import MeshConfig
    from mdm_jax.decode import block_diffusion, sharded, speech
    from mdm_jax.model.init import random_init
    from mdm_jax.model.sharding import make_mesh
    from mdm_jax.model.speech_decoder import SpeechDecoder
    from mdm_jax.model.transformer import stack_layers, unstack_layers

    sd = SpeechDecoderConfig(talker="vocalnet",
                             num_units=40, d_model=64, num_heads=8, num_kv_heads=4, ffn_dim=128, prenn_layers=1,
                             num_layers=2, mtp_modules=0, block_size=5, text_per_block=2)
    cfg = ModelConfig(speech_decoder=sd, sampler=SamplerConfig(denoise_steps=2))
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.standard_normal((8, 6, 64)).astype(np.float32))
    valid = jnp.asarray(np.arange(6)[None] < rng.integers(2, 7, (8, 1)))
    streaming = jnp.asarray(rng.random(8) < 0.5)
    params = random_init(SpeechDecoder(sd).init, text, jnp.zeros((8, 4), jnp.int32))
    params = stack_layers(jax.tree.map(lambda p: p * 3.0 if p.ndim == 2 else p, unstack_layers(params)), params)
    params = jax.tree.map(jnp.asarray, params)
    key = jax.random.key(0)
    ref = block_diffusion.generate(params, text, valid, streaming, key, cfg=cfg, num_blocks=3, record_logits=True)
    ref_tokens, ref_logits = np.asarray(ref.tokens), np.asarray(ref.logits)
    top2 = np.sort(ref_logits, -1)[..., -2:]
    ar = dataclasses.replace(cfg, sampler=SamplerConfig(method="ar"))
    ar_tokens = np.asarray(speech.generate(params, text, valid, streaming, key, cfg=ar, num_blocks=3).tokens)
    for shape in [(8, 1), (4, 2), (2, 4)]:
        mesh = make_mesh(MeshConfig(*shape))
        out = jax.block_until_ready(sharded.generate(params, text, valid, streaming, key, cfg=cfg, num_blocks=3,
                                                     mesh=mesh))
        tokens = np.asarray(out.tokens)
        near_ties = 0
        for r in range(8):
            diff = np.flatnonzero(tokens[r] != ref_tokens[r])
            if diff.size:
                gap = top2[r, diff[0], 1] - top2[r, diff[0], 0]
                assert gap < 1e-5, f"mesh {shape} row {r}: token {diff[0]} differs, top-2 gap {gap}"
                near_ties += 1
        assert int(out.forwards) == int(ref.forwards)
        ar_out = jax.block_until_ready(sharded.generate(params, text, valid, streaming, key, cfg=ar, num_blocks=3,
                                                        mesh=mesh))
        np.testing.assert_array_equal(np.asarray(ar_out.tokens), ar_tokens)
        print(f"mesh {shape}: identical tokens, {near_ties} near-ties")
""")


def test_sharded_greedy_decoding_matches_unsharded():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout)
    assert out.stdout.count("identical tokens") == 3
