"""The Apache-2.0 `s3tokenizer` package (0.3.0: CosyVoice2's speech_tokenizer_v2 and v3 in PyTorch, its mel
front end and its ONNX -> torch renaming) as the parity reference for `mdm_jax.model.s3_tokenizer`.

Its `utils` imports torchaudio at module level, for `load_audio` alone; torchaudio has no build for this
torch (2.13), so a stand-in module whose every use raises takes its place. No reference computation
reads it: audio reaches the reference as arrays.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def reference():
    """The `s3tokenizer` package, or skip saying what is missing. The torchaudio stand-in is in `sys.modules`
    only while the package imports (its modules keep their reference), so other libraries asking for torchaudio
    later (transformers does) still find none."""
    for name in ("torch", "s3tokenizer", "onnx", "einops"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"parity reference needs {name!r}: run `make setup` (installs s3tokenizer --no-deps and "
                        f"the parity extra)")
    if "s3tokenizer" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
        return importlib.import_module("s3tokenizer")
    stand_in = types.ModuleType("torchaudio")

    def unavailable(name):
        raise AttributeError(f"torchaudio.{name}: the s3tokenizer reference used torchaudio, not installed here")

    stand_in.__getattr__ = unavailable
    sys.modules["torchaudio"] = stand_in
    try:
        return importlib.import_module("s3tokenizer")
    finally:
        del sys.modules["torchaudio"]
