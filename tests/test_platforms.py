"""A host without TPU chips computes on its CPUs without starting libtpu (which is installed for compiling
TPU programs, `train/aot.py`): no warnings about chips it cannot find."""

import os
import subprocess
import sys

import pytest

from mdm_jax import platforms


@pytest.mark.skipif(platforms.has_tpu_chips(), reason="a TPU host starts its chips")
def test_a_host_without_chips_starts_cpu_only_and_quietly():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"  # else another process holding libtpu's lock would hide its start-up
    code = "import jax, mdm_jax; jax.numpy.ones(1).block_until_ready(); print(jax.default_backend())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cpu" and "TPU" not in out.stderr, out.stderr[-500:]
    chosen = subprocess.run([sys.executable, "-c", code.replace("import jax,", "import jax; jax.config.update("
                             "'jax_platforms', 'cpu,tpu');")], env=env, capture_output=True, text=True)
    assert "TPU" in chosen.stderr or chosen.returncode != 0  # the user's choice stands: libtpu starts, and warns
