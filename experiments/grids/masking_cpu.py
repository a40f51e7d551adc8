"""The masking ablation cut down for 2 CPU cores (the FULL budget's training steps, 8 dialogues):
4 MDM decoders at the default block, each also distilled for one round (1 student step), + AR.

    python -m experiments.sweep --grid experiments/grids/masking_cpu.py --out runs/sweep_cpu \
        --stage1 runs/demo/stage1/params --llm-states runs/demo/llm_states.npz --eval-dialogues 8 --answers reference

Measured on 2 cores shared with other jobs (load 4-6): 9 decoders trained in ~33 min (250 steps at
~1 s/step), 33 rows evaluated in ~12 min; at the ~0.4 s/step seen on a quieter moment, ~18 min in all.
Copy the demo's token2wav.msgpack into --out first, or the sweep trains its own.
"""

MASKING = ("iid", "blockwise", "hierarchical", "hierarchical_confidence")
STEPS = (1, 2, 4, 8)
BLOCK_SIZE = (15,)
DISTILL_ROUNDS = (0, 1)
AR_REFERENCE = True
