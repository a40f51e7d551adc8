"""Which JAX platforms a process starts. libtpu is installed everywhere (train/aot.py compiles TPU programs
from any host), and JAX would start it at the first computation even on a host without TPU chips, where it
only prints warnings about the chips it cannot find: such a host computes on its CPUs (or its GPU plugin)."""

from __future__ import annotations

import glob
import importlib.metadata
import os

import jax


def has_tpu_chips() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def default_to_cpu() -> None:
    """Start only the CPU platform on a host with neither TPU chips nor a GPU plugin, unless the user chose
    (JAX_PLATFORMS); compiling for a TPU slice (`jax.experimental.topologies`) does not need the TPU platform."""
    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or has_tpu_chips():
        return
    if importlib.metadata.entry_points(group="jax_plugins"):  # a GPU plugin (jax[cuda]) starts as before
        return
    jax.config.update("jax_platforms", "cpu")
