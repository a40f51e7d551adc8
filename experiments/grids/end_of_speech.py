"""What the last block holds after EOS in training (`mask.after_eos`), the paper being silent: `eos`
(the default, LLaDA's fill: the sampler's last block is a trained state) against `pad` (those
positions unseen, which leaks where the answer ends: docs/claims.md), for the paper's stage 2 Talker
and its distillation, AR as the reference. Its `eos` Talkers are mdm_vs_ar.py's (the same workdirs):

    python -m experiments.sweep --grid experiments/grids/end_of_speech.py --out runs/paper \\
        --seeds 3 --eval-dialogues 96 --answers reference
"""

MASKING = ("bernoulli",)
DENOISE_STEPS = (1, 4, 16)
BLOCK_SIZE = (16,)
DISTILL = (("hierarchical", 0.7),)
AFTER_EOS = ("", "pad")
AR_REFERENCE = True

_EOS, _PAD = "mdm-bernoulli-b16", "mdm-bernoulli-b16-pad"
_DISTILL = "-distill-hierarchical-a0.7"
CLAIMS = tuple((f"eos above pad ({what}, {s} step{'s' * (s > 1)})", (eos, s), (pad, s), "above")
               for what, eos, pad in (("stage 2", _EOS, _PAD), ("distilled", _EOS + _DISTILL, _PAD + _DISTILL))
               for s in DENOISE_STEPS)
