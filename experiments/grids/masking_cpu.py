"""The masking ablation cut down for 2 CPU cores (the FULL budget's training steps, 40 dialogues):
4 MDM decoders at the default block, each also distilled for one round (1 student step), + AR.

    python -m experiments.sweep --grid experiments/grids/masking_cpu.py --out runs/sweep_cpu \
        --stage1 runs/demo/stage1/params --llm-states runs/demo/llm_states.npz --eval-dialogues 40 --answers reference

Measured on the idle 2 cores with --eval-dialogues 40: 9 decoders trained (~1.3 min each) plus
token2wav (~3 min), then 33 rows evaluated at ~43 s each: 39.4 min in all (README "Ablation sweeps").
Copy the demo's token2wav.msgpack into --out first, or the sweep trains its own.
"""

MASKING = ("iid", "blockwise", "sampler_states", "sampler_states_confidence")
DENOISE_STEPS = (1, 2, 4, 8)
BLOCK_SIZE = (15,)
DISTILL_ROUNDS = (0, 1)
AR_REFERENCE = True
