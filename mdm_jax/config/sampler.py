"""How speech tokens are decoded: one `SamplerConfig` from the command line to the sampler.

    cfg = get_config("tiny", ["sampler.denoise_steps=1"])      # or sampler.method=ar, sampler.threshold=0.9
    out = decode.speech.generate(params, hidden, valid, streaming, key, cfg=cfg, num_blocks=8)

It lives in `ModelConfig.sampler`, so a checkpoint carries the way it is meant to be decoded, and
every caller (CLI, streaming, evaluation, demo, sweeps, benchmarks) reads the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdm_jax.config.overrides import check

METHODS = ("mdm", "ar", "mtp")  # block diffusion | one token per forward | 1 + mtp_heads tokens per forward
CONFIDENCES = ("max_prob", "margin", "neg_entropy", "random", "calibrated")
SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class TokenSampling:
    """Choosing a token from logits, for every method."""

    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off (> 1 discourages recent tokens, HF convention)
    penalty_window: int = 15  # recent tokens the penalty looks at


@dataclass(frozen=True)
class SamplerConfig:
    method: str = "mdm"
    denoise_steps: int = 4  # mdm: decoder forwards per block of speech_decoder.block_size tokens
    schedule: str = "linear"  # mdm: how many tokens stay masked after each step (`diffusion.schedules.step_schedule`)
    confidence: str = "max_prob"  # mdm: which masked tokens a step commits first (calibrated: over the block's prior)
    threshold: float = 0.0  # mdm, > 0: commit every masked token at least this confident (one at least) per step
    early_exit: float = 0.0  # mdm, > 0: a block ends at the step after which every masked token is this probable
    mtp_heads: int = -1  # mtp: extra tokens per forward; -1: every MTP module of the decoder
    token: TokenSampling = field(default_factory=TokenSampling)

    def __post_init__(self):
        check(self.method in METHODS, f"sampler.method={self.method!r}; expected one of {METHODS}")
        check(self.denoise_steps >= 1, f"sampler.denoise_steps={self.denoise_steps} must be >= 1")
        check(self.schedule in SCHEDULES, f"sampler.schedule={self.schedule!r}; expected one of {SCHEDULES}")
        check(self.confidence in CONFIDENCES, f"sampler.confidence={self.confidence!r}; expected one of {CONFIDENCES}")
        check(self.early_exit == 0 or self.threshold == 0,
              "sampler.early_exit ends a scheduled block early; sampler.threshold has no schedule to end: set one")
