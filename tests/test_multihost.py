"""Two processes on 127.0.0.1 (gloo CPU collectives), one device each, train data-parallel on a
(2, 1) mesh, each feeding only its own rows; every step's loss and the params after 2 steps equal
a single-process unsharded run over the whole batch."""

import socket
import textwrap

from processes import run_together
from small_train import small_overrides

SMALL = small_overrides()

SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3].split()
    from mdm_jax.config.train import get_train_config
    cfg = get_train_config("tiny", overrides + ["mesh.data=2", f"distributed.coordinator=127.0.0.1:{port}",
                                                "distributed.num_processes=2", f"distributed.process_id={pid}"])
    from mdm_jax.train.loop import initialize_distributed
    initialize_distributed(cfg.distributed)
    import numpy as np
    from mdm_jax.train.optimizer import make_optimizer
    from mdm_jax.train.data import SYNTHETIC_SPEECH_ID, SyntheticSource, model_batch
    from mdm_jax.model.sharding import batch_sharding, make_mesh, shardings
    from mdm_jax.train.step import init_state, make_train_step, state_specs

    assert jax.process_count() == 2 and jax.device_count() == 2
    opt = make_optimizer(cfg)
    make = lambda: init_state(cfg, opt, jax.random.key(0))
    specs = state_specs(cfg, jax.eval_shape(make))
    mesh = make_mesh(cfg.mesh)
    state = jax.jit(make, out_shardings=shardings(mesh, specs))()
    step = make_train_step(cfg, opt, mesh, specs)
    local = SyntheticSource(cfg, process_index=pid, process_count=2)  # this process's rows only
    losses = []
    for _ in range(2):
        batch = model_batch(next(local), cfg.model, SYNTHETIC_SPEECH_ID)
        assert batch["mel"].shape[0] == 2
        batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh), x), batch)
        state, m = step(state, batch)
        losses.append(float(m["loss"]))

    if pid == 0:  # the single-process reference on this process's own device: whole batch, no mesh
        ref, ref_step, whole = jax.jit(make)(), make_train_step(cfg, opt), SyntheticSource(cfg)
        for loss in losses:
            ref, m = ref_step(ref, model_batch(next(whole), cfg.model, SYNTHETIC_SPEECH_ID))
            np.testing.assert_allclose(loss, float(m["loss"]), rtol=1e-5)
        got = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=2e-6), got, ref.params)
    print("multihost ok", pid, losses, flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_data_parallel_equals_single_process():
    port = str(free_port())
    for out in run_together([[SCRIPT, str(i), port, " ".join(SMALL)] for i in range(2)], 300):
        assert "multihost ok" in out
