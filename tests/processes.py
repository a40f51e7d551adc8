"""Python scripts run side by side as processes (multi-process and fake-device tests: JAX settings
must be fixed before it starts)."""

import os
import subprocess
import sys


def run_together(argvs: list[list[str]], timeout: float) -> list[str]:
    """`python -c SCRIPT args...` for each argv, all at once on the CPU -> their stdouts; a failed
    process fails the test with the tail of its output, and none outlives the call."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for argv in argvs]
    outs = []
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    return [out for out, _ in outs]
