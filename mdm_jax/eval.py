"""Evaluators: small functions from generated outputs (and references) to a dict of numbers,
shared by the demo, the sweeps and the tests. Text is compared after Whisper's English
normaliser, so "seven" and "7" agree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mdm_jax.asr import WhisperASR, normalize, transcribe, word_error_rate
from mdm_jax.token2wav import Token2Wav


def text_accuracy(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match of normalised answers, and their word error rate."""
    exact = [normalize(h) == normalize(r) for h, r in zip(hypotheses, references, strict=True)]
    return {"text_accuracy": float(np.mean(exact)), "text_wer": word_error_rate(references, hypotheses)}


def unit_accuracy(generated: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> dict[str, float]:
    """Position-aligned agreement with the reference units over the reference length (a missing
    position counts as wrong), and generated / reference length."""
    hits = total = 0
    ratios = []
    for g, r in zip(generated, references, strict=True):
        g, r = np.asarray(g), np.asarray(r)
        n = min(len(g), len(r))
        hits += int((g[:n] == r[:n]).sum())
        total += len(r)
        ratios.append(len(g) / max(len(r), 1))
    return {"unit_accuracy": hits / max(total, 1), "length_ratio": float(np.mean(ratios))}


def speech_wer(units: Sequence[np.ndarray], references: Sequence[str], token2wav: Token2Wav,
               asr: WhisperASR | None = None) -> dict[str, float]:
    """Units -> waveform -> the ASR judge -> WER against the reference answers."""
    wavs = [token2wav(np.asarray(u)) if len(u) else np.zeros(1600, np.float32) for u in units]
    hypotheses = transcribe(wavs, asr)
    return {"wer": word_error_rate(references, hypotheses), "transcripts": hypotheses}
