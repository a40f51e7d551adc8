"""CosyVoice2's `flow.pt` (CausalMaskedDiffWithXvec state dict) <-> `vocoder.cosyvoice_flow` params.

One `Rule` per tensor (1121 at CosyVoice2-0.5B's sizes); `import_tensors` rejects a missing,
unexpected or mis-shaped key by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from mdm_jax.convert.rules import Rule, conv1d, import_tensors, transpose
from mdm_jax.vocoder.cosyvoice_flow import CosyFlowConfig, init_params


def _dense(src: str, path: tuple[str, ...], bias: bool = True) -> list[Rule]:
    weight = Rule(f"{src}.weight", (*path, "kernel"), **transpose())
    return [weight, Rule(f"{src}.bias", (*path, "bias"))] if bias else [weight]


def _conv(src: str, path: tuple[str, ...]) -> list[Rule]:
    return [Rule(f"{src}.weight", (*path, "kernel"), **conv1d()), Rule(f"{src}.bias", (*path, "bias"))]


def _norm(src: str, path: tuple[str, ...]) -> list[Rule]:
    return [Rule(f"{src}.weight", (*path, "scale")), Rule(f"{src}.bias", (*path, "bias"))]


def _conformer(src: str, path: tuple[str, ...]) -> list[Rule]:
    attn = (*path, "self_attn")
    rules = [r for name in ("linear_q", "linear_k", "linear_v", "linear_out")
             for r in _dense(f"{src}.self_attn.{name}", (*attn, name))]
    rules += _dense(f"{src}.self_attn.linear_pos", (*attn, "linear_pos"), bias=False)
    rules += [Rule(f"{src}.self_attn.pos_bias_u", (*attn, "pos_bias_u")),
              Rule(f"{src}.self_attn.pos_bias_v", (*attn, "pos_bias_v"))]
    rules += _dense(f"{src}.feed_forward.w_1", (*path, "w_1")) + _dense(f"{src}.feed_forward.w_2", (*path, "w_2"))
    return rules + _norm(f"{src}.norm_mha", (*path, "norm_mha")) + _norm(f"{src}.norm_ff", (*path, "norm_ff"))


def _causal_block(src: str, path: tuple[str, ...]) -> list[Rule]:
    return _conv(f"{src}.block.0", (*path, "conv", "conv")) + _norm(f"{src}.block.2", (*path, "norm"))


def _stage(src: str, path: tuple[str, ...], cfg: CosyFlowConfig) -> list[Rule]:
    """A U-Net stage: `{src}.0` the resnet block, `{src}.1.{j}` its transformer blocks."""
    res = (*path, "resnet")
    rules = _dense(f"{src}.0.mlp.1", (*res, "mlp")) + _conv(f"{src}.0.res_conv", (*res, "res_conv"))
    rules += _causal_block(f"{src}.0.block1", (*res, "block1")) + _causal_block(f"{src}.0.block2", (*res, "block2"))
    for j in range(cfg.decoder_blocks):
        s, p = f"{src}.1.{j}", (*path, f"transformer_{j}")
        rules += [r for name in ("to_q", "to_k", "to_v") for r in _dense(f"{s}.attn1.{name}", (*p, name), bias=False)]
        rules += _dense(f"{s}.attn1.to_out.0", (*p, "to_out")) + _norm(f"{s}.norm1", (*p, "norm1"))
        rules += _norm(f"{s}.norm3", (*p, "norm3"))
        rules += _dense(f"{s}.ff.net.0.proj", (*p, "ff_proj")) + _dense(f"{s}.ff.net.2", (*p, "ff_out"))
    return rules


def flow_rules(cfg: CosyFlowConfig) -> list[Rule]:
    enc, est = ("encoder",), ("estimator",)
    rules = [Rule("input_embedding.weight", ("input_embedding", "embedding"))]
    rules += _dense("spk_embed_affine_layer", ("spk_embed_affine_layer",)) + _dense("encoder_proj", ("encoder_proj",))
    rules += _dense("encoder.embed.out.0", (*enc, "embed", "linear"))
    rules += _norm("encoder.embed.out.1", (*enc, "embed", "norm"))
    rules += _conv("encoder.pre_lookahead_layer.conv1", (*enc, "lookahead_conv1"))
    rules += _conv("encoder.pre_lookahead_layer.conv2", (*enc, "lookahead_conv2", "conv"))
    rules += [r for i in range(cfg.encoder_blocks)
              for r in _conformer(f"encoder.encoders.{i}", (*enc, f"encoders_{i}"))]
    rules += _conv("encoder.up_layer.conv", (*enc, "up_conv", "conv"))
    rules += _dense("encoder.up_embed.out.0", (*enc, "up_embed", "linear"))
    rules += _norm("encoder.up_embed.out.1", (*enc, "up_embed", "norm"))
    rules += [r for i in range(cfg.up_encoder_blocks)
              for r in _conformer(f"encoder.up_encoders.{i}", (*enc, f"up_encoders_{i}"))]
    rules += _norm("encoder.after_norm", (*enc, "after_norm"))
    d = "decoder.estimator"
    rules += _dense(f"{d}.time_mlp.linear_1", (*est, "time_linear_1"))
    rules += _dense(f"{d}.time_mlp.linear_2", (*est, "time_linear_2"))
    rules += _stage(f"{d}.down_blocks.0", (*est, "down"), cfg)
    rules += _conv(f"{d}.down_blocks.0.2", (*est, "down_conv", "conv"))
    rules += [r for i in range(cfg.decoder_mid_blocks) for r in _stage(f"{d}.mid_blocks.{i}", (*est, f"mid_{i}"), cfg)]
    rules += _stage(f"{d}.up_blocks.0", (*est, "up"), cfg) + _conv(f"{d}.up_blocks.0.2", (*est, "up_conv", "conv"))
    rules += _causal_block(f"{d}.final_block", (*est, "final_block")) + _conv(f"{d}.final_proj", (*est, "final_proj"))
    return rules


def flow_from_torch(state: Mapping[str, np.ndarray], cfg: CosyFlowConfig) -> dict:
    """A CausalMaskedDiffWithXvec state dict ({key: array}) -> params; every key checked (ConversionError)."""
    return import_tensors(state, flow_rules(cfg), jax.eval_shape(lambda: init_params(cfg)))
