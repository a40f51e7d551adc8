"""FunASR's CAM++ (the MIT `funasr` package, 1.4.16, installed with --no-deps by `make setup`:
funasr/models/campplus/, from 3D-Speaker, the model CosyVoice2 ships as campplus.onnx) and its Kaldi fbank
(`funasr.utils.fbank`: torchaudio.compliance.kaldi.fbank where torchaudio imports, else the C++ kaldi-native-fbank)
as the parity reference for `mdm_jax.vocoder.campplus`.

`import funasr` imports every one of its submodules (ASR, TTS, training) at once, so the package is stood in for
by a module that points at its folder (its submodules import, its __init__ does not run). The model file imports
`funasr.utils.load_utils`, whose `kaldiio` (Kaldi ark reading) is not installed: a stand-in takes its place while
the model imports. No reference computation reads either.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def reference():
    """(funasr.models.campplus.model, funasr.utils.fbank), or skip saying what is missing."""
    for name in ("torch", "funasr", "onnx", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"parity reference needs {name!r}: run `make setup` (installs funasr --no-deps and the "
                        f"parity extra)")
    if importlib.util.find_spec("torchaudio") is None and importlib.util.find_spec("kaldi_native_fbank") is None:
        pytest.skip("the reference fbank needs torchaudio or kaldi-native-fbank: run `make setup`")
    if "funasr" not in sys.modules:
        spec = importlib.util.find_spec("funasr")
        package = types.ModuleType("funasr")
        package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec  # find_spec works again
        sys.modules["funasr"] = package
    stand_in = importlib.util.find_spec("kaldiio") is None and "kaldiio" not in sys.modules
    if stand_in:
        sys.modules["kaldiio"] = types.ModuleType("kaldiio")
    try:
        model = importlib.import_module("funasr.models.campplus.model")
    finally:
        if stand_in:
            del sys.modules["kaldiio"]
    return model, importlib.import_module("funasr.utils.fbank")
