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
and dropped on export. Rotary `inv_freq` buffers are recomputed from the config and ignored.

`vocalnet_config_from_release` reads the sizes from the release itself: its `config.json` (the LLM's
own Hugging Face keys plus VocalNet's speech generator keys) and the shapes of its Whisper tensors. A
release's Talker was trained AR + MTP: `release_config` marks it so (`speech_decoder.converted_from`),
and block diffusion is refused on it (`decode.inference.runnable`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mdm_jax.config.model import AdaptorConfig, EncoderConfig, ModelConfig, SpeechDecoderConfig
from mdm_jax.config.overrides import ConfigError, check
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.convert.hf_llm import decoder_layer_rules, llm_config_from_hf, llm_rules
from mdm_jax.convert.hf_whisper import whisper_encoder_rules
from mdm_jax.convert.rules import ConversionError, Rule, export_tensors, import_tensors, transpose
from mdm_jax.model.vocalnet import abstract_params

# model_type of VocalNet's OmniSpeech2SConfig (SJTU-OmniAgent/VocalNet omni_speech/model/language_model/
# omni_speech2s_{llama,qwen2}.py) -> LLM family; no Qwen3 release is public, its type is assumed by analogy
RELEASE_FAMILIES = {"omni_speech2s_llama": "llama", "omni_speech2s_qwen": "qwen2", "omni_speech2s_qwen3": "qwen3"}
# what VocalNet's SpeechGeneratorARMTP and its builders read from the config (speech_generator_ar_mtp.py)
RELEASE_KEYS = ("speech_generator_type", "llm_hidden_size", "decoder_num_heads", "decoder_ffn_dim",
                "decoder_num_layers", "encoder_num_layers", "unit_vocab_size", "txt_token_num", "speech_token_num",
                "mtp_num", "speech_encoder_type", "speech_encoder_ds_rate")
SPEECH_SPECIALS = ("speech_bos_token_id", "speech_sos_token_id", "speech_eos_token_id", "speech_padding_token_id")
PROJECTOR_HIDDEN = 2048  # VocalNet's EncoderProjectorConcat fixes it in code (speech_projector.py), not the config
WHISPER_HEAD_DIM = 64  # every Whisper size, tiny (6 x 64) to large-v3 (20 x 64)


def _prefixed(rules: list[Rule], path: str) -> list[Rule]:
    return [Rule(r.src, (path, *r.path), r.to_ours, r.to_src) for r in rules]


def _embedding_with_mask_row(c: SpeechDecoderConfig):
    return dict(to_ours=lambda w: np.concatenate([w, w[: c.num_units].mean(0, keepdims=True)]),
                to_src=lambda w: w[: c.input_vocab - 1])


def speech_generator_rules(c: SpeechDecoderConfig, prefix: str = "speech_generator.") -> list[Rule]:
    layer = lambda src, path: decoder_layer_rules(
        src, path, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=False)
    head = lambda src, norm, path: [
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


def vocalnet_config_from_release(hf: Mapping, state: Mapping[str, np.ndarray],
                                 source: str = "config.json") -> ModelConfig:
    """A VocalNet release's `config.json` dict and its tensors -> the `ModelConfig` its weights fit.

    The talker is read as VocalNet builds it: LLaMA layers of the LLM's width whose `LlamaConfig` leaves
    kv heads (= heads), RoPE theta (1e4) and RMSNorm eps (1e-6) at transformers' defaults. The file names
    the Whisper encoder only by width and folder, so its sizes come from the release's encoder tensors.
    Unknown model types, missing keys and layouts ours cannot hold raise `ConfigError` naming `source`."""
    model_type = hf.get("model_type")
    if model_type not in RELEASE_FAMILIES:
        raise ConfigError(f"{source}: model_type {model_type!r} is not a VocalNet release "
                          f"({', '.join(RELEASE_FAMILIES)})")
    missing = [k for k in RELEASE_KEYS if k not in hf]
    check(not missing, f"{source}: no {', '.join(map(repr, missing))} (keys of a VocalNet release's speech parts)")
    check("ar_mtp" in hf["speech_generator_type"] and hf["speech_encoder_type"].lower() == "whisper",
          f"{source}: speech_generator_type={hf['speech_generator_type']!r}, speech_encoder_type="
          f"{hf['speech_encoder_type']!r}; only VocalNet's ar_mtp talker over a whisper encoder is supported")
    units, width, heads = hf["unit_vocab_size"], hf["llm_hidden_size"], hf["decoder_num_heads"]
    check(hf.get("special_tokens", 4) == 4, f"{source}: special_tokens={hf.get('special_tokens')}; ours are 4")
    for i, key in enumerate(SPEECH_SPECIALS):  # ours sit right after the units, in this order
        check(hf.get(key, units + i) == units + i, f"{source}: {key}={hf.get(key)}, ours is unit_vocab_size + {i}")
    check(width == hf.get("hidden_size", width) and width % heads == 0,
          f"{source}: llm_hidden_size={width} must equal hidden_size={hf.get('hidden_size')} (the talker reads "
          f"the LLM's states as they are) and split into decoder_num_heads={heads}")
    try:
        llm = llm_config_from_hf({**hf, "model_type": RELEASE_FAMILIES[model_type]})
    except KeyError as e:
        raise ConfigError(f"{source}: no {e.args[0]!r} (a key of the LLM's own Hugging Face config)") from None
    except ConversionError as e:
        raise ConfigError(f"{source}: {e}") from None
    talker = SpeechDecoderConfig(
        talker="vocalnet", num_units=units, d_model=width, num_heads=heads, num_kv_heads=heads,
        ffn_dim=hf["decoder_ffn_dim"], prenn_layers=hf["encoder_num_layers"], num_layers=hf["decoder_num_layers"],
        mtp_modules=hf["mtp_num"], rope_theta=10_000.0, rms_norm_eps=1e-6, block_size=hf["speech_token_num"],
        text_per_block=hf["txt_token_num"])
    return ModelConfig(
        name=Path(source).parent.name or "vocalnet-release", encoder=_whisper_encoder(hf, state, source),
        adaptor=AdaptorConfig(downsample=hf["speech_encoder_ds_rate"], hidden_dim=PROJECTOR_HIDDEN), llm=llm,
        speech_decoder=talker, sampler=SamplerConfig(method="mtp" if hf["mtp_num"] else "ar"),  # an AR-trained talker
        dtype="bfloat16" if hf.get("torch_dtype", hf.get("dtype")) == "bfloat16" else "float32")  # as released


def _whisper_encoder(hf: Mapping, state: Mapping[str, np.ndarray], source: str) -> EncoderConfig:
    prefix = "model.speech_encoder."
    shapes = {k[len(prefix):]: np.shape(v) for k, v in state.items() if k.startswith(prefix)}
    for k in ("conv1.weight", "embed_positions.weight", "layers.0.fc1.weight"):
        check(k in shapes, f"{source}: no tensor {prefix}{k} beside it; the Whisper encoder's sizes are read from "
                           "its tensors")
    d, mels, _ = shapes["conv1.weight"]
    check(d == hf.get("speech_encoder_hidden_size", d) and d % WHISPER_HEAD_DIM == 0,
          f"{source}: speech_encoder_hidden_size={hf.get('speech_encoder_hidden_size')} but the encoder's "
          f"{prefix}conv1.weight is {shapes['conv1.weight']} (a Whisper width, a multiple of {WHISPER_HEAD_DIM})")
    return EncoderConfig(num_mel_bins=mels, d_model=d, num_heads=d // WHISPER_HEAD_DIM,
                         num_layers=sum(k.startswith("layers.") and k.endswith(".fc1.weight") for k in shapes),
                         ffn_dim=shapes["layers.0.fc1.weight"][0],
                         max_source_positions=shapes["embed_positions.weight"][0])


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
