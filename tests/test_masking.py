"""Statistics of the noise schedules and masking strategies, checked against their definitions."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from per_layer import per_layer_map
from small_train import small_overrides

from mdm_jax.config.mask import MaskConfig
from mdm_jax.config.train import get_train_config
from mdm_jax.decode.sampling import speech_only
from mdm_jax.diffusion.losses import mdm_loss
from mdm_jax.diffusion.masking import MASKING, corrupt, sampler_state_levels, sampler_states_mask
from mdm_jax.diffusion.schedules import elbo_weight, mask_prob, sample_t, step_schedule
from mdm_jax.model.denoiser import denoiser
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train import objectives

MASK = 1000


_corrupt = jax.jit(corrupt, static_argnums=3, static_argnames=("block_size", "mask_id"))  # one compile per config


def draw(strategy, units, valid, seed=0, block_size=15, **kw):
    c = _corrupt(jax.random.key(seed), jnp.asarray(units), jnp.asarray(valid), MaskConfig(strategy, **kw),
                 block_size=block_size, mask_id=MASK)
    return jax.tree.map(np.asarray, c)


def lengths_valid(lengths, n):
    return np.arange(n)[None, :] < np.asarray(lengths)[:, None]


# --- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_step_schedule_properties(schedule):
    for b, s in itertools.product([1, 2, 5, 15, 16, 32], [1, 2, 3, 4, 8, 15, 16, 32]):
        n = step_schedule(b, s, schedule)
        assert n.shape == (s + 1,) and n[0] == b and n[-1] == 0
        assert np.all(np.diff(n) <= 0) and np.all(n[:-1] >= 1)
        if s <= b:
            assert np.all(np.diff(n) < 0), (b, s, n)


def test_linear_step_schedule_is_ceil_of_the_line():
    for b, s in itertools.product(range(1, 33), range(1, 33)):
        expected = [-(-b * (s - j) // s) for j in range(s + 1)]  # exact integer ceil(B (S - j) / S)
        assert step_schedule(b, s).tolist() == expected, (b, s)


def test_cosine_step_schedule_keeps_more_masked_than_linear():
    for b, s in itertools.product([15, 30], [2, 4, 8]):
        assert np.all(step_schedule(b, s, "cosine") >= step_schedule(b, s, "linear"))
    assert step_schedule(30, 4, "cosine")[1] > step_schedule(30, 4, "linear")[1]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_mask_prob_and_elbo_weight(schedule):
    t = jnp.linspace(0.01, 1.0, 50)
    m = mask_prob(schedule, t)
    np.testing.assert_allclose(mask_prob(schedule, jnp.array([0.0, 1.0])), [0.0, 1.0], atol=1e-6)
    assert np.all(np.diff(m) > 0)
    d_log_m = jax.vmap(jax.grad(lambda x: jnp.log(mask_prob(schedule, x))))(t)  # ELBO weight = (log m)'
    np.testing.assert_allclose(elbo_weight(schedule, t), d_log_m, rtol=1e-4)


@pytest.mark.parametrize("method", ["iid", "antithetic", "stratified"])
def test_sample_t_is_uniform_on_the_window(method):
    draw_t = jax.jit(lambda key: sample_t(key, (400, 25), t_min=0.2, t_max=0.6, method=method))
    t = np.asarray(draw_t(jax.random.key(1))).ravel()
    assert t.min() > 0.2 and t.max() <= 0.6
    counts = np.histogram(t, bins=8, range=(0.2, 0.6))[0]
    expected = t.size / 8
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected)), counts


def test_antithetic_and_stratified_structure():
    draw_t = jax.jit(sample_t, static_argnums=1, static_argnames="method")
    t = np.asarray(draw_t(jax.random.key(2), (64,), method="antithetic"))
    np.testing.assert_allclose(t[:32] + t[32:], 1.0, atol=1e-6)
    t = np.asarray(draw_t(jax.random.key(3), (64,), method="stratified"))
    assert sorted(np.floor(t * 64).astype(int).tolist()) == list(range(64))  # one per stratum


# --- strategies: common contract ----------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(MASKING))
def test_padding_never_masked_and_tokens_match_targets(strategy):
    units = np.random.default_rng(0).integers(0, 500, (64, 47)).astype(np.int32)
    valid = lengths_valid(np.random.default_rng(1).integers(0, 48, 64), 47)
    c = draw(strategy, units, valid, block_size=5, denoise_steps=4)
    masked = c.tokens == MASK
    assert not np.any(masked & ~valid) and not np.any(c.is_target & ~valid)
    np.testing.assert_array_equal(c.tokens[~masked], units[~masked])
    assert np.all(masked[c.is_target])  # every target is masked in the input
    if strategy != "sampler_states_single":  # there, later blocks are masked inputs, not targets
        np.testing.assert_array_equal(masked, c.is_target)
    assert c.tokens.dtype == units.dtype and np.all(np.isfinite(c.weight))


@pytest.mark.parametrize("strategy", ["iid", "sampler_states"])  # the two code paths of the weight
def test_unweighted_is_one(strategy):
    c = draw(strategy, np.zeros((8, 30), int), np.ones((8, 30), bool), block_size=5, denoise_steps=4, elbo=False)
    np.testing.assert_array_equal(c.weight, 1.0)


# --- the paper's: bernoulli and hierarchical ----------------------------------------------


def ceil_law(c, lo, hi):
    """(c + 1,) P(ceil(γ c) = k) for k = 0..c, γ ~ U(lo, hi]."""
    k = np.arange(c + 1)
    return np.clip(np.minimum(k / c, hi) - np.maximum((k - 1) / c, lo), 0.0, None) / (hi - lo)


def assert_law(samples, p):
    """samples: ints drawn from the law p (k,), each frequency within 5 binomial sd (exactly 0 where p = 0)."""
    freq = np.bincount(samples, minlength=p.size) / samples.size
    assert freq.size == p.size and np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / samples.size)), (freq, p)


def test_bernoulli_ratio_per_sequence_and_independent_tokens():
    b, n = 4096, 40
    lengths = np.random.default_rng(12).integers(0, n + 1, b)
    valid = lengths_valid(lengths, n)
    c = draw("bernoulli", np.zeros((b, n), int), valid)
    assert not c.is_target[~valid].any()
    assert np.all(c.weight == c.weight[:, :1])  # one ratio per sequence
    gamma = 1 / c.weight[:, 0]  # the weight is 1/γ_g
    assert gamma.min() > 0.3 - 1e-6 and gamma.max() < 0.8 + 1e-6
    counts = np.histogram(gamma, bins=10, range=(0.3, 0.8))[0]
    assert np.all(np.abs(counts - b / 10) < 5 * math.sqrt(b / 10)), counts
    ok = lengths > 0
    g, v = gamma[ok], lengths[ok]
    z = (c.is_target.sum(1)[ok] - v * g) / np.sqrt(v * g * (1 - g))  # standardised binomial residual
    bins = np.digitize(g, np.linspace(0.3, 0.8, 6)[1:-1])
    for i in range(5):  # the masked fraction follows γ_g over its whole window
        assert abs(z[bins == i].mean()) < 5 / math.sqrt((bins == i).sum()), i
    assert abs((z**2).mean() - 1) < 5 * math.sqrt(2 / z.size)  # binomial spread: tokens masked independently
    unweighted = draw("bernoulli", np.zeros((8, n), int), np.ones((8, n), bool), elbo=False)
    np.testing.assert_array_equal(unweighted.weight, 1.0)


def hierarchical_draw(bs=8, blocks=5, b=8192, **kw):
    """Rows of every length 0..bs·blocks (fully padded rows, partial last blocks) -> (c, masked count per
    block (b, blocks), valid tokens per block (b, blocks), weight at each block's first token (b, blocks))."""
    lengths = np.random.default_rng(13).integers(0, bs * blocks + 1, b)
    valid = lengths_valid(lengths, bs * blocks)
    c = draw("hierarchical", np.zeros(valid.shape, int), valid, block_size=bs, **kw)
    per_block = lambda x: x.reshape(b, blocks, bs)
    return c, per_block(c.is_target).sum(-1), per_block(valid).sum(-1), per_block(c.weight)[..., 0]


def test_hierarchical_chooses_ceil_of_block_ratio_blocks_uniformly():
    c, count, v, _ = hierarchical_draw()
    chosen = count > 0  # a chosen block has >= 1 target, an unchosen one none
    assert not np.any(chosen & (v == 0)) and np.all(np.isfinite(c.weight))
    num_valid_blocks = (v > 0).sum(-1)
    assert not chosen[num_valid_blocks == 0].any()  # fully padded rows
    for nb in range(1, 6):  # ceil(γ_c · blocks with a valid token), γ_c ~ U(0.5, 1.0]
        assert_law(chosen[num_valid_blocks == nb].sum(-1), ceil_law(nb, 0.5, 1.0))
    full = num_valid_blocks == 5
    p = (ceil_law(5, 0.5, 1.0) * np.arange(6)).sum() / 5  # every block equally likely to be among them
    freq = chosen[full].mean(0)
    assert np.all(np.abs(freq - p) < 5 * math.sqrt(p * (1 - p) / full.sum())), (freq, p)


def test_hierarchical_masks_ceil_of_token_ratio_per_chosen_block():
    bs = 8
    c, count, v, weight = hierarchical_draw(bs=bs)
    chosen = count > 0
    for vi in range(1, bs + 1):  # ceil(γ_t v) >= 1 of v valid tokens, γ_t ~ U(0.3, 1.0]; partial blocks too
        assert_law(count[chosen & (v == vi)], ceil_law(vi, 0.3, 1.0))
    np.testing.assert_allclose(weight[chosen], v[chosen] / count[chosen], rtol=1e-6)  # ELBO weight v / count
    both = chosen[:, 0] & chosen[:, 1] & (v[:, 1] == bs)  # one γ_t per block: counts of a row's blocks uncorrelated
    assert abs(np.corrcoef(count[both, 0], count[both, 1])[0, 1]) < 0.1
    tokens = c.is_target.reshape(count.shape + (bs,))[chosen & (v == bs)]  # (blocks, bs)
    p = (ceil_law(bs, 0.3, 1.0) * np.arange(bs + 1)).sum() / bs  # the masked tokens are uniform over positions
    assert np.all(np.abs(tokens.mean(0) - p) < 5 * math.sqrt(p * (1 - p) / tokens.shape[0])), tokens.mean(0)
    _, _, _, unweighted = hierarchical_draw(bs=bs, elbo=False)
    np.testing.assert_array_equal(unweighted, 1.0)


# --- iid and blockwise --------------------------------------------------------------------


def assert_fraction_follows_level(frac, m, size):
    """frac: masked fraction of `size` tokens drawn at mask probability m, compared per bin of m."""
    bins = np.digitize(m, np.linspace(0, 1, 6)[1:-1])
    for i in range(5):
        r = (frac - m)[bins == i]
        assert r.size > 50 and abs(r.mean()) < 5 * math.sqrt(0.25 / size / r.size), (i, r.mean())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_iid_masked_fraction_is_mask_prob(schedule):
    b, n = 4096, 32
    c = draw("iid", np.zeros((b, n), int), np.ones((b, n), bool), schedule=schedule)
    assert np.all(c.weight == c.weight[:, :1])  # one level per sequence
    w = c.weight[:, 0]
    t = 1 / w if schedule == "linear" else 2 / math.pi * np.arctan(math.pi / 2 / w)  # invert m'/m
    assert abs(t.mean() - 0.5) < 0.01
    m = t if schedule == "linear" else np.sin(math.pi * t / 2)
    assert_fraction_follows_level(c.is_target.mean(1), m, n)
    if schedule == "linear":
        assert abs(c.is_target.mean() - 0.5) < 0.01


def test_clipped_window():
    c = draw("iid", np.zeros((512, 16), int), np.ones((512, 16), bool), t_min=0.25, t_max=0.5)
    t = 1 / c.weight[:, 0]
    assert t.min() > 0.25 - 1e-6 and t.max() < 0.5 + 1e-6 and abs(t.mean() - 0.375) < 0.01


def test_blockwise_one_level_per_block():
    bs, n, b = 8, 64, 2048
    c = draw("blockwise", np.zeros((b, n), int), np.ones((b, n), bool), block_size=bs)
    w = c.weight.reshape(b, n // bs, bs)
    assert np.all(w == w[..., :1])
    t = 1 / w[..., 0]
    frac = c.is_target.reshape(b, n // bs, bs).mean(-1)
    assert abs(t.mean() - 0.5) < 0.01
    assert_fraction_follows_level(frac.ravel(), t.ravel(), bs)
    # blocks of one sequence have their own levels: their fractions are (nearly) uncorrelated
    assert abs(np.corrcoef(frac[:, 0], frac[:, 1])[0, 1]) < 0.1


# --- sampler states -----------------------------------------------------------------------


@pytest.mark.parametrize("schedule,steps", [("linear", 4), ("cosine", 4), ("linear", 16)])
def test_sampler_states_counts_are_the_sampler_states(schedule, steps):
    bs, blocks, b = 15, 6, 2000
    c = draw(
        "sampler_states",
        np.zeros((b, bs * blocks), int),
        np.ones((b, bs * blocks), bool),
        block_size=bs,
        denoise_steps=steps,
        schedule=schedule,
    )
    counts = c.is_target.reshape(b, blocks, bs).sum(-1).ravel()
    n = step_schedule(bs, steps, schedule)[:-1]  # states n_0 .. n_{S-1} seen as sampler inputs
    assert set(counts.tolist()) <= set(n.tolist()) and counts.min() >= 1
    expected = {v: (n == v).mean() for v in set(n.tolist())}  # j ~ U{0..S-1}
    for v, p in expected.items():
        assert abs((counts == v).mean() - p) < 5 * math.sqrt(p * (1 - p) / counts.size), (v, p)
    w = c.weight.reshape(b, blocks, bs)
    np.testing.assert_allclose(w[..., 0].ravel(), bs / counts, rtol=1e-6)  # ELBO weight B / n_j


def test_sampler_states_partial_last_block():
    bs, steps = 10, 5
    n = step_schedule(bs, steps)[:-1]
    valid = np.tile(lengths_valid([27, 21, 30, 20], 30), (50, 1))  # last blocks with 7, 1, 10, 0 tokens
    c = draw("sampler_states", np.zeros(valid.shape, int), valid, block_size=bs, denoise_steps=steps)
    last = c.is_target[:, 20:].sum(1)
    v = valid[:, 20:].sum(1)
    for vi in (0, 1, 7, 10):  # a last block with v valid tokens keeps ceil(n_j v / B) masked
        seen = set(last[v == vi].tolist())
        assert seen == ({math.ceil(nj * vi / bs) for nj in n} if vi else {0}), (vi, seen)
    ok = v > 0
    np.testing.assert_allclose(c.weight[ok, 20], v[ok] / last[ok], rtol=1e-6)


def test_sampler_states_uniform_choice_is_uniform_over_positions():
    bs = 6
    c = draw("sampler_states", np.zeros((20000, bs), int), np.ones((20000, bs), bool), block_size=bs, denoise_steps=3)
    per_position = c.is_target.mean(0)
    assert np.ptp(per_position) < 0.03, per_position


def test_sampler_states_confidence_order():
    bs, b, n = 5, 32, 23
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(b, n))
    valid = lengths_valid(rng.integers(1, n + 1, b), n)
    cfg = MaskConfig("sampler_states", denoise_steps=3)
    mask = jax.jit(sampler_states_mask, static_argnums=3, static_argnames=("block_size", "mask_id"))
    c = mask(jax.random.key(5), jnp.zeros((b, n), int), jnp.asarray(valid), cfg, jnp.asarray(scores), block_size=bs,
             mask_id=MASK)
    target = np.asarray(c.is_target)
    for i, start in itertools.product(range(b), range(0, n, bs)):
        sl = slice(start, start + bs)
        s, m, v = scores[i, sl], target[i, sl], valid[i, sl]
        if m.any() and (v & ~m).any():  # the masked ones are the least confident valid tokens
            assert s[m].max() < s[v & ~m].min()


def assert_least_confident_masked(scores, target, valid, bs):
    """In every block of every row, the masked tokens score no higher than the valid unmasked ones."""
    for i, start in itertools.product(range(target.shape[0]), range(0, target.shape[1], bs)):
        s, m, v = scores[i, start:start + bs], target[i, start:start + bs], valid[i, start:start + bs]
        if m.any() and (v & ~m).any():
            assert s[m].max() <= s[v & ~m].min(), (i, start)


def test_sampler_states_confidence_objective():
    """mask.strategy=sampler_states_confidence: `prepare` draws the same per-block counts as the
    uniform variant from the same key; the loss masks the decoder's least confident tokens."""
    cfg = get_train_config("tiny", small_overrides() + ["mask.strategy=sampler_states_confidence",
                                                         "mask.denoise_steps=4"])
    sd, b, t, u = cfg.model.speech_decoder, 6, 7, 4 * cfg.model.speech_decoder.block_size
    rng = np.random.default_rng(9)
    valid = lengths_valid(rng.integers(1, u + 1, b), u)
    batch = {"text_hidden": jnp.asarray(rng.normal(size=(b, t, sd.d_model)), jnp.float32),
             "text_valid": jnp.asarray(lengths_valid(rng.integers(1, t + 1, b), t)),
             "units": jnp.asarray(np.where(valid, rng.integers(0, sd.num_units, (b, u)), sd.pad_id), jnp.int32),
             "speech_valid": jnp.asarray(valid)}
    params = random_params(cfg.model)["speech_decoder"]
    params = per_layer_map(lambda p: p * 4.0 if p.ndim == 2 else p, params)  # spread the confidences apart

    @jax.jit
    def run(batch):
        prepared = objectives.prepare(batch, jax.random.key(1), cfg)
        denoise = denoiser(cfg.model, prepared)
        noisy = objectives.confidence_corruption(params, denoise, prepared, cfg)
        probs = jax.nn.softmax(speech_only(denoise(params, jnp.where(batch["speech_valid"], sd.mask_id,
                                                                     batch["units"])), sd), -1)
        uniform = objectives.prepare(batch, jax.random.key(1), get_train_config("tiny", small_overrides() + [
            "mask.strategy=sampler_states", "mask.denoise_steps=4"]))
        loss, _ = objectives.speech_objective(params, prepared, cfg)
        return noisy, probs.max(-1), uniform["noisy_target"], loss

    noisy, scores, uniform, loss = jax.tree.map(np.asarray, run(batch))
    bs = sd.block_size
    np.testing.assert_array_equal(noisy.is_target.reshape(b, -1, bs).sum(-1), uniform.reshape(b, -1, bs).sum(-1))
    assert noisy.is_target.any() and not np.array_equal(noisy.is_target, uniform)
    assert_least_confident_masked(scores, noisy.is_target, valid, bs)
    np.testing.assert_array_equal(noisy.tokens == sd.mask_id, noisy.is_target)
    assert np.isfinite(loss)


def test_sampler_state_levels_are_the_uniform_variants():
    """Split in two halves (levels with the batch, tokens from scores later), `sampler_states` keeps
    its per-block counts and the scores choose which tokens: the least confident, ties at random."""
    bs, b, n = 5, 64, 23
    rng = np.random.default_rng(10)
    valid = lengths_valid(rng.integers(1, n + 1, b), n)
    scores = np.round(rng.normal(size=(b, n)), 0)  # coarse: many ties
    cfg = MaskConfig("sampler_states", denoise_steps=3)
    key, units = jax.random.key(11), jnp.zeros((b, n), int)
    uniform = np.asarray(_corrupt(key, units, jnp.asarray(valid), cfg, block_size=bs, mask_id=MASK).is_target)
    count, tiebreak = jax.jit(sampler_state_levels, static_argnums=2, static_argnames="block_size")(
        key, jnp.asarray(valid), cfg, block_size=bs)
    scored = np.asarray(jax.jit(sampler_states_mask, static_argnums=3, static_argnames=("block_size", "mask_id"))(
        key, units, jnp.asarray(valid), cfg, jnp.asarray(scores), block_size=bs, mask_id=MASK).is_target)
    per_block = lambda m: np.pad(m, ((0, 0), (0, -n % bs))).reshape(b, -1, bs).sum(-1)
    np.testing.assert_array_equal(per_block(uniform), count)
    np.testing.assert_array_equal(per_block(scored), count)
    assert_least_confident_masked(scores, scored, valid, bs)
    for i, start in itertools.product(range(b), range(0, n, bs)):
        sl = slice(start, start + bs)
        m, v, s, tb = scored[i, sl], valid[i, sl], scores[i, sl], np.asarray(tiebreak)[i, sl]
        for j, k in itertools.product(np.flatnonzero(m), np.flatnonzero(v & ~m)):
            assert s[j] < s[k] or (s[j] == s[k] and tb[j] < tb[k])  # ties: the lowest tie-break


def test_sampler_states_single_layout():
    bs, blocks, b = 4, 5, 3000
    lengths = np.random.default_rng(6).integers(1, bs * blocks + 1, b)
    valid = lengths_valid(lengths, bs * blocks)
    c = draw("sampler_states_single", np.zeros((b, bs * blocks), int), valid, block_size=bs, denoise_steps=4)
    n = set(step_schedule(bs, 4)[:-1].tolist())
    masked = (c.tokens == MASK).reshape(b, blocks, bs)
    target = c.is_target.reshape(b, blocks, bs)
    v = valid.reshape(b, blocks, bs)
    chosen = target.any(-1)
    assert np.all(chosen.sum(-1) == 1)  # exactly one target block per sequence
    tb = chosen.argmax(-1)
    num_valid_blocks = -(-lengths // bs)
    for i in range(b):
        assert not masked[i, : tb[i]].any()  # clean prefix
        np.testing.assert_array_equal(masked[i, tb[i] + 1 :], v[i, tb[i] + 1 :])  # fully masked future
        if v[i, tb[i]].all():
            assert target[i, tb[i]].sum() in n
    assert np.all(tb < num_valid_blocks)
    only_full = num_valid_blocks == blocks  # the target block is uniform among the valid blocks
    hist = np.bincount(tb[only_full], minlength=blocks) / only_full.sum()
    assert np.all(np.abs(hist - 1 / blocks) < 5 * math.sqrt(0.2 * 0.8 / only_full.sum()))


# --- span ---------------------------------------------------------------------------------


def _runs(row):
    """(start, length) of the maximal runs of True."""
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts, ends - starts))


@pytest.mark.parametrize("span", [1, 4])
def test_span_coverage_and_lengths(span):
    b, n, length = 4096, 40, 30
    c = draw("span", np.zeros((b, n), int), lengths_valid(np.full(b, length), n), span_length=span)
    t = 1 / c.weight[:, 0]
    assert_fraction_follows_level(c.is_target[:, :length].mean(1), t, length)
    for row in c.is_target[:200]:
        for start, run in _runs(row):
            if start > 0 and start + run < length:  # runs cut by the edges may be shorter
                assert run >= span
    assert not c.is_target[:, length:].any()


# --- the 1/t-weighted loss estimates the ELBO ---------------------------------------------


def test_elbo_weighted_loss_is_unbiased():
    """A context-free "model" whose prediction at position i depends only on how many of the L
    tokens are masked: the exact continuous-time ELBO (linear schedule) is a sum over mask subsets
    S of ∫ (1/t) t^|S| (1 - t)^(L - |S|) dt · Σ_{i∈S} CE_i(|S|), and ∫ = Beta(|S|, L - |S| + 1)."""
    length, vocab = 4, 3
    rng = np.random.default_rng(7)
    table = rng.normal(size=(length + 1, length, vocab)) * 1.5  # logits[num_masked, position]
    units = rng.integers(0, vocab, length)
    log_p = table - np.log(np.exp(table).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, np.broadcast_to(units, (length + 1, length))[..., None], -1)[..., 0]

    exact = 0.0
    for subset in itertools.product([0, 1], repeat=length):
        k = sum(subset)
        if k:
            beta = math.gamma(k) * math.gamma(length - k + 1) / math.gamma(length + 1)
            exact += beta * sum(ce[k, i] for i in range(length) if subset[i])

    b = 40000
    units_b, valid = np.broadcast_to(units, (b, length)), np.ones((b, length), bool)
    c = draw("iid", units_b, valid, seed=8)
    num_masked = c.is_target.sum(1)
    logits = jnp.asarray(table[num_masked])  # (b, L, V)
    loss, _ = jax.jit(mdm_loss)(logits, jnp.asarray(units_b), jax.tree.map(jnp.asarray, c), jnp.asarray(valid))
    per_seq = (c.weight * c.is_target * ce[num_masked[:, None], np.arange(length)]).sum(1)  # for the error bar
    se = per_seq.std() / math.sqrt(b)
    np.testing.assert_allclose(float(loss) * length, per_seq.mean(), rtol=1e-4)  # loss is per token
    assert abs(per_seq.mean() - exact) < 4 * se, (per_seq.mean(), exact, se)
    assert se < 0.02 * exact  # the test has the power to see a wrong weight
