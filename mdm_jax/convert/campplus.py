"""CosyVoice2's `campplus.onnx` (as released), or a state dict of the reference CAM++ (FunASR / 3D-Speaker
`CAMPPlus`, .pt or .safetensors) -> a `SpeakerEncoder` folder that `SpeakerEncoder.load` opens.

    convert_campplus("CosyVoice2-0.5B/campplus.onnx", "campplus_jax")

Every tensor is checked: a weight missing, left over or of another shape than the sizes imply is a
`ConversionError` naming it. The ONNX file is read by the node that reads each initializer (a Conv's
weight and bias, a BatchNormalization's scale, bias, mean and variance), named by its module path
(`/head/layer1/layer1.0/conv1/Conv` -> `head.layer1.0.conv1`). PyTorch's exporter folds an inference
BatchNorm into the Conv right before it: such a Conv carries a bias the reference's has not, and the
BatchNorm after it is gone; the bias becomes that BatchNorm with mean -bias and variance 1 - eps (an
identity plus the shift), so the folded file runs the same network.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from mdm_jax.convert.cosyvoice2 import read_state
from mdm_jax.convert.rules import ConversionError, Rule, conv1d, import_tensors
from mdm_jax.vocoder.campplus import CAMPPlusConfig, SpeakerEncoder, random_params


def _conv2d():
    """torch Conv2d weight (out, in, kh, kw) <-> flax Conv (kh, kw, in, out)."""
    return dict(to_ours=lambda w: w.transpose(2, 3, 1, 0), to_src=lambda w: w.transpose(3, 2, 0, 1))


def _pointwise():
    """torch Conv1d weight (out, in, 1) <-> flax Dense (in, out)."""
    return dict(to_ours=lambda w: w[:, :, 0].T, to_src=lambda w: w.T[:, :, None])


def _norm(src: str, path: tuple[str, ...], affine: bool = True) -> list[Rule]:
    names = [("running_mean", "mean"), ("running_var", "var")]
    names += [("weight", "scale"), ("bias", "bias")] if affine else []
    return [Rule(f"{src}.{theirs}", (*path, ours)) for theirs, ours in names]


def campplus_rules(cfg: CAMPPlusConfig) -> list[Rule]:
    """Reference `CAMPPlus` state-dict keys <-> `CAMPPlus` params."""
    rules = [Rule("head.conv1.weight", ("head", "conv1", "kernel"), **_conv2d()), *_norm("head.bn1", ("head", "bn1")),
             Rule("head.conv2.weight", ("head", "conv2", "kernel"), **_conv2d()), *_norm("head.bn2", ("head", "bn2"))]
    for layer in ("layer1", "layer2"):
        for block in (0, 1):
            src, ours = f"head.{layer}.{block}", ("head", f"{layer}_{block}")
            for i in (1, 2):
                rules += [Rule(f"{src}.conv{i}.weight", (*ours, f"conv{i}", "kernel"), **_conv2d()),
                          *_norm(f"{src}.bn{i}", (*ours, f"bn{i}"))]
            if block == 0:  # the stride-2 block's projected shortcut
                rules += [Rule(f"{src}.shortcut.0.weight", (*ours, "shortcut", "kernel"), **_conv2d()),
                          *_norm(f"{src}.shortcut.1", (*ours, "shortcut_bn"))]
    rules += [Rule("xvector.tdnn.linear.weight", ("tdnn", "kernel"), **conv1d()),
              *_norm("xvector.tdnn.nonlinear.batchnorm", ("tdnn_bn",))]
    for i, layers in enumerate(cfg.block_layers, start=1):
        for j in range(1, layers + 1):
            src, ours = f"xvector.block{i}.tdnnd{j}", f"block{i}_{j}"
            rules += [*_norm(f"{src}.nonlinear1.batchnorm", (ours, "bn1")),
                      Rule(f"{src}.linear1.weight", (ours, "linear1", "kernel"), **_pointwise()),
                      *_norm(f"{src}.nonlinear2.batchnorm", (ours, "bn2")),
                      Rule(f"{src}.cam_layer.linear_local.weight", (ours, "local", "kernel"), **conv1d())]
            for k in (1, 2):
                rules += [Rule(f"{src}.cam_layer.linear{k}.weight", (ours, f"gate{k}", "kernel"), **_pointwise()),
                          Rule(f"{src}.cam_layer.linear{k}.bias", (ours, f"gate{k}", "bias"))]
        rules += [*_norm(f"xvector.transit{i}.nonlinear.batchnorm", (f"transit{i}_bn",)),
                  Rule(f"xvector.transit{i}.linear.weight", (f"transit{i}", "kernel"), **_pointwise())]
    return rules + [*_norm("xvector.out_nonlinear.batchnorm", ("out_bn",)),
                    Rule("xvector.dense.linear.weight", ("dense", "kernel"), **_pointwise()),
                    *_norm("xvector.dense.nonlinear.batchnorm", ("dense_bn",), affine=False)]


def campplus_from_torch(state: Mapping[str, np.ndarray], cfg: CAMPPlusConfig) -> dict:
    """A reference state dict -> `CAMPPlus(cfg)` params; ConversionError names a missing, extra or mis-shaped key
    (BatchNorms' `num_batches_tracked` counters are training state and skipped)."""
    abstract = jax.eval_shape(functools.partial(random_params, cfg), jax.random.key(0))
    return import_tensors(state, campplus_rules(cfg), abstract, ignore=lambda k: k.endswith(".num_batches_tracked"))


def _module(node: str) -> str:
    """An exported node's name -> the reference module it belongs to: `/head/layer1/layer1.0/conv1/Conv` ->
    `head.layer1.0.conv1` (a Sequential's child is scoped as `parent.child`)."""
    parts: list[str] = []
    for part in node.strip("/").split("/")[:-1]:
        parts.append(part[len(parts[-1]) + 1:] if parts and part.startswith(parts[-1] + ".") else part)
    return ".".join(parts)


def _folded_norm(conv: str, cfg: CAMPPlusConfig) -> str | None:
    """The BatchNorm right after reference Conv `conv` (the one the exporter folds into it), or None."""
    follows = [(r"head\.conv(\d)", r"head.bn\1"), (r"(head\.layer\d\.\d)\.conv(\d)", r"\1.bn\2"),
               (r"(head\.layer\d\.\d)\.shortcut\.0", r"\1.shortcut.1"),
               (r"xvector\.tdnn\.linear", "xvector.tdnn.nonlinear.batchnorm"),
               (r"(xvector\.block\d+\.tdnnd\d+)\.linear1", r"\1.nonlinear2.batchnorm"),
               (rf"xvector\.transit{len(cfg.block_layers)}\.linear", "xvector.out_nonlinear.batchnorm"),
               (r"xvector\.dense\.linear", "xvector.dense.nonlinear.batchnorm")]
    for pattern, norm in follows:
        if re.fullmatch(pattern, conv):
            return re.sub(pattern, norm, conv)
    return None


def read_onnx(path: str | Path, cfg: CAMPPlusConfig = CAMPPlusConfig()) -> dict[str, np.ndarray]:
    """campplus.onnx's initializers -> {reference state-dict key: float32 array}, folded BatchNorms unfolded; an
    initializer no Conv or BatchNormalization reads is a ConversionError naming it and its node."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state: dict[str, np.ndarray] = {}
    read = set()
    readers = {"Conv": ("weight", "bias"), "BatchNormalization": ("weight", "bias", "running_mean", "running_var")}
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name not in arrays:
                continue
            if node.op_type not in readers or position == 0:
                raise ConversionError(f"{path}: initializer {name!r} (shape {arrays[name].shape}) is input "
                                      f"{position} of {node.op_type} node {node.name!r}, not a CAM++ weight")
            key = f"{_module(node.name)}.{readers[node.op_type][position - 1]}"
            if key in state:
                raise ConversionError(f"{path}: two nodes hold {key!r} (the second: {node.name!r})")
            state[key] = np.asarray(arrays[name], np.float32)  # an initializer shared by equal tensors: each its own
            read.add(name)
    if unread := sorted(set(arrays) - read):
        raise ConversionError(f"{path}: initializer {unread[0]!r} is read by no node ({len(unread)} in all)")
    expected = {r.src for r in campplus_rules(cfg)}
    for key in [k for k in state if k.endswith((".weight", ".bias")) and k not in expected]:
        if re.search(r"batchnorm\.(weight|bias)$", key) and np.all(state[key] == key.endswith(".weight")):
            del state[key]  # a non-affine BatchNorm exported with a unit scale and zero bias
    for key in [k for k in state if k.endswith(".bias") and k not in expected]:
        conv = key.removesuffix(".bias")
        norm = _folded_norm(conv, cfg)
        if norm is None or f"{norm}.running_mean" in state:
            raise ConversionError(f"{path}: {conv!r} has a bias, and no BatchNorm after it was folded into it")
        bias = state.pop(key)
        state[f"{norm}.running_mean"] = -bias
        state[f"{norm}.running_var"] = np.full_like(bias, 1.0 - cfg.bn_eps)  # (x + bias) / sqrt(var + eps) = x + bias
        if f"{norm}.weight" in expected:
            state[f"{norm}.weight"], state[f"{norm}.bias"] = np.ones_like(bias), np.zeros_like(bias)
    return state


def read_campplus_state(src: str | Path, cfg: CAMPPlusConfig = CAMPPlusConfig()) -> dict[str, np.ndarray]:
    """campplus.onnx (as CosyVoice2 ships it) or a .pt / .safetensors state dict -> {reference key: float32}."""
    src = Path(src)
    if src.suffix not in (".onnx", ".pt", ".safetensors"):
        raise ValueError(f"{src}: expected campplus.onnx, or a CAM++ state dict (.pt / .safetensors)")
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    return read_onnx(src, cfg) if src.suffix == ".onnx" else read_state(src.parent, src.stem)


def convert_campplus(src: str | Path, out: str | Path) -> SpeakerEncoder:
    """Convert CosyVoice2's campplus.onnx (or a CAM++ state dict) at its real sizes and save it to `out`."""
    cfg = CAMPPlusConfig()
    enc = SpeakerEncoder(campplus_from_torch(read_campplus_state(src, cfg), cfg), cfg)
    enc.save(out)
    return enc
