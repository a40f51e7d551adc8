"""The masking ablation cut to fit ~15 minutes on 2 CPU cores (FULL budget's training steps, fewer
evaluated dialogues):

    python -m experiments.sweep --grid experiments/grids/masking_cpu.py --out runs/sweep_cpu --eval-dialogues 8

4 MDM decoders at the default block, each also distilled for one round (1 student step).
"""

MASKING = ("iid", "blockwise", "hierarchical", "hierarchical_confidence")
STEPS = (1, 2, 4, 8)
BLOCK_SIZE = (15,)
DISTILL_ROUNDS = (0, 1)
AR_REFERENCE = True
