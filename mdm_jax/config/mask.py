"""How stage II corrupts speech units for the masked-diffusion loss (`TrainConfig.mask`).

The block size and the mask id are the speech decoder's (`ModelConfig.speech_decoder`): the one
place they are set; `diffusion.masking` takes them as arguments next to this config.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdm_jax.config.overrides import check
from mdm_jax.config.sampler import SCHEDULES

# functions of the units alone (diffusion.masking.MASKING, the paper's first) and the one that masks from the
# decoder's own scores (train.objectives)
CORRUPTIONS = ("bernoulli", "hierarchical", "iid", "blockwise", "sampler_states", "sampler_states_single", "span")
CONFIDENCE_MASKING = "sampler_states_confidence"  # sampler_states, least confident tokens masked
STRATEGIES = (*CORRUPTIONS, CONFIDENCE_MASKING)
T_SAMPLING = ("iid", "antithetic", "stratified")
AFTER_EOS = ("eos", "pad")  # what the last block holds after EOS (`diffusion.end_of_speech`)


@dataclass(frozen=True)
class MaskConfig:
    strategy: str = "bernoulli"  # the paper's stage II; its stage III masking is "hierarchical"
    elbo: bool = True  # weight targets by the ELBO weight (1/t linear) instead of 1 (MaskGIT)
    schedule: str = "linear"  # noise schedule m(t); for sampler_states, the step schedule's shape
    denoise_steps: int = 16  # sampler_states: the sampler's steps S per block whose states are trained
    t_min: float = 0.0  # clipped window for t (iid, blockwise, span)
    t_max: float = 1.0
    t_sampling: str = "antithetic"  # every level and ratio, across the batch: iid | antithetic | stratified
    span_length: int = 3  # span
    bernoulli_min: float = 0.3  # bernoulli: window of the per-sequence mask ratio γ_g
    bernoulli_max: float = 0.8
    block_ratio_min: float = 0.5  # hierarchical: window of γ_c, the fraction of a sequence's blocks chosen
    block_ratio_max: float = 1.0
    token_ratio_min: float = 0.3  # hierarchical: window of γ_t, the fraction of a chosen block's tokens masked
    token_ratio_max: float = 1.0
    after_eos: str = "eos"  # the last block after EOS: eos (EOS repeated, trained) | pad (unseen: leaks the length)

    def __post_init__(self):
        check(self.strategy in STRATEGIES, f"mask.strategy={self.strategy!r}; expected one of {STRATEGIES}")
        check(self.schedule in SCHEDULES, f"mask.schedule={self.schedule!r}; expected one of {SCHEDULES}")
        check(self.t_sampling in T_SAMPLING, f"mask.t_sampling={self.t_sampling!r}; expected one of {T_SAMPLING}")
        check(self.denoise_steps >= 1, f"mask.denoise_steps={self.denoise_steps} must be >= 1")
        check(self.after_eos in AFTER_EOS, f"mask.after_eos={self.after_eos!r}; expected one of {AFTER_EOS}")
        for name in ("bernoulli", "block_ratio", "token_ratio"):  # the ratio windows (<name>_min, <name>_max]
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            check(0 < lo <= hi <= 1, f"mask.{name}_min={lo}, mask.{name}_max={hi}: expected 0 < min <= max <= 1")
