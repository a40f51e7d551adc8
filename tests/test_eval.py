"""Evaluators against hand-computed values."""

import numpy as np
import pytest

from mdm_jax.eval import text_accuracy, unit_accuracy

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
