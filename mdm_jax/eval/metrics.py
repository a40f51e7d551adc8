"""Evaluators shared by the demo, the sweeps and the tests: the model's answers to spoken
questions (`answer_texts`), its speech decoded and timed by the model's sampler (`decode_speech`), and
small functions from outputs (and references) to a dict of numbers, each with its per-dialogue
`counts` for intervals (`mdm_jax.eval.intervals`). Text is compared after Whisper's English
normaliser, so "seven" and "7" agree."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import soxr
from tqdm import tqdm

from mdm_jax.config.model import ModelConfig
from mdm_jax.decode import speech
from mdm_jax.decode.layout import for_decoding
from mdm_jax.decode.streaming import batch_text_tokens, encode, text_tokens
from mdm_jax.eval.asr import WhisperASR, normalize, transcribe, word_error_rate, word_errors
from mdm_jax.eval.intervals import Counts
from mdm_jax.vocoder.base import Token2Wav


@dataclass(frozen=True)
class Answer:
    text_ids: list[int]  # greedy answer, end token included
    hidden: np.ndarray  # (len(text_ids), d) the LLM states the speech decoder reads


def answer_texts(params, cfg: ModelConfig, questions: Sequence[tuple[np.ndarray, Sequence[int]]], *, eos_id: int,
                 max_text_tokens: int = 32, batch_size: int = 8) -> list[Answer]:
    """questions: (mel (n_mels, frames), prompt ids) pairs -> the LLM's greedy answers, `batch_size`
    questions at a time (the batched path of `decode.streaming.stream_batch`; a short last batch is
    filled with copies of its last question, so every batch runs one compiled program)."""
    answers = []
    cfg, params = for_decoding(cfg, params)  # once, not per batch
    for start in tqdm(range(0, len(questions), batch_size), desc="answers", unit="batch"):
        group = list(questions[start : start + batch_size])
        n = len(group)
        group += group[-1:] * (batch_size - n)
        texts, states, ended = [[] for _ in group], [[] for _ in group], np.zeros(len(group), bool)
        for tokens, hidden in batch_text_tokens(params, cfg, [m for m, _ in group], [p for _, p in group],
                                                max_text_tokens=max_text_tokens):
            for i in np.flatnonzero(~ended):
                texts[i].append(int(tokens[i]))
                states[i].append(hidden[i])
                ended[i] = tokens[i] == eos_id
            if ended.all():
                break
        answers += [Answer(t, np.stack(h)) for t, h in zip(texts[:n], states[:n])]
    return answers


def _decoder(params, cfg: ModelConfig, blocks: int):
    """-> f(text_hidden (1, T, d), text_valid (1, T)) -> (tokens (1, N), lengths (1,), forwards ()); streaming."""
    streaming, key = jnp.ones((1,), bool), jax.random.key(0)
    cfg, params = for_decoding(cfg, params)  # once, not in every timed call

    def decode(h, v):
        out = speech.generate(params, h, v, streaming, key, cfg=cfg, num_blocks=blocks)
        return jax.block_until_ready((out.tokens, out.lengths, out.forwards))

    return decode


def decode_speech(params, cfg: ModelConfig, hiddens: Sequence[np.ndarray], *, max_blocks: int = 8,
                  text_capacity: int = 32) -> dict:
    """Speech units for each answer's states by `cfg.sampler` (batch 1, streaming mask), timed after a
    warm-up: {'units': [(U,)], 'forwards': [decoder forwards of each], 'tokens_per_s': all units / all
    decoding seconds, 'first_chunk_s': median seconds to the first `block_size` units}. params: the
    speech decoder's. Text is padded to `text_capacity` (one compile)."""
    whole, first = _decoder(params, cfg, max_blocks), _decoder(params, cfg, 1)
    units, forwards, seconds, first_chunk = [], [], [], []
    for i, h in enumerate(hiddens):
        t = min(len(h), text_capacity)
        text = jnp.asarray(np.pad(h[:t], ((0, text_capacity - t), (0, 0)))[None])
        valid = jnp.asarray(np.arange(text_capacity)[None] < t)
        if i == 0:  # compile both programs outside the clock
            whole(text, valid), first(text, valid)
        start = time.perf_counter()
        tokens, lengths, n = whole(text, valid)
        seconds.append(time.perf_counter() - start)
        forwards.append(int(n))
        start = time.perf_counter()
        first(text, valid)
        first_chunk.append(time.perf_counter() - start)
        units.append(np.asarray(tokens[0, : int(lengths[0])]))
    return {"units": units, "forwards": forwards, "tokens_per_s": sum(map(len, units)) / sum(seconds),
            "first_chunk_s": statistics.median(first_chunk)}


