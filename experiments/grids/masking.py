"""The masking ablation of stage II: which forward process trains the best few-step block
diffusion Talker, at which block size, and how much each self-distillation adds.

    python -m experiments.sweep --grid experiments/grids/masking.py --out runs/sweep

Axes are config values only (the budget and the preset come from `experiments.recipe`), so the same
grid runs on a pod with a bigger preset. 6 strategies x 3 block sizes = 18 stage II Talkers, each
distilled the paper's way (18 more) and ours with 1, 2 and 3 SDTT rounds (54 more), all evaluated
at every steps value.
"""

MASKING = ("bernoulli", "hierarchical", "iid", "blockwise", "sampler_states", "sampler_states_confidence")
DENOISE_STEPS = (1, 2, 4, 8, 16)  # model.sampler.denoise_steps: an evaluation axis only
BLOCK_SIZE = (8, 16, 32)  # model.speech_decoder.block_size (4 anchors each)
DISTILL = (("hierarchical", 0.7),)  # the paper's: (mask.strategy, distill.alpha)
DISTILL_ROUNDS = (0, 1, 2, 3)  # ours: students of 2^(r-1), ..., 1 steps per block; 0: the stage II Talker
AR_REFERENCE = True  # one AR Talker (default block size): the speed reference
