"""Test-session settings shared by every test and the subprocesses they start."""

import os
from pathlib import Path

# Compiled programs are reused across the processes the tests start (CLI runs, fake-device meshes,
# resume after a kill): a second process compiling the same train step loads it instead (~2x faster).
# Only programs that took >= 0.5 s to compile are stored, so the cache stays a handful of files.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
