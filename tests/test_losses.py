"""Losses against plain numpy re-implementations (float64 loops over positions)."""

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.diffusion.losses import mdm_loss, mtp_loss
from mdm_jax.diffusion.masking import Corruption


def np_ce(logits, label):
    """-log softmax(logits)[label] for one position, float64."""
    z = np.asarray(logits, np.float64)
    return np.log(np.exp(z - z.max()).sum()) + z.max() - z[label]


def random_batch(seed, b=3, length=11, v=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, length, v)).astype(np.float32) * 2
    tokens = rng.integers(0, v, (b, length)).astype(np.int32)
    valid = np.arange(length)[None] < rng.integers(1, length + 1, b)[:, None]
    return rng, logits, tokens, valid


def np_shifted_mean(logits, tokens, valid, shift):
    """Mean CE and accuracy of logits[:, i] against tokens[:, i + shift] over valid targets."""
    ce, correct = [], []
    for b in range(tokens.shape[0]):
        for i in range(tokens.shape[1] - shift):
            if valid[b, i + shift]:
                ce.append(np_ce(logits[b, i], tokens[b, i + shift]))
                correct.append(np.argmax(logits[b, i]) == tokens[b, i + shift])
    return np.mean(ce), np.mean(correct)


def test_mdm_loss_elbo_and_unweighted():
    rng, logits, units, valid = random_batch(0)
    target = valid & (rng.random(units.shape) < 0.5)
    weight = rng.uniform(1, 4, units.shape).astype(np.float32)
    corruption = Corruption(jnp.asarray(units), jnp.asarray(target), jnp.asarray(weight))

    total, n_valid, n_target, ce_sum, correct = 0.0, 0, 0, 0.0, 0
    for b in range(units.shape[0]):
        for i in range(units.shape[1]):
            n_valid += valid[b, i]
            if target[b, i]:
                ce = np_ce(logits[b, i], units[b, i])
                total += weight[b, i] * ce
                ce_sum += ce
                n_target += 1
                correct += np.argmax(logits[b, i]) == units[b, i]

    loss, metrics = jax.jit(mdm_loss)(logits, units, corruption, valid)  # default elbo=True
    np.testing.assert_allclose(loss, total / n_valid, rtol=1e-5)  # ELBO: per valid token
    np.testing.assert_allclose(metrics["accuracy"], correct / n_target, rtol=1e-6)
    np.testing.assert_allclose(metrics["ce"], ce_sum / n_target, rtol=1e-5)
    assert metrics["num_targets"] == n_target
    loss, _ = mdm_loss(logits, units, corruption, valid, elbo=False)
    np.testing.assert_allclose(loss, total / n_target, rtol=1e-5)  # unweighted: per target


def test_mdm_loss_without_targets_is_zero_not_nan():
    _, logits, units, valid = random_batch(1)
    none = Corruption(jnp.asarray(units), jnp.zeros(units.shape, bool), jnp.ones(units.shape))
    for elbo in (True, False):
        loss, metrics = mdm_loss(logits, units, none, valid, elbo=elbo)
        assert float(loss) == 0.0 and np.isfinite(metrics["accuracy"])


def test_ar_loss_the_main_head_alone_ignores_padding():
    _, logits, tokens, valid = random_batch(2)
    loss, metrics = mtp_loss([logits], tokens, valid)
    ref_loss, ref_acc = np_shifted_mean(logits, tokens, valid, 1)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy_0"], ref_acc, rtol=1e-6)
    predicts_nothing = np.ones_like(valid)  # the last position, and positions whose target is padding
    predicts_nothing[:, :-1] = ~valid[:, 1:]
    garbage = np.where(predicts_nothing[..., None], 1e4, logits)
    other_ids = np.where(valid, tokens, 6)
    np.testing.assert_allclose(mtp_loss([garbage], other_ids, valid)[0], loss, rtol=1e-6)


def test_mtp_loss_is_decayed_sum_of_shifted_ces():
    rng, _, tokens, valid = random_batch(3, length=13)
    heads = [rng.normal(size=tokens.shape + (7,)).astype(np.float32) * 2 for _ in range(4)]
    loss, metrics = jax.jit(mtp_loss)(heads, tokens, valid)  # default decay 0.8
    expected = 0.0
    for k, logits_k in enumerate(heads):  # head k at position i predicts tokens[i + k + 1]
        ce_k, _ = np_shifted_mean(logits_k, tokens, valid, k + 1)
        np.testing.assert_allclose(metrics[f"ce_{k}"], ce_k, rtol=1e-5)
        expected += 0.8**k * ce_k
    np.testing.assert_allclose(loss, expected, rtol=1e-5)



def test_bf16_logits_softmax_in_float32():
    _, logits, tokens, valid = random_batch(5, v=300)
    logits = jnp.asarray(logits * 20, jnp.bfloat16)  # large logits: a bf16 softmax would be off by ~1e-1
    loss, _ = jax.jit(mtp_loss)([logits], tokens, valid)
    assert loss.dtype == jnp.float32
    ref, _ = np_shifted_mean(np.asarray(logits.astype(jnp.float32)), tokens, valid, 1)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