def first_text_seconds(params, cfg: ModelConfig, questions: Sequence[tuple[np.ndarray, Sequence[int]]], *,
                       eos_id: int, tokens: int) -> float:
    """Median seconds from a spoken question to its first `tokens` answer tokens: the encoder's and
    the LLM's share of the first speech chunk (encoder, prefill, greedy steps)."""
    def first(mel, prompt):
        return list(itertools.islice(text_tokens(params, cfg, mel, prompt, eos_ids={eos_id}), tokens))

    return statistics.median(_warm_seconds(first, mel, prompt) for mel, prompt in questions)


def encoder_seconds(params, cfg: ModelConfig, questions: Sequence[tuple[np.ndarray, Sequence[int]]]) -> float:
    """Median seconds of the speech encoder and adaptor on a spoken question: their share of
    `first_text_seconds`."""
    def run(mel):
        return jax.block_until_ready(encode(params, jnp.asarray(mel)[None], cfg=cfg))

    return statistics.median(_warm_seconds(run, mel) for mel, _ in questions)


def first_audio_seconds(token2wav: Token2Wav, units: Sequence[np.ndarray], chunk: int) -> float:
    """Median seconds token2wav takes for the first `chunk` units of each sequence."""
    return statistics.median(_warm_seconds(token2wav, np.asarray(u[:chunk])) for u in units)


def _warm_seconds(run, *args) -> float:
    """Seconds of run(*args) called a second time (the first compiles)."""
    run(*args)
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def text_accuracy(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Exact match of normalised answers, and their word error rate."""
    exact = [normalize(h) == normalize(r) for h, r in zip(hypotheses, references, strict=True)]
    return {"text_accuracy": float(np.mean(exact)), "text_wer": word_error_rate(references, hypotheses),
            "counts": Counts.of([(e, 1) for e in exact])}


def unit_accuracy(generated: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> dict:
    """Position-aligned agreement with the reference units over the reference length (a missing
    position counts as wrong), and generated / reference length."""
    pairs, ratios = [], []
    for g, r in zip(generated, references, strict=True):
        g, r = np.asarray(g), np.asarray(r)
        n = min(len(g), len(r))
        pairs.append((int((g[:n] == r[:n]).sum()), len(r)))
        ratios.append(len(g) / max(len(r), 1))
    counts = Counts.of(pairs)
    return {"unit_accuracy": counts.value, "length_ratio": float(np.mean(ratios)), "counts": counts}


def _heard(token2wav: Token2Wav, units) -> np.ndarray:
    """Units -> the 16 kHz waveform the judge hears (CosyVoice2's HiFT speaks 24 kHz); none: 0.1 s of silence."""
    if not len(units):
        return np.zeros(1600, np.float32)
    wav = token2wav(np.asarray(units))
    return wav if token2wav.sample_rate == 16_000 else soxr.resample(wav, token2wav.sample_rate, 16_000).astype(
        np.float32)


def speech_wer(units: Sequence[np.ndarray], references: Sequence[str], token2wav: Token2Wav,
               asr: WhisperASR | None = None, max_new_tokens: int = 64) -> dict[str, float]:
    """Units -> waveform -> the ASR judge -> WER against the reference answers. Transcripts stop
    at `max_new_tokens`: unintelligible speech makes Whisper repeat itself up to the limit."""
    wavs = [_heard(token2wav, u) for u in units]
    hypotheses = transcribe(wavs, asr, batch_size=min(8, len(wavs)), max_new_tokens=max_new_tokens)
    counts = Counts.of(word_errors(references, hypotheses))
    return {"wer": counts.value, "transcripts": hypotheses, "counts": counts}
