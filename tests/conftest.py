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


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Start the quick demo in the background when a collected test needs it, and run those tests
    last: the demo (~3 min) then overlaps the rest of the suite on the second core."""
    needs = [item for item in items if "demo_run" in getattr(item, "fixturenames", ())]
    if needs:
        items[:] = [item for item in items if item not in needs] + needs
        out = config._tmp_path_factory.mktemp("demo")
        log = open(out / "demo.log", "w")
        config.demo = out, log, subprocess.Popen([sys.executable, "-m", "experiments.demo", "--out", str(out),
                                                  "--quick"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def pytest_unconfigure(config):
    if hasattr(config, "demo"):
        _, log, demo = config.demo
        demo.kill()  # a no-op once it has finished
        log.close()


@pytest.fixture(scope="session")
def demo_run(pytestconfig) -> Path:
    """The one `python -m experiments.demo --quick` run (corpus, every stage, evaluation) started at
    collection, shared by the demo, sweep and notebook tests."""
    out, _, demo = pytestconfig.demo
    returncode = demo.wait(timeout=900)
    assert returncode == 0, (out / "demo.log").read_text()[-4000:]
    return out
