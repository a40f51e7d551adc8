"""The masking ablation of stage II: which forward process trains the best few-step block
diffusion decoder, at which block size, and how much self-distillation adds.

    python -m experiments.sweep --grid experiments/grids/masking.py --out runs/sweep

Axes are config values only (the budget and the preset come from `experiments.recipe`), so the same
grid runs on a pod with a bigger preset. 4 strategies x 3 block sizes = 12 MDM decoders, each
distilled for 1, 2 and 3 rounds (36 more), all evaluated at every steps value.
"""

MASKING = ("iid", "blockwise", "sampler_states", "sampler_states_confidence")  # mask.strategy
DENOISE_STEPS = (1, 2, 4, 8, 16)  # model.sampler.denoise_steps: an evaluation axis only
BLOCK_SIZE = (5, 15, 30)  # model.speech_decoder.block_size
DISTILL_ROUNDS = (0, 1, 2, 3)  # r > 0: students of 2^(r-1), ..., 1 steps per block; 0: the MDM itself
AR_REFERENCE = True  # one AR decoder (default block size): the speed reference
