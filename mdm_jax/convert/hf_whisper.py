"""Whisper encoder (`transformers` WhisperModel / WhisperForConditionalGeneration) <-> our params."""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np

from mdm_jax.config.model import EncoderConfig, WhisperDecoderConfig
from mdm_jax.convert.rules import Rule, export_tensors, import_tensors, linear, linear_in, reshape, transpose
from mdm_jax.model.whisper import WhisperEncoder


def encoder_config_from_hf(hf: Mapping) -> EncoderConfig:
    return EncoderConfig(num_mel_bins=hf["num_mel_bins"], d_model=hf["d_model"],
                         num_layers=hf["encoder_layers"], num_heads=hf["encoder_attention_heads"],
                         ffn_dim=hf["encoder_ffn_dim"], max_source_positions=hf["max_source_positions"])


def _conv():
    # torch Conv1d (out, in, k) <-> flax Conv (k, in, out)
    return dict(to_ours=lambda w: w.transpose(2, 1, 0), to_src=lambda w: w.transpose(2, 1, 0))


def _attention_rules(src: str, hf_attn: str, hf_norm: str, path: tuple, ours: str, h: int, hd: int) -> list[Rule]:
    """One Whisper attention block (k_proj has no bias) and its pre-LayerNorm."""
    att = f"{src}.{hf_attn}"
    return [
        Rule(f"{att}.q_proj.weight", (*path, ours, "wq"), **linear(h, hd)),
        Rule(f"{att}.q_proj.bias", (*path, ours, "bq"), **reshape(h, hd)),
        Rule(f"{att}.k_proj.weight", (*path, ours, "wk"), **linear(h, hd)),
        Rule(f"{att}.v_proj.weight", (*path, ours, "wv"), **linear(h, hd)),
        Rule(f"{att}.v_proj.bias", (*path, ours, "bv"), **reshape(h, hd)),
        Rule(f"{att}.out_proj.weight", (*path, ours, "wo"), **linear_in(h, hd)),
        Rule(f"{att}.out_proj.bias", (*path, ours, "bo")),
        Rule(f"{src}.{hf_norm}.weight", (*path, f"{ours}_norm", "scale")),
        Rule(f"{src}.{hf_norm}.bias", (*path, f"{ours}_norm", "bias")),
    ]


def _mlp_rules(src: str, path: tuple) -> list[Rule]:
    return [
        Rule(f"{src}.fc1.weight", (*path, "mlp", "w1"), **transpose()),
        Rule(f"{src}.fc1.bias", (*path, "mlp", "b1")),
        Rule(f"{src}.fc2.weight", (*path, "mlp", "w2"), **transpose()),
        Rule(f"{src}.fc2.bias", (*path, "mlp", "b2")),
        Rule(f"{src}.final_layer_norm.weight", (*path, "mlp_norm", "scale")),
        Rule(f"{src}.final_layer_norm.bias", (*path, "mlp_norm", "bias")),
    ]


def _final_norm(prefix: str) -> list[Rule]:
    return [Rule(f"{prefix}layer_norm.weight", ("final_norm", "scale")),
            Rule(f"{prefix}layer_norm.bias", ("final_norm", "bias"))]


def whisper_encoder_rules(cfg: EncoderConfig, prefix: str = "model.encoder.") -> list[Rule]:
    h, hd = cfg.num_heads, cfg.d_model // cfg.num_heads
    rules = [Rule(f"{prefix}conv1.weight", ("conv1", "kernel"), **_conv()),
             Rule(f"{prefix}conv1.bias", ("conv1", "bias")),
             Rule(f"{prefix}conv2.weight", ("conv2", "kernel"), **_conv()),
             Rule(f"{prefix}conv2.bias", ("conv2", "bias")),
             Rule(f"{prefix}embed_positions.weight", ("embed_positions",)), *_final_norm(prefix)]
    for i in range(cfg.num_layers):
        src, path = f"{prefix}layers.{i}", (f"layers_{i}",)
        rules += _attention_rules(src, "self_attn", "self_attn_layer_norm", path, "attn", h, hd) + _mlp_rules(src, path)
    return rules


def whisper_decoder_rules(cfg: WhisperDecoderConfig, prefix: str = "model.decoder.") -> list[Rule]:
    """Hugging Face decoder keys <-> `WhisperDecoder` params (output head tied to the embedding)."""
    h, hd = cfg.num_heads, cfg.d_model // cfg.num_heads
    rules = [Rule(f"{prefix}embed_tokens.weight", ("embed_tokens",)),
             Rule(f"{prefix}embed_positions.weight", ("embed_positions",)), *_final_norm(prefix)]
    for i in range(cfg.num_layers):
        src, path = f"{prefix}layers.{i}", (f"layers_{i}",)
        rules += (_attention_rules(src, "self_attn", "self_attn_layer_norm", path, "attn", h, hd)
                  + _attention_rules(src, "encoder_attn", "encoder_attn_layer_norm", path, "cross", h, hd)
                  + _mlp_rules(src, path))
    return rules


def _abstract(cfg: EncoderConfig):
    mel = jax.ShapeDtypeStruct((1, cfg.num_mel_bins, 4), np.float32)
    return nn.unbox(jax.eval_shape(lambda *a: WhisperEncoder(cfg).init(*a)["params"], jax.random.key(0), mel))


def whisper_encoder_from_hf(state: Mapping[str, np.ndarray], cfg: EncoderConfig,
                            prefix: str = "model.encoder.") -> dict:
    """Encoder tensors under `prefix` -> params of `WhisperEncoder(cfg)`; other keys (the text
    decoder of a full Whisper checkpoint) are not part of the encoder and are ignored."""
    return import_tensors(state, whisper_encoder_rules(cfg, prefix), _abstract(cfg),
                          ignore=lambda k: not k.startswith(prefix))


def whisper_encoder_to_hf(params: dict, cfg: EncoderConfig, prefix: str = "model.encoder.") -> dict:
    return export_tensors(params, whisper_encoder_rules(cfg, prefix))
