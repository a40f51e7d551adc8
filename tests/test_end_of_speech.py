"""`mask.after_eos`: the last block after EOS is filled with EOS (and trained) or left padding."""

import jax
import numpy as np

from mdm_jax.config.train import get_train_config
from mdm_jax.diffusion.end_of_speech import fill_after_eos
from mdm_jax.train.objectives import prepare

E, P = 9, 8  # EOS and PAD ids of this example


def test_fill_to_the_end_of_the_eos_block_only():
    units = np.array([[1, 2, E, P, P, P, P, P],   # EOS mid-block 0: fill 3
                      [1, 2, 3, E, P, P, P, P],   # EOS last of block 0: nothing to fill, block 1 stays padding
                      [1, 2, 3, 4, 5, E, P, P],   # EOS in block 1: fill 6, 7
                      [P, P, P, P, P, P, P, P]])  # an empty row (no EOS) stays empty
    valid = np.arange(8)[None] <= np.array([[2], [3], [5], [-1]])
    filled, filled_valid = map(np.asarray, fill_after_eos(units, valid, block_size=4, eos_id=E))
    np.testing.assert_array_equal(filled, [[1, 2, E, E, P, P, P, P], [1, 2, 3, E, P, P, P, P],
                                           [1, 2, 3, 4, 5, E, E, E], [P] * 8])
    np.testing.assert_array_equal(filled_valid, (filled != P))


def test_prepare_fills_for_block_diffusion_only():
    sd = get_train_config("tiny").model.speech_decoder
    B = sd.block_size
    units = np.full((2, 2 * B), sd.pad_id, np.int32)
    units[0, :5], units[0, 5] = 3, sd.eos_id
    units[1, :B + 2], units[1, B + 2] = 4, sd.eos_id
    batch = {"units": units, "speech_valid": units != sd.pad_id}
    for overrides, fills in ((["mask.after_eos=eos"], True), (["mask.after_eos=pad"], False),
                             (["mask.after_eos=eos", "stage.objective=ar"], False),
                             (["mask.after_eos=eos", "stage.name=distill"], True)):
        out = prepare(batch, jax.random.key(0), get_train_config("tiny", overrides))
        valid = np.asarray(out["speech_valid"]).sum(1)
        assert valid.tolist() == ([B, 2 * B] if fills else [6, B + 3]), overrides
        if "noisy_target" in out:  # the MDM corruption masks and trains the filled positions too
            assert not (np.asarray(out["noisy_target"]) & ~np.asarray(out["speech_valid"])).any()
            assert np.asarray(out["noisy_target"])[0, 6:B].any() == fills
