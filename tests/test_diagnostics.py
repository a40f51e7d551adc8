"""The Talker diagnostics against hand-computed values, and the masked-ratio probe's counts."""

import dataclasses

import jax
import numpy as np
import pytest

from mdm_jax.config.model import get_config
from mdm_jax.eval.diagnostics import (
    accuracy_by_position,
    block_mask_shares,
    end_of_speech,
    frequency_bias,
    length_errors,
    loss_by_mask_ratio,
)
from mdm_jax.model.vocalnet import random_params


def test_accuracy_by_position_and_block():
    refs = [np.array([1, 2, 3, 4, 5, 6]), np.array([7, 8, 9])]
    gens = [np.array([1, 0, 3, 4, 0]), np.array([7, 8, 0, 5])]  # the first is one short: position 5 wrong
    m = accuracy_by_position(gens, refs, block_size=4, anchors=1)
    # right: [T F T T | F F] and [T T F]; position in block 0: T F T, 1: F F T, 2: T F, 3: T
    assert [c.value for c in m["position"]] == pytest.approx([2 / 3, 1 / 3, 1 / 2, 1.0])
    assert m["anchor"].value == pytest.approx(2 / 3) and m["rest"].value == pytest.approx(3 / 6)
    assert [c.value for c in m["block"]] == [pytest.approx(5 / 7), 0.0]
    assert m["anchor"].num.tolist() == [[1, 1]] and m["anchor"].den.tolist() == [[2, 1]]  # per dialogue


def test_length_errors():
    m = length_errors([np.zeros(5), np.zeros(8), np.zeros(2)], [np.zeros(4), np.zeros(4), np.zeros(2)], max_units=8)
    assert m["mean_excess"] == pytest.approx(5 / 3) and m["longer"] == pytest.approx(2 / 3)
    assert m["exact"] == pytest.approx(1 / 3) and m["unended"] == pytest.approx(1 / 3)
    assert m["excess_when_longer"] == pytest.approx(2.5)


def test_frequency_bias():
    freq = np.array([10, 9, 1, 1, 1])  # units 0 and 1 are the frequent ones (top 2)
    refs = [np.array([0, 2, 3, 4]), np.array([1, 1, 2])]
    gens = [np.array([0, 0, 3, 0]), np.array([1, 1, 1])]
    m = frequency_bias(gens, refs, frequencies=freq, top=2)
    assert m["reference_share"] == pytest.approx(3 / 7) and m["generated_share"] == pytest.approx(6 / 7)
    assert m["over_use"] == pytest.approx(2.0)
    assert m["frequent_for_rare"] == 1.0  # every miss put 0 or 1 where a rare unit was
    assert m["generated_repeats"] == pytest.approx(3 / 5) and m["reference_repeats"] == pytest.approx(1 / 5)


def test_loss_by_mask_ratio_counts_and_eos():
    cfg = get_config("tiny", ["speech_decoder.num_layers=1", "speech_decoder.num_units=32"])
    params = random_params(cfg)["speech_decoder"]
    rng = np.random.default_rng(0)
    hiddens = [rng.standard_normal((n, cfg.llm.d_model)).astype(np.float32) for n in (5, 9)]
    units = [rng.integers(0, 32, n) for n in (20, 7)]  # + EOS: 21 and 8 valid tokens over blocks of 16
    out = loss_by_mask_ratio(params, cfg, hiddens, units, (0.5, 1.0), jax.random.key(1), draws=2)
    assert out[1.0]["count"] == 2 * (21 + 8)  # every valid token masked, twice
    assert out[0.5]["count"] == 2 * (8 + 3 + 4)  # ceil(v / 2) per block: 16 -> 8, 5 -> 3, 8 -> 4
    sd = cfg.speech_decoder
    eos_wins = dataclasses.replace(cfg)  # the same config; the head's EOS bias makes EOS every argmax
    head = dict(params["head"], b=params["head"]["b"].at[sd.eos_id].set(1e4))
    out = loss_by_mask_ratio(dict(params, head=head), eos_wins, hiddens, units, (1.0,), jax.random.key(1), draws=1)
    assert out[1.0]["eos_accuracy"] == 1.0 and out[1.0]["accuracy"] == pytest.approx(2 / 29)


def test_end_of_speech_views():
    cfg = get_config("tiny", ["speech_decoder.num_layers=1", "speech_decoder.num_units=32"])
    params = random_params(cfg)["speech_decoder"]
    rng = np.random.default_rng(0)
    hiddens = [rng.standard_normal((n, cfg.llm.d_model)).astype(np.float32) for n in (5, 9, 4)]
    whole = [rng.integers(0, 32, n) for n in (15, 31)]  # + EOS: whole blocks, no key after EOS to drop
    out = end_of_speech(params, cfg, hiddens[:2], whole)
    assert out["pad"] == out["sampler"]
    out = end_of_speech(params, cfg, hiddens, [*whole, rng.integers(0, 32, 6)])
    for view in out.values():
        assert sum(view[k] for k in ("early", "late", "none")) + view["eos_accuracy"] <= 1 + 1e-9
    sd = cfg.speech_decoder  # EOS every argmax: each first EOS at its block's first position, before the true end
    head = dict(params["head"], b=params["head"]["b"].at[sd.eos_id].set(1e4))
    out = end_of_speech(dict(params, head=head), cfg, hiddens, [*whole, rng.integers(0, 32, 6)])
    for view in out.values():
        assert view["eos_accuracy"] == 1.0 and view["early"] == 1.0 and view["late"] == view["none"] == 0


def test_block_mask_shares():
    valid = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]], bool)
    target = np.array([[1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]], bool)
    m = block_mask_shares(target, valid, block_size=4, bins=4)  # blocks: 4/4, 1/2, 0/4 (the empty one left out)
    assert m["fully_masked"] == pytest.approx(1 / 3) and m["clean"] == pytest.approx(1 / 3)
    assert m["mean"] == pytest.approx(0.5)
    assert m["histogram"] == pytest.approx([0, 0, 1 / 3, 1 / 3])  # 0.5 in [0.5, 0.75), 1.0 in [0.75, 1]
