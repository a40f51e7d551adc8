"""`experiments.plan_memory` compiles a sharded train step from shapes on fake devices (its own
process: the device count is set before JAX starts) and reads XLA's per-device memory plan."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.plan_memory import largest_batch

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("target", ["tpu:v5e:2x2", "cpu"])
def test_plan_of_an_fsdp_and_tensor_parallel_step(tmp_path, target):
    """On a TPU slice (libtpu's compiler, splash attention) and on fake CPU devices."""
    out = tmp_path / "plan.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "experiments.plan_memory", "--config", "tiny", "--stage", "speech",
                           "--target", target, "--mesh", "data=1,fsdp=2,model=2", "--batch", "4", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(out.read_text())
    assert plan["mesh"] == {"data": 1, "fsdp": 2, "model": 2} and plan["fits"] and plan["target"] == target
    assert 0 < plan["temporaries_gib"] and plan["peak_gib"] >= plan["arguments_gib"] > 0
    # params, Adam moments and the batch are split four ways: the arguments hold well under one f32 copy
    assert plan["arguments_gib"] * 2**30 < 0.6 * 4 * plan["params"]


def test_largest_batch_search_doubles_then_bisects_in_granules():
    tried = []

    def plan_at(batch):  # a step that fits up to 1000 rows
        tried.append(batch)
        return {"batch": batch, "fits": batch <= 1000}

    best = largest_batch(plan_at, 16, granule=16)
    assert best["fits"] and best["batch"] % 16 == 0 and 1000 - 1000 // 8 - 16 <= best["batch"] <= 1000
    assert tried[:7] == [16, 32, 64, 128, 256, 512, 1024] and len(tried) < 12
    tried.clear()
    best = largest_batch(plan_at, 4096, granule=16)  # too big a start: halved, then bisected
    assert tried[:3] == [4096, 2048, 1024] and 1000 - 1000 // 8 - 16 <= best["batch"] <= 1000
    assert largest_batch(lambda b: {"batch": b, "fits": False}, 64, granule=16) is None
