"""The VocalNet-MDM paper's ablations at our scale: the stage 3 distillation weight alpha, stage 3
with and without hierarchical masking, hierarchical masking from scratch instead of Bernoulli in
stage 2, each Talker at 1-16 denoising steps per block.

    python -m experiments.sweep --grid experiments/grids/paper_ablations.py --out runs/paper \\
        --stage1 runs/demo/stage1/params --llm-states runs/demo/llm_states.npz --answers reference

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
