"""Speech tokens from the LLM's text states by whichever method `cfg.sampler` names: block diffusion,
AR or MTP. The entry point of evaluation, benchmarks and sharded decoding.

    cfg = dataclasses.replace(cfg, sampler=SamplerConfig(denoise_steps=1))   # or get_config(..., ["sampler.method=ar"])
    out = generate(params["speech_decoder"], text_hidden, text_valid, streaming, key, cfg=cfg, num_blocks=8)
    out.tokens  # (b, 8 * block_size) units, EOS, then PAD
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from mdm_jax.config.model import ModelConfig
from mdm_jax.decode import autoregressive, block_diffusion


class Speech(NamedTuple):
    tokens: jax.Array  # (b, num_blocks * block_size) units, then EOS, then PAD
    lengths: jax.Array  # (b,) units before EOS
    forwards: jax.Array  # () decoder forwards (text prefill not counted)


def generate(params, text_hidden, text_valid, streaming, key, *, cfg: ModelConfig, num_blocks: int) -> Speech:
    """params: SpeechDecoder params; text_hidden: (b, T, d); text_valid: (b, T) bool; streaming: (b,)
    bool. Up to `num_blocks` blocks of speech (AR and MTP: as many tokens), early exit at EOS."""
    if cfg.sampler.method == "mdm":
        out = block_diffusion.generate(params, text_hidden, text_valid, streaming, key, cfg=cfg,
                                       num_blocks=num_blocks)
    else:
        out = autoregressive.generate(params, text_hidden, text_valid, streaming, key, cfg=cfg,
                                      max_tokens=num_blocks * cfg.speech_decoder.block_size)
    return Speech(out.tokens, out.lengths, out.forwards)
