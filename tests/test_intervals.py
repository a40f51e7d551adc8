"""Bootstrap intervals of ratio figures: coverage of a known proportion, pairing, pooling over seeds."""

import numpy as np
import pytest

from mdm_jax.eval.intervals import Counts, called, difference, interval


def test_interval_covers_a_known_proportion_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p, hits = 0.3, 0
    for trial in range(200):  # 200 samples of 60 dialogues with 10 units each
        units = rng.binomial(10, p, 60)
        f = interval(Counts.of([(u, 10) for u in units]), seed=trial)
        assert f["lo"] <= f["value"] <= f["hi"]
        hits += f["lo"] <= p <= f["hi"]
    assert 0.88 <= hits / 200 <= 0.99


def test_the_ratio_is_of_sums_and_weighs_long_dialogues_more():
    f = interval(Counts.of([(1, 1), (0, 9)]))
    assert f["value"] == pytest.approx(0.1)  # not the mean of the per-dialogue ratios (0.5)
    assert interval(Counts.of([(3, 4)] * 5))["lo"] == interval(Counts.of([(3, 4)] * 5))["hi"] == 0.75


def test_a_paired_difference_is_called_only_when_its_interval_excludes_zero():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 10, 40)
    same = Counts.of([(b, 10) for b in base])
    better = Counts.of([(min(b + 2, 10), 10) for b in base])  # better on every dialogue
    noisy = Counts.of([(b, 10) for b in rng.permutation(base)])
    assert difference(same, same) == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert called(difference(better, same)) == 1 and called(difference(same, better)) == -1
    assert called(difference(noisy, same)) == 0  # the same scores on other dialogues: no difference to call
    # unpaired, the same gap would hide in the spread of the dialogues; paired it does not
    paired = difference(better, same)
    assert paired["hi"] - paired["lo"] < interval(better)["hi"] - interval(better)["lo"]


def test_pooled_seeds_move_together_and_shapes_must_agree():
    a, b = Counts.of([(1, 2), (2, 2)]), Counts.of([(0, 2), (2, 2)])
    pooled = Counts.pool([a, b])
    assert pooled.num.shape == (2, 2) and pooled.value == pytest.approx(5 / 8)
    again = Counts.from_json(pooled.to_json())
    assert np.array_equal(again.num, pooled.num) and np.array_equal(again.den, pooled.den)
    with pytest.raises(ValueError, match="same dialogues"):
        difference(pooled, a)
    with pytest.raises(ValueError, match="seeds, dialogues"):
        Counts(np.zeros(3), np.ones(3))


def test_with_seeds_the_interval_covers_the_run_to_run_spread():
    """Each seed's training moves its score (a run effect): resampling the seeds as well as the dialogues
    covers the true mean about as often as asked; dialogues alone (the seeds moving together) would not."""
    rng = np.random.default_rng(2)
    p, hits, narrow = 0.6, 0, 0
    for trial in range(200):  # 5 seeds, each shifted by its run, x 60 dialogues of 10 units
        runs = np.clip(p + rng.normal(0, 0.08, (5, 1)), 0, 1)
        units = rng.binomial(10, np.broadcast_to(runs, (5, 60)))
        counts = Counts(units.astype(float), np.full(units.shape, 10.0))
        f = interval(counts, seed=trial)
        hits += f["lo"] <= p <= f["hi"]
        one_run = Counts(units.sum(0, keepdims=True).astype(float), np.full((1, 60), 50.0))  # seeds together
        g = interval(one_run, seed=trial)
        narrow += g["lo"] <= p <= g["hi"]
    assert hits / 200 >= 0.8 and narrow / 200 <= 0.6

