"""The commit rule of a denoising step on hand-computed cases: prior-calibrated confidence ranks a
rare token above a frequent one of equal or higher probability; the early exit commits the rest of
a row only when every remaining masked token's proposal is that probable."""

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.decode.sampling import block_prior, commit, confidence

# Three masked positions over three tokens: two lean to token 0 (frequent in this block), one to token 2.
PROBS = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
COMMITTED = np.array([0.0, 0.0, 1.0])  # a fourth, already committed position: not part of the block's prior


def _batch():
    probs = np.concatenate([PROBS, COMMITTED[None] * 0.98 + 0.01], 0)[None]  # (1, 4, 3)
    return jnp.log(jnp.asarray(probs, jnp.float32)), jnp.array([[True, True, True, False]])


def test_calibrated_confidence_by_hand():
    logits, masked = _batch()
    probs = jax.nn.softmax(logits, -1)
    tokens = jnp.argmax(probs, -1)
    prior = PROBS.mean(0)  # [0.533, 0.167, 0.3]: over the masked positions only
    expected = np.log([0.8 / prior[0], 0.7 / prior[0], 0.7 / prior[2]])  # [0.405, 0.272, 0.847]
    score = confidence(probs, tokens, "calibrated", prior=block_prior(probs, masked))
    np.testing.assert_allclose(np.asarray(score)[0, :3], expected, rtol=1e-5)
    assert np.argmax(np.asarray(confidence(probs, tokens, "max_prob"))[0, :3]) == 0  # uncalibrated: the frequent one


def test_calibrated_commit_takes_the_rare_token_first():
    logits, masked = _batch()
    tokens = jnp.full((1, 4), -1).at[0, 3].set(2)
    for kind, first in (("max_prob", 0), ("calibrated", 2)):
        new, left, take = commit(logits, tokens, masked, jnp.array([1]), jax.random.key(0),
                                 SamplerConfig(confidence=kind))
        assert np.flatnonzero(np.asarray(take)[0]).tolist() == [first]
        assert np.asarray(new)[0, first] == [0, 0, 2][first] and np.asarray(left)[0].sum() == 2
        assert np.asarray(new)[0, 3] == 2  # committed positions keep their token


def test_early_exit_commits_the_rest_only_when_all_are_sure():
    logits, masked = _batch()
    logits, masked = jnp.concatenate([logits, logits]), jnp.concatenate([masked, masked])
    tokens = jnp.full((2, 4), -1)
    # max_prob scores 0.8, 0.7, 0.7: one scheduled commit (0.8); the rest is 0.7 confident
    for exit_at, committed in ((0.65, 3), (0.75, 1)):
        _, left, take = commit(logits, tokens, masked, jnp.array([1, 1]), jax.random.key(0),
                               SamplerConfig(early_exit=exit_at))
        assert np.asarray(take).sum(1).tolist() == [committed, committed]
        assert np.asarray(left).sum(1).tolist() == [3 - committed] * 2
