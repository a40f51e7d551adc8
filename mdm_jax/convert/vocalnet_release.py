"""The VocalNet release layout (one PyTorch state dict) <-> our whole `VocalNet` params.

| VocalNet key                                   | ours                                  |
|------------------------------------------------|---------------------------------------|
| model.speech_encoder.* (HF WhisperEncoder)     | encoder/*                             |
| model.speech_projector.linear{1,2}.{weight,bias} | adaptor/{w,b}{1,2}                  |
| model.embed_tokens, model.layers.*, model.norm, lm_head | llm/* (as LLaMA / Qwen2)     |
| speech_generator.embedding.weight              | speech_decoder/embed/embedding (+ MASK row) |
| speech_generator.encode_layers.{i}.*           | speech_decoder/prenn/layers_{i}/*     |
| speech_generator.decode_layers.{i}.*           | speech_decoder/decoder/layers_{i}/*   |
| speech_generator.norm.weight                   | speech_decoder/head/norm/scale        |
| speech_generator.output_proj.{weight,bias}     | speech_decoder/head/{w,b}             |
| speech_generator.mtp_layers.{k}.decoder_layer.* | speech_decoder/mtp_{k}/layer/*       |
| speech_generator.mtp_layers.{k}.norm_final.weight | speech_decoder/mtp_{k}/head/norm/scale |
| speech_generator.mtp_layers.{k}.output_proj.*  | speech_decoder/mtp_{k}/head/{w,b}     |

VocalNet has no [MASK] id; its embedding row is set to the mean of the unit embeddings on import
and dropped on export. Rotary `inv_freq` buffers are recomputed from the config and ignored. A
release's Talker was trained AR + MTP: `release_config` marks it so (`speech_decoder.converted_from`),
and block diffusion is refused on it (`decode.inference.runnable`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from mdm_jax.config.model import ModelConfig, SpeechDecoderConfig
from mdm_jax.convert.hf_llm import decoder_layer_rules, llm_rules
from mdm_jax.convert.hf_whisper import whisper_encoder_rules
from mdm_jax.convert.rules import Rule, export_tensors, import_tensors, transpose
from mdm_jax.model.vocalnet import abstract_params


def _prefixed(rules: list[Rule], path: str) -> list[Rule]:
    return [Rule(r.src, (path, *r.path), r.to_ours, r.to_src) for r in rules]


def _embedding_with_mask_row(c: SpeechDecoderConfig):
    return dict(to_ours=lambda w: np.concatenate([w, w[: c.num_units].mean(0, keepdims=True)]),
                to_src=lambda w: w[: c.input_vocab - 1])


def speech_generator_rules(c: SpeechDecoderConfig, prefix: str = "speech_generator.") -> list[Rule]:
    layer = lambda src, path: decoder_layer_rules(  # noqa: E731
        src, path, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=False)
    head = lambda src, norm, path: [  # noqa: E731
        Rule(f"{src}{norm}.weight", (*path, "norm", "scale")),
        Rule(f"{src}output_proj.weight", (*path, "w"), **transpose()),
        Rule(f"{src}output_proj.bias", (*path, "b"))]
    rules = [Rule(f"{prefix}embedding.weight", ("embed", "embedding"), **_embedding_with_mask_row(c))]
    rules += [r for i in range(c.prenn_layers) for r in layer(f"{prefix}encode_layers.{i}", ("prenn", f"layers_{i}"))]
    rules += [r for i in range(c.num_layers) for r in layer(f"{prefix}decode_layers.{i}", ("decoder", f"layers_{i}"))]
    rules += head(prefix, "norm", ("head",))
    for k in range(c.mtp_modules):
        src = f"{prefix}mtp_layers.{k}."
        rules += layer(f"{src}decoder_layer", (f"mtp_{k}", "layer"))
        rules += head(src, "norm_final", (f"mtp_{k}", "head"))
    return rules


def vocalnet_rules(cfg: ModelConfig) -> list[Rule]:
    adaptor = [Rule(f"model.speech_projector.linear{i}.weight", (f"w{i}",), **transpose()) for i in (1, 2)]
    adaptor += [Rule(f"model.speech_projector.linear{i}.bias", (f"b{i}",)) for i in (1, 2)]
    return (_prefixed(whisper_encoder_rules(cfg.encoder, "model.speech_encoder."), "encoder")
            + _prefixed(adaptor, "adaptor")
            + _prefixed(llm_rules(cfg.llm, "model."), "llm")
            + _prefixed(speech_generator_rules(cfg.speech_decoder), "speech_decoder"))


def release_config(cfg: ModelConfig, release: str) -> ModelConfig:
    """`cfg` of a release named `release` as converted: its Talker marked as VocalNet's and decoding by MTP
    (AR without MTP modules) unless `cfg` names another autoregressive method."""
    sd, sampler = cfg.speech_decoder, cfg.sampler
    method = sampler.method if sampler.method != "mdm" else "mtp" if sd.mtp_modules else "ar"
    return dataclasses.replace(cfg, speech_decoder=dataclasses.replace(sd, converted_from=release),
                               sampler=dataclasses.replace(sampler, method=method))


def vocalnet_from_release(state: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict:
    """A VocalNet checkpoint's state dict (numpy) -> params of `VocalNet(cfg)`."""
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.llm.tie_embeddings:
        state.pop("lm_head.weight", None)  # a tied head is the embedding itself
    return import_tensors(state, vocalnet_rules(cfg), abstract_params(cfg))


def vocalnet_to_release(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    return export_tensors(params, vocalnet_rules(cfg))
