"""CosyVoice2's PyTorch code (the Apache-2.0 `cosyvoice2-eu` package, installed with --no-deps by
`make setup`) as the parity reference for `mdm_jax.vocoder.cosyvoice_flow` and `mdm_jax.vocoder.hift`.

The model files need only torch, scipy, einops, diffusers, conformer and omegaconf. Two modules they
import for bookkeeping would pull in the LLM, the CLI and the training stack (torchaudio, hydra,
lightning): `cosyvoice.utils.class_utils` (a name -> class registry), `matcha.utils` (a package
whose __init__ imports hydra, for a logger) and, for `cosyvoice.cli.model`'s streaming token2wav,
`cosyvoice.utils.file_utils` (torchaudio, TensorRT and vLLM export). They are stood in for here by the
same classes / the one submodule / unused names; no reference computation is replaced.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types

import pytest


def _stand_ins() -> None:
    if "cosyvoice.utils.class_utils" in sys.modules:
        return
    matcha = importlib.util.find_spec("matcha")
    utils = types.ModuleType("matcha.utils")
    utils.__path__ = [f"{matcha.submodule_search_locations[0]}/utils"]  # submodules import, __init__ does not run
    sys.modules["matcha.utils"] = utils
    pylogger = types.ModuleType("matcha.utils.pylogger")
    pylogger.get_pylogger = logging.getLogger
    sys.modules["matcha.utils.pylogger"] = pylogger

    import torch
    from cosyvoice.transformer.activation import Swish
    from cosyvoice.transformer.attention import MultiHeadedAttention, RelPositionMultiHeadedAttention
    from cosyvoice.transformer.embedding import EspnetRelPositionalEncoding, PositionalEncoding, RelPositionalEncoding
    from cosyvoice.transformer.subsampling import LinearNoSubsampling

    registry = types.ModuleType("cosyvoice.utils.class_utils")
    registry.COSYVOICE_ACTIVATION_CLASSES = {"swish": getattr(torch.nn, "SiLU", Swish), "relu": torch.nn.ReLU,
                                             "gelu": torch.nn.GELU, "tanh": torch.nn.Tanh}
    registry.COSYVOICE_SUBSAMPLE_CLASSES = {"linear": LinearNoSubsampling}
    registry.COSYVOICE_EMB_CLASSES = {"abs_pos": PositionalEncoding, "rel_pos": RelPositionalEncoding,
                                      "rel_pos_espnet": EspnetRelPositionalEncoding}
    registry.COSYVOICE_ATTENTION_CLASSES = {"selfattn": MultiHeadedAttention,
                                            "rel_selfattn": RelPositionMultiHeadedAttention}
    sys.modules["cosyvoice.utils.class_utils"] = registry
    files = types.ModuleType("cosyvoice.utils.file_utils")  # cosyvoice.cli.model: TensorRT/vLLM export, torchaudio
    files.logging = logging
    files.convert_onnx_to_trt = files.export_cosyvoice2_vllm = None  # named by the import, never called here
    sys.modules["cosyvoice.utils.file_utils"] = files


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Imported by each parity test file: on a 2-core box OpenMP's spinning threads next to XLA's make
    every small torch op ~100x slower."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference(*modules: str) -> list[types.ModuleType]:
    """The named reference modules (e.g. "cosyvoice.flow.flow"), or skip saying what is missing."""
    for name in ("torch", "cosyvoice", "matcha", "diffusers", "conformer", "omegaconf", "scipy"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"parity reference needs {name!r}: run `make setup` (installs cosyvoice2-eu --no-deps "
                        f"and the parity extra)")
    _stand_ins()
    return [importlib.import_module(m) for m in modules]
