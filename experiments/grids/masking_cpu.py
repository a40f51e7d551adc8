"""The masking ablation cut down for 2 CPU cores (the FULL budget's training steps, 40 dialogues):
4 stage II Talkers at the default block, each also distilled the paper's way, + AR.

    python -m experiments.sweep --grid experiments/grids/masking_cpu.py --out runs/sweep_cpu \\
        --stage1 runs/demo/stage1/params --llm-states runs/demo/llm_states.npz --eval-dialogues 40 --answers reference

Copy the demo's token2wav.msgpack into --out first, or the sweep trains its own.
"""

MASKING = ("bernoulli", "hierarchical", "iid", "sampler_states")
DENOISE_STEPS = (1, 2, 4, 8)
BLOCK_SIZE = (16,)
DISTILL = (("hierarchical", 0.7),)
AR_REFERENCE = True
