"""What every way of asking the model shares (`cli generate`, the voice page `serve`, the Colab notebook): a
checkpoint loaded to decode by a method its Talker can run, a spoken question made a prompt, and the
length buckets its audio is padded to.

    params, cfg = load_model("runs/demo/params", ["sampler.denoise_steps=1"])   # or "random:tiny"
    (params, one), (_, four) = load_models([(ckpt, ["sampler.denoise_steps=1"]), (ckpt, ["sampler.denoise_steps=4"])])
    mel, prompt, eos = spoken_question(audio, cfg, tokenizer, "tiny")           # audio: 16 kHz, <= MAX_SECONDS
    chunks = stream(params, cfg, mel, prompt, eos_ids=eos)                      # decode.streaming
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines.buckets import bucket
from data_pipelines.features import log_mel
from data_pipelines.tokenizer import SPEECH_PLACEHOLDER, TEMPLATES, encode_prompt, num_speech_frames
from mdm_jax.config.model import ModelConfig, get_config, param_mismatch
from mdm_jax.config.overrides import ConfigError, apply_overrides
from mdm_jax.convert.params_io import load_params
from mdm_jax.decode.autoregressive import mtp_heads
from mdm_jax.model.vocalnet import random_params

MAX_SECONDS = 30.0  # Whisper's window: the encoder reads no more of a question
WARMUP_SECONDS = (1.0, 2.5, 5.0)  # questions whose buckets (128, 256, 512 mel frames) a server compiles at start


def load_model(ckpt: str, overrides: Sequence[str]) -> tuple[dict, ModelConfig]:
    """A checkpoint's params and config with `overrides` of how it runs (sampler, dtype, speech layout);
    `random:PRESET` gives random params of a preset (a smoke run of the machinery, no trained weights)."""
    return load_models([(ckpt, overrides)])[0]


def load_models(specs: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[dict, ModelConfig]]:
    """`load_model` of each (ckpt, overrides); a checkpoint named several times (run several ways) is read once
    and its params shared."""
    read, out = {}, []
    for ckpt, overrides in specs:
        if ckpt.startswith("random:"):
            cfg = get_config(ckpt.split(":", 1)[1], overrides)
            out.append((random_params(cfg), runnable(cfg, ckpt)))
            continue
        if ckpt not in read:
            read[ckpt] = load_params(ckpt)
        params, saved = read[ckpt]
        if not isinstance(saved, ModelConfig):
            raise ConfigError(f"{ckpt} holds a text LLM alone ({type(saved).__name__}), not a VocalNet")
        cfg = apply_overrides(saved, overrides)
        changed = param_mismatch(saved, cfg)
        if changed:
            raise ConfigError(f"overrides of {', '.join(changed)} would change the params of {ckpt}; only how it "
                              "runs may change (sampler.*, dtype, remat, speech_decoder block layout)")
        out.append((params, runnable(cfg, ckpt)))
    return out


def runnable(cfg: ModelConfig, ckpt: str) -> ModelConfig:
    """`cfg`, if its Talker can decode by `cfg.sampler.method`, else a ConfigError naming `ckpt` and why: MTP
    needs MTP modules; block diffusion a Talker trained to denoise, not a VocalNet release's (AR + MTP)."""
    release = cfg.speech_decoder.converted_from
    if cfg.sampler.method == "mdm" and release:
        raise ConfigError(f"{ckpt}: sampler.method=mdm but its Talker was converted from the VocalNet release "
                          f"{release}, trained autoregressively (AR + MTP), not to denoise blocks: use "
                          f"sampler.method={'mtp' if cfg.speech_decoder.mtp_modules else 'ar'}")
    if cfg.sampler.method != "mdm":
        try:
            mtp_heads(cfg)
        except ValueError as error:
            raise ConfigError(f"{ckpt}: {error}") from None
    return cfg


def spoken_question(audio: np.ndarray, cfg: ModelConfig, tokenizer=None,
                    template: str = "tiny") -> tuple[np.ndarray, list[int], set[int]]:
    """16 kHz audio -> (log-mel (n_mels, frames), prompt ids, end-of-text ids); without a tokenizer the prompt
    is the speech alone (placeholders) and nothing ends the text."""
    mel = log_mel(audio, cfg.encoder.num_mel_bins)
    n_speech = num_speech_frames(mel.shape[-1], cfg.adaptor.downsample)
    if tokenizer is None:
        return mel, [SPEECH_PLACEHOLDER] * n_speech, set()
    prompt, end = encode_prompt(tokenizer, TEMPLATES[template], n_speech)
    return mel, prompt, {end}


def audio_bucket(frames: int, cfg: ModelConfig, buckets: Sequence[int] | None = None) -> int:
    """Mel frames padded to their bucket, at most the encoder's window (Whisper's 30 s = 3000 frames)."""
    limit = 2 * cfg.encoder.max_source_positions
    return frames if frames > limit else min(bucket(frames, buckets), limit)
