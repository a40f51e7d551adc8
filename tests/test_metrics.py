"""Evaluators against hand-computed values."""

import numpy as np
import pytest

from mdm_jax.eval.metrics import first_audio_seconds, text_accuracy, unit_accuracy

pytest.importorskip("jiwer")
pytest.importorskip("transformers")


def test_text_accuracy_normalises_numbers_and_case():
    m = text_accuracy(["Two plus four is 6.", "monday"], ["two plus four is six", "tuesday"])
    assert m["text_accuracy"] == 0.5
    assert m["text_wer"] == pytest.approx(1 / 5)  # normalised "2 +4 is 6" + "tuesday": one word of five wrong


def test_unit_accuracy_counts_missing_positions_as_wrong():
    m = unit_accuracy([np.array([1, 2, 3]), np.array([5, 6, 7, 8])], [np.array([1, 0, 3, 4]), np.array([5, 6])])
    assert m["unit_accuracy"] == pytest.approx(4 / 6)  # 2 of 4, then 2 of 2
    assert m["length_ratio"] == pytest.approx((3 / 4 + 4 / 2) / 2)


def test_first_audio_seconds_times_a_warm_call_on_the_first_chunk_only():
    seen = []
    def token2wav(units):
        seen.append(units.tolist())
        return np.zeros(640 * len(units), np.float32)

    seconds = first_audio_seconds(token2wav, [np.arange(40), np.arange(7)], chunk=15)
    assert seconds >= 0
    assert seen == [list(range(15))] * 2 + [list(range(7))] * 2  # each chunk once to warm up, once timed
