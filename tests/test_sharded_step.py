"""The sharded train step equals the unsharded one on 8 fake CPU devices, for every mesh shape:
data, tensor and FSDP parallel, alone and together.

Stage I (vocab-parallel text CE through the tensor-parallel LLM, LoRA + adaptor grads): loss and
every gradient leaf. Stage II MDM (speech decoder, heads and FFN split over 'model'): the loss and
the params after 3 AdamW steps, also with two accumulated micro-batches per step on mesh (2, 2, 2),
as MTP (two extra heads, each a mean over its own ragged count) does too, and MDM and MTP on packed
rows (several answers a row, `diffusion.packing`); and splash attention (interpreted) inside the sharded
step gives the stage I and MDM loss and gradients of einsum attention unsharded.
Each run blocks on its outputs (fake CPU devices deadlock when collectives queue up).
"""

import textwrap

from processes import run_together
from small_train import small_overrides

# every head count and the text vocabulary divide 8
SMALL = small_overrides(width=64, heads=8, llm_kv_heads=8, vocab=256, units=64, batch=8)

SCRIPT = textwrap.dedent("""
    import sys, time
    t0 = time.time()
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    from mdm_jax.train.objectives import prepare
    from mdm_jax.train.optimizer import make_optimizer
    from mdm_jax.config.train import MeshConfig, get_train_config
    from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch
    from mdm_jax.model.sharding import batch_sharding, make_mesh, shardings
    from mdm_jax.train.step import init_state, make_grad_fn, make_train_step, state_specs
    from mdm_jax.model.vocalnet import random_params

    MESHES = [(4, 2), (2, 2, 2), (1, 1, 8)]  # (data, model[, fsdp])
    SMALL = sys.argv[1].split()

    def close(a, b, atol):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=atol), float(np.abs(a - b).max())

    MTP = ["stage.objective=mtp", "model.speech_decoder.mtp_modules=2"]
    params = random_params(get_train_config("tiny", SMALL + MTP).model)  # MTP's heads unused by the others

    def setup(stage):
        cfg = get_train_config("tiny", SMALL + MTP + [stage])
        opt = make_optimizer(cfg)
        state = jax.device_get(init_state(cfg, opt, jax.random.key(0), params))  # host copy: steps donate
        source = SyntheticSource(cfg)
        batches = [model_batch(next(source), cfg.model, SYNTHETIC_SPEECH_ID) for _ in range(3)]
        return cfg, opt, state, state_specs(cfg, state), batches

    def stage_one():  # loss and every gradient leaf
        cfg, opt, state, specs, batches = setup("stage.name=text")
        batch = jax.jit(lambda b: prepare(b, jax.random.key(1), cfg))(batches[0])
        (ref_loss, _), ref_grads = jax.jit(make_grad_fn(cfg))(state.trainable, state.teacher, batch, jax.random.key(2))
        trained = [g for g in jax.tree.leaves(ref_grads["lora"]) + jax.tree.leaves(ref_grads["params"]["adaptor"])]
        assert all(float(np.abs(g).max()) > 0 for g in trained[1::2]), "stage I grads vanish: the test would be vacuous"
        for shape in MESHES:
            mesh = make_mesh(MeshConfig(*shape))
            st = jax.device_put(state, shardings(mesh, specs))
            fn = jax.jit(make_grad_fn(cfg, mesh, specs))
            sharded_batch = jax.device_put(batch, batch_sharding(mesh))
            (loss, _), grads = jax.block_until_ready(fn(st.trainable, st.teacher, sharded_batch, jax.random.key(2)))
            close(loss, ref_loss, 1e-6)
            jax.tree.map(lambda a, b: close(a, b, 1e-6), grads, ref_grads)
            print("grads ok", shape, time.time() - t0, flush=True)

    def reference(cfg, opt, state, batches):  # unsharded, one batch per step
        step, ref, losses = make_train_step(cfg, opt), state, []
        for b in batches:
            ref, m = step(ref, b)
            losses.append(float(m["loss"]))
        return ref, losses

    def accumulated(stage, ref, ref_losses, batches=None, label="accumulated ok"):
        # two micro-batches per step, sharded, as the whole batches unsharded (default: setup's batches)
        cfg, opt, state, specs, synthetic = setup(stage)
        batches = synthetic if batches is None else batches
        cfg2 = get_train_config("tiny", SMALL + MTP + [stage, "optimizer.accum_steps=2"])
        mesh = make_mesh(MeshConfig(2, 2, 2))
        st, step = jax.device_put(state, shardings(mesh, specs)), make_train_step(cfg2, opt, mesh, specs)
        for b, ref_loss in zip(batches, ref_losses):
            st, m = step(st, jax.device_put(b, batch_sharding(mesh)))
            close(jax.block_until_ready(m["loss"]), ref_loss, 1e-5)
        jax.tree.map(lambda a, b: close(a, b, 2e-6), st.params, ref.params)
        print(label, stage, time.time() - t0, flush=True)

    def stage_two():  # MDM: loss of step 1 and params after 3 AdamW steps
        cfg, opt, state, specs, batches = setup("stage.objective=mdm")
        ref, ref_losses = reference(cfg, opt, state, batches)
        for shape in MESHES:
            mesh = make_mesh(MeshConfig(*shape))
            st = jax.device_put(state, shardings(mesh, specs))
            step = make_train_step(cfg, opt, mesh, specs)
            for b, ref_loss in zip(batches, ref_losses):
                st, m = step(st, jax.device_put(b, batch_sharding(mesh)))
                close(jax.block_until_ready(m["loss"]), ref_loss, 1e-5)
            jax.tree.map(lambda a, b: close(a, b, 2e-6), st.params, ref.params)
            print("steps ok", shape, time.time() - t0, flush=True)
        accumulated("stage.objective=mdm", ref, ref_losses)

    def mtp():
        cfg, opt, state, specs, batches = setup("stage.objective=mtp")
        accumulated("stage.objective=mtp", *reference(cfg, opt, state, batches))

    def packed():  # packed rows of cached LLM states (several answers a row), MDM and MTP, accumulated on (2, 2, 2)
        from mdm_jax.train.llm_states import lay_out
        rng = np.random.default_rng(0)
        for objective in ("mdm", "mtp"):
            cfg, opt, state, _, _ = setup(f"stage.objective={objective}")
            sd = cfg.model.speech_decoder
            rows = [[3 * r, 3 * r + 1, 3 * r + 2][: 1 + r % 3] for r in range(8)]  # 1-3 answers a row
            hidden = [rng.standard_normal((int(rng.integers(2, 6)), 64)).astype(np.float32) for _ in range(24)]
            units = [np.r_[rng.integers(0, 64, int(rng.integers(1, 9))), sd.eos_id].astype(np.int32) for _ in range(24)]
            batches = [lay_out(hidden, units, rows, text_len=16, unit_len=30, block_size=sd.block_size,
                               pad_id=sd.pad_id, packed=True)] * 2
            accumulated(f"stage.objective={objective}", *reference(cfg, opt, state, batches), batches, "packed ok")

    def splash():  # splash attention (interpreted) inside shard_map: the loss and grads of einsum, unsharded
        import dataclasses
        for stage in ("stage.name=text", "stage.objective=mdm"):
            cfg, opt, state, specs, batches = setup(stage)
            batch = jax.jit(lambda b: prepare(b, jax.random.key(1), cfg))(batches[0])
            (ref_loss, _), ref_grads = jax.jit(make_grad_fn(cfg))(state.trainable, state.teacher, batch,
                                                                  jax.random.key(2))
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention="splash"))
            mesh = make_mesh(MeshConfig(2, 2, 2))
            st = jax.device_put(state, shardings(mesh, specs))
            fn = jax.jit(make_grad_fn(cfg, mesh, specs))
            (loss, _), grads = jax.block_until_ready(fn(st.trainable, st.teacher, jax.device_put(
                batch, batch_sharding(mesh)), jax.random.key(2)))
            close(loss, ref_loss, 1e-5)
            jax.tree.map(lambda a, b: close(a, b, 1e-5), grads, ref_grads)
            print("splash ok", stage, time.time() - t0, flush=True)

    {"text": stage_one, "mdm": stage_two, "mtp": mtp, "packed": packed, "splash": splash}[sys.argv[2]]()
""")


def test_sharded_step_equals_unsharded_on_every_mesh():
    """The stages run side by side, one process each: their compiles are single-threaded."""
    stage_one, stage_two, mtp, packed, splash = run_together([[SCRIPT, " ".join(SMALL), s]
                                                              for s in ("text", "mdm", "mtp", "packed", "splash")], 600)
    assert stage_one.count("grads ok") == 3 and stage_two.count("steps ok") == 3, stage_one + stage_two
    assert "accumulated ok stage.objective=mdm" in stage_two, stage_two
    assert "accumulated ok stage.objective=mtp" in mtp, mtp
    assert "packed ok stage.objective=mdm" in packed and "packed ok stage.objective=mtp" in packed, packed
    assert "splash ok stage.name=text" in splash and "splash ok stage.objective=mdm" in splash, splash
