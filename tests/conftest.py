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

# A program compiled before comes from disk (JAX's persistent cache): the suite recompiles the same programs
# in test files after `jax.clear_caches`, in its subprocesses and across runs; -O0 and device counts are in the key.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                                       / "mdm-jax" / "xla-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Start the quick demo in the background when a collected test needs it, and run those tests
    last: the demo (~3 min) then overlaps the rest of the suite on the second core. The Colab notebook
    makes it (tests/colab_run.py: its branch without a model trains the quick demo), then streams."""
    needs = [item for item in items if "demo_run" in getattr(item, "fixturenames", ())]
    if needs:
        items[:] = [item for item in items if item not in needs] + needs
        out = config._tmp_path_factory.mktemp("demo")
        log = open(out / "demo.log", "w")
        config.demo = out, log, subprocess.Popen([sys.executable, str(ROOT / "tests" / "colab_run.py"), str(out)],
                                                 cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def pytest_unconfigure(config):
    if hasattr(config, "demo"):
        _, log, demo = config.demo
        demo.kill()  # a no-op once it has finished
        log.close()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each test file's compiled programs after it: late in the full suite (hundreds of programs in one
    process) XLA's CPU compiler has segfaulted on programs that compile fine in a fresh process."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def demo_run(pytestconfig) -> Path:
    """The one quick demo (`experiments.demo --quick`: corpus, every stage, evaluation, model.json), run by
    the Colab notebook at collection, shared by the demo, sweep, notebook, CLI and voice page tests."""
    out, _, demo = pytestconfig.demo
    demo.wait(timeout=900)  # the notebook's own outcome is tests/test_notebook.py's to judge
    assert (out / "model.json").is_file(), (f"no model.json (executed notebook: {out / 'colab_inference.ipynb'})\n"
                                            + (out / "demo.log").read_text()[-4000:])
    return out
