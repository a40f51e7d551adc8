"""The VocalNet-MDM paper's ablations at our scale: the stage 3 distillation weight alpha, stage 3
with and without hierarchical masking, hierarchical masking from scratch instead of Bernoulli in
stage 2, each Talker at 1-16 denoising steps per block, _AR as the reference; its claims judged by
paired intervals over seeds and dialogues (the robust run, about 3 h on 2 CPU cores):

    python -m experiments.sweep --grid experiments/grids/paper_ablations.py --out runs/paper \\
        --seeds 3 --eval-dialogues 96 --answers reference

The paper's numbers (WER, its scale): alpha 0 -> 41.27 at 1 step, 0.7 -> 6.23, 0.9 -> 15.95;
without hierarchical masking in stage 3 7.65 / 9.69 (4 / 1 steps) vs 5.34 / 6.23 with it;
hierarchical from scratch without distillation 50.70 vs Bernoulli 39.00.
"""

MASKING = ("bernoulli", "hierarchical")  # stage 2: the paper's Bernoulli, and hierarchical from scratch
DENOISE_STEPS = (1, 2, 4, 8, 16)
BLOCK_SIZE = (16,)
DISTILL = (("hierarchical", 0.0), ("hierarchical", 0.7), ("hierarchical", 0.9), ("bernoulli", 0.7))
DISTILL_FROM = ("bernoulli",)  # stage 3 starts from the Bernoulli stage 2 Talker, as in the paper
AR_REFERENCE = True

_AR, _STAGE2, _HIER_STAGE2 = "ar-b16", "mdm-bernoulli-b16", "mdm-hierarchical-b16"
_DISTILLED = "mdm-bernoulli-b16-distill-hierarchical-a0.7"  # the paper's Talker
_ALPHA0, _ALPHA09 = "mdm-bernoulli-b16-distill-hierarchical-a0", "mdm-bernoulli-b16-distill-hierarchical-a0.9"
_NO_HIER = "mdm-bernoulli-b16-distill-bernoulli-a0.7"  # stage 3 without hierarchical masking

# (claim, row a, row b, expected): a row is (Talker, denoising steps); "above": a better than b, "level": a
# within the sweep's LEVEL of b. Unit accuracy of the Talker alone, paired over seeds and dialogues.
CLAIMS = (
    ("1. MDM at 4 steps about as good as AR", (_STAGE2, 4), (_AR, None), "level"),
    ("1. the distilled Talker at 4 steps about as good as AR", (_DISTILLED, 4), (_AR, None), "level"),
    ("1. the distilled Talker at 1 step close behind AR", (_DISTILLED, 1), (_AR, None), "level"),
    ("2. distillation matters at one step: alpha 0.7 above alpha 0", (_DISTILLED, 1), (_ALPHA0, 1), "above"),
    ("3. too much KL hurts: alpha 0.7 above alpha 0.9", (_DISTILLED, 1), (_ALPHA09, 1), "above"),
    ("4. hierarchical masking in stage 3 helps (1 step)", (_DISTILLED, 1), (_NO_HIER, 1), "above"),
    ("4. hierarchical masking in stage 3 helps (4 steps)", (_DISTILLED, 4), (_NO_HIER, 4), "above"),
    ("5. Bernoulli above hierarchical from scratch in stage 2 (1 step)", (_STAGE2, 1), (_HIER_STAGE2, 1), "above"),
    ("6. four steps about as good as sixteen (distilled)", (_DISTILLED, 4), (_DISTILLED, 16), "level"),
    ("6. four steps about as good as sixteen (stage 2)", (_STAGE2, 4), (_STAGE2, 16), "level"),
)
PAPER = (  # the paper's WER for each Talker (its test set, 6 k hours: for the shape only)
    (_AR, "-"),
    (_STAGE2, "39.00"),
    (_HIER_STAGE2, "50.70"),
    (_ALPHA0, "41.27 (1 step)"),
    (_DISTILLED, "6.23 / 5.34 (1 / 4 steps)"),
    (_ALPHA09, "15.95"),
    (_NO_HIER, "9.69 / 7.65 (1 / 4 steps)"),
)
