"""Fixtures shared across test files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests mostly compile: XLA CPU at -O0 (subprocesses inherit it) compiles ~1/3 faster; results differ only in rounding.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One `python -m experiments.demo --quick` run (corpus, every stage, evaluation), shared by the
    demo, sweep and notebook tests."""
    out = tmp_path_factory.mktemp("demo")
    done = subprocess.run([sys.executable, "-m", "experiments.demo", "--out", str(out), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return out
