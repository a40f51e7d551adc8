"""Faults: a run killed with SIGKILL at a random step, resumed, then stopped with SIGTERM and resumed
again ends bit-identical to an uninterrupted run; a checkpoint restores onto another mesh shape."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
from small_train import small_overrides

from mdm_jax.config.train import CheckpointConfig
from mdm_jax.train.checkpointing import Checkpointer

SMALL = small_overrides() + ["log_every=1", "checkpoint.every=2"]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def start(workdir):
    """The CLI run; runs share an XLA compilation cache (beside the workdirs): a resume does not recompile."""
    env = dict(ENV, JAX_COMPILATION_CACHE_DIR=str(workdir.parent / "xla_cache"))
    return subprocess.Popen([sys.executable, "-m", "mdm_jax.train", "--workdir", str(workdir), *SMALL],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(proc, workdir, step, timeout=240):
    """Block until metrics.jsonl reports `step` (the run is then past that step)."""
    deadline = time.time() + timeout
    path = workdir / "metrics.jsonl"
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if path.exists() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def saved(workdir, step):
    ckpt = Checkpointer(workdir / "checkpoints", CheckpointConfig())
    state = ckpt.saved_state(step)
    ckpt.close()
    return state


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = start(ref_dir)  # the uninterrupted run, side by side with the interrupted one
    run = start(run_dir)
    kill_at = random.Random().randint(2, 5)
    wait_for_step(run, run_dir, kill_at)
    run.send_signal(signal.SIGKILL)
    run.wait()
    resumed = start(run_dir)
    wait_for_step(resumed, run_dir, kill_at + 2)
    resumed.send_signal(signal.SIGTERM)  # saves its current step, exits 0
    assert "SIGTERM: saved step" in finish(resumed)
    out = finish(start(run_dir))
    assert '"step": 10' in out
    finish(ref)
    a, b = saved(ref_dir, 10), saved(run_dir, 10)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert int(np.asarray(b["step"])) == 10


RESHARD_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from mdm_jax.train.checkpointing import Checkpointer
    from mdm_jax.train.optimizer import make_optimizer
    from mdm_jax.config.train import MeshConfig, get_train_config
    from mdm_jax.model.sharding import make_mesh, shardings
    from mdm_jax.train.step import init_state, state_specs
    from mdm_jax.train.loop import train

    workdir, overrides = sys.argv[1], sys.argv[2].split()
    cfg = get_train_config("tiny", overrides + ["mesh.data=8", "mesh.model=1", "train_steps=2"])
    train(cfg, workdir, log=lambda *_: None)
    ckpt = Checkpointer(workdir + "/checkpoints", cfg.checkpoint)
    saved = ckpt.saved_state(2)
    abstract = jax.eval_shape(lambda: init_state(cfg, make_optimizer(cfg), jax.random.key(0)))
    mesh = make_mesh(MeshConfig(data=2, model=2, fsdp=2))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                          shardings(mesh, state_specs(cfg, abstract)))
    restored = ckpt.restore(target, cfg)
    ckpt.close()
    assert restored.step == 2
    wq = restored.state.params["llm"]["layers"]["stacked"]["attn"]["wq"]  # (layers, embed, heads, head_dim)
    assert wq.sharding.spec == P(None, "fsdp", "model", None) and len(wq.sharding.device_set) == 8, wq.sharding
    flat = jax.tree_util.tree_leaves_with_path(jax.device_get(restored.state.params))
    ref = dict(jax.tree_util.tree_leaves_with_path(saved["params"]))
    for path, x in flat:
        np.testing.assert_array_equal(x, ref[path])
    print("resharded ok", len(flat))
""")


def test_restore_onto_another_mesh_shape(tmp_path):
    overrides = SMALL + ["model.llm.num_heads=4", "model.llm.num_kv_heads=4", "model.speech_decoder.num_heads=4",
                         "model.speech_decoder.num_kv_heads=4", "model.encoder.num_heads=4", "data.batch_size=8"]
    out = subprocess.run([sys.executable, "-c", RESHARD_SCRIPT, str(tmp_path), " ".join(overrides)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resharded ok" in out.stdout
