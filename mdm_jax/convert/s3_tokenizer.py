"""CosyVoice2's `speech_tokenizer_v2.onnx` (as released), or a state dict of the `s3tokenizer` package's PyTorch
model (v2 or v3, .pt or .safetensors) -> an `S3Tokenizer` folder that `S3Tokenizer.load` opens.

    python -m mdm_jax.cli convert s3tokenizer --src speech_tokenizer_v2.onnx --out s3_v2_jax
    python -m mdm_jax.cli convert s3tokenizer --src s3_v3.pt --out s3_v3_jax --config v3

Every tensor is checked: a weight missing, left over or of another shape than the sizes imply is a
`ConversionError` naming it. The ONNX file names its tensors by the graph node that reads them (e.g.
the initializer `onnx::MatMul_2301` is the weight of node `/blocks.0/attn/query/MatMul`, stored (in, out));
the convs and the quantizer's projection by fixed initializer names. v3's ONNX layout (LayerNorms split
into Mul / Add, biases in Constant nodes) is not read: convert it with the reference's `onnx2torch_v3`
and save the state dict.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from mdm_jax.convert.cosyvoice2 import read_state
from mdm_jax.convert.rules import ConversionError, Rule, conv1d, import_tensors, transpose
from mdm_jax.model.s3_tokenizer import S3Tokenizer, S3TokenizerConfig, get_s3_config, random_params

# speech_tokenizer_v2.onnx: initializers read by name, not by their node
ONNX_V2_NAMES = {
    "onnx::Conv_2216": "encoder.conv1.weight",
    "onnx::Conv_2217": "encoder.conv1.bias",
    "onnx::Conv_2218": "encoder.conv2.weight",
    "onnx::Conv_2219": "encoder.conv2.bias",
    "onnx::MatMul_2536": "quantizer._codebook.project_down.weight",
    "quantizer.project_in.bias": "quantizer._codebook.project_down.bias",
}
# node name -> the torch key of the initializer it reads (MatMul weights are stored (in, out))
_ONNX_V2_NODES = [
    (re.compile(r"/blocks\.(\d+)/attn/(query|key|value|out)/MatMul"), "attn.{1}.weight"),
    (re.compile(r"/blocks\.(\d+)/attn/(query|value|out)/Add(?:_1)?"), "attn.{1}.bias"),
    (re.compile(r"/blocks\.(\d+)/mlp/mlp\.([02])/MatMul"), "mlp.{1}.weight"),
    (re.compile(r"/blocks\.(\d+)/mlp/mlp\.([02])/Add(?:_1)?"), "mlp.{1}.bias"),
    (re.compile(r"/blocks\.(\d+)/attn/fsmn_block/Conv"), "attn.fsmn_block.weight"),
]
_ONNX_V2_NORM = re.compile(r"/blocks\.(\d+)/(attn_ln|mlp_ln)/LayerNormalization")


def s3_rules(cfg: S3TokenizerConfig) -> list[Rule]:
    """`s3tokenizer` S3TokenizerV2 / V3 state-dict keys <-> `S3Encoder` params."""
    rules = [Rule("encoder.conv1.weight", ("conv1", "kernel"), **conv1d()),
             Rule("encoder.conv1.bias", ("conv1", "bias")),
             Rule("encoder.conv2.weight", ("conv2", "kernel"), **conv1d()),
             Rule("encoder.conv2.bias", ("conv2", "bias")),
             Rule("quantizer._codebook.project_down.weight", ("project_down", "kernel"), **transpose()),
             Rule("quantizer._codebook.project_down.bias", ("project_down", "bias"))]
    for i in range(cfg.num_layers):
        src, ours = f"encoder.blocks.{i}", f"layers_{i}"
        for name in ("query", "key", "value", "out"):
            rules.append(Rule(f"{src}.attn.{name}.weight", (ours, "attn", name, "kernel"), **transpose()))
            if name != "key":
                rules.append(Rule(f"{src}.attn.{name}.bias", (ours, "attn", name, "bias")))
        rules.append(Rule(f"{src}.attn.fsmn_block.weight", (ours, "attn", "fsmn", "kernel"), **conv1d()))
        for torch_name, flax_name in (("attn_ln", "attn_norm"), ("mlp_ln", "mlp_norm")):
            rules += [Rule(f"{src}.{torch_name}.weight", (ours, flax_name, "scale")),
                      Rule(f"{src}.{torch_name}.bias", (ours, flax_name, "bias"))]
        for index, flax_name in (("0", "fc1"), ("2", "fc2")):
            rules += [Rule(f"{src}.mlp.{index}.weight", (ours, flax_name, "kernel"), **transpose()),
                      Rule(f"{src}.mlp.{index}.bias", (ours, flax_name, "bias"))]
    return rules


def s3_from_torch(state: Mapping[str, np.ndarray], cfg: S3TokenizerConfig) -> dict:
    """A reference state dict -> `S3Encoder(cfg)` params; ConversionError names a missing, extra or mis-shaped key."""
    abstract = jax.eval_shape(functools.partial(random_params, cfg), jax.random.key(0))
    return import_tensors(state, s3_rules(cfg), abstract)


def read_onnx_v2(path: str | Path) -> dict[str, np.ndarray]:
    """speech_tokenizer_v2.onnx's initializers -> {reference state-dict key: array}; an initializer no rule
    names (an unknown node reads it) is a ConversionError naming it and its node."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    keys: dict[str, str] = {}  # initializer -> torch key
    readers: dict[str, str] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name not in arrays or name in keys:
                continue
            readers.setdefault(name, node.name)
            if name in ONNX_V2_NAMES:
                keys[name] = ONNX_V2_NAMES[name]
            elif (norm := _ONNX_V2_NORM.fullmatch(node.name)) and position in (1, 2):
                keys[name] = f"encoder.blocks.{norm[1]}.{norm[2]}.{('weight', 'bias')[position - 1]}"
            else:
                for pattern, key in _ONNX_V2_NODES:
                    if match := pattern.fullmatch(node.name):
                        keys[name] = f"encoder.blocks.{match[1]}." + key.format(*match.groups())
    unread = sorted(set(arrays) - set(keys))
    if unread:
        where = readers.get(unread[0], "no node")
        raise ConversionError(f"{path}: initializer {unread[0]!r} (read by {where}, shape "
                              f"{arrays[unread[0]].shape}) is not a tensor of speech_tokenizer_v2 "
                              f"({len(unread)} in all: {unread[:5]})")
    state = {}
    for name, key in keys.items():
        if key in state:
            raise ConversionError(f"{path}: two initializers hold {key!r} (the second: {name!r})")
        w = arrays[name]
        state[key] = w.T if key.endswith(".weight") and w.ndim == 2 else w  # MatMul (in, out) -> Linear (out, in)
    return state


def read_s3_state(src: str | Path) -> dict[str, np.ndarray]:
    """An .onnx file (v2 as released) or a .pt / .safetensors state dict -> {reference key: float32 array}."""
    src = Path(src)
    if src.suffix not in (".onnx", ".pt", ".safetensors"):
        raise ValueError(f"{src}: expected speech_tokenizer_v2.onnx, or a state dict (.pt / .safetensors)")
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    if src.suffix == ".onnx":
        return {k: np.asarray(v, np.float32) for k, v in read_onnx_v2(src).items()}
    return read_state(src.parent, src.stem)


def convert_s3_tokenizer(src: str | Path, out: str | Path, preset: str = "v2",
                         overrides: list[str] = ()) -> S3Tokenizer:
    """Convert and save; `overrides`: `KEY=VALUE` sizes over the preset (e.g. d_model=128 for a test model)."""
    sizes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected KEY=VALUE (an S3 tokenizer size)")
        sizes[key] = float(value) if "." in value else int(value)
    cfg = get_s3_config(preset, sizes)
    tok = S3Tokenizer(s3_from_torch(read_s3_state(src), cfg), cfg)
    tok.save(out)
    return tok
