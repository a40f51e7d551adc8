"""The paper's central claim at our scale: MDM (the stage 2 Talker, and its distillation) vs AR at 1-16
denoising steps per block, with four steps vs sixteen and the distilled vs the stage 2 Talker at one
step, judged by paired intervals over seeds and dialogues. Its Talkers are
those of `paper_ablations.py` (the same workdir names): run it first into the same OUT and the
ablations reuse them.

    python -m experiments.sweep --grid experiments/grids/mdm_vs_ar.py --out runs/paper \\
        --seeds 3 --eval-dialogues 96 --answers reference
"""

MASKING = ("bernoulli",)  # the paper's stage 2
DENOISE_STEPS = (1, 2, 4, 8, 16)
BLOCK_SIZE = (16,)
DISTILL = (("hierarchical", 0.7),)  # the paper's stage 3
AR_REFERENCE = True

_AR, _STAGE2, _DISTILLED = "ar-b16", "mdm-bernoulli-b16", "mdm-bernoulli-b16-distill-hierarchical-a0.7"
CLAIMS = tuple((f"1. {what} at {s} step{'s' * (s > 1)} about as good as AR", (talker, s), (_AR, None), "level")
               for what, talker in (("MDM", _STAGE2), ("the distilled Talker", _DISTILLED)) for s in DENOISE_STEPS) + (
    ("6. four steps about as good as sixteen (stage 2)", (_STAGE2, 4), (_STAGE2, 16), "level"),
    ("6. four steps about as good as sixteen (distilled)", (_DISTILLED, 4), (_DISTILLED, 16), "level"),
    ("2. the paper's distillation helps one step", (_DISTILLED, 1), (_STAGE2, 1), "above"))
PAPER = ((_AR, "-"), (_STAGE2, "39.00"), (_DISTILLED, "6.23 / 5.34 (1 / 4 steps)"))
