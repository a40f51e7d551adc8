"""Evaluators against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.config.model import get_config
from mdm_jax.decode import autoregressive, block_diffusion
from mdm_jax.eval import metrics
from mdm_jax.eval.asr import normalize, word_error_rate, word_errors
from mdm_jax.eval.metrics import decode_speech, first_audio_seconds, text_accuracy, unit_accuracy
from mdm_jax.model.vocalnet import random_params

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
    assert m["counts"].num.tolist() == [[2, 2]] and m["counts"].den.tolist() == [[4, 2]]  # per dialogue


def test_consecutive_spoken_numbers_stay_separate_numbers():
    """Whisper's normaliser alone reads 'fifteen sixteen seventeen' as 151617 but '15, 16, 17' as three
    numbers: a right transcript of a counting answer would cost three errors against one word."""
    assert normalize("fifteen sixteen seventeen") == normalize("15, 16, 17.") == "15 16 17"
    assert word_errors(["fifteen sixteen seventeen"], ["15, 16, 17."]) == [(0, 3)]
    assert normalize("twenty one") == "21" and normalize("two hundred and five") == "205"  # compounds stay whole
    assert normalize("seven plus six is thirteen") == normalize("7 plus 6 is 13")


def test_per_dialogue_word_errors_sum_to_jiwers_corpus_wer():
    import jiwer

    refs = ["two plus four is six", "after monday comes tuesday", "cat is spelled c a t"]
    hyps = ["two plus four is seven", "after monday comes", "the cat is spelled c a t t"]
    pairs = word_errors(refs, hyps)
    assert [w for _, w in pairs] == [len(normalize(r).split()) for r in refs]
    assert pairs[1][0] == 1  # one deletion
    assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer([normalize(r) for r in refs],
                                                                  [normalize(h) for h in hyps]))


def test_first_audio_seconds_times_a_warm_call_on_the_first_chunk_only():
    seen = []
    def token2wav(units):
        seen.append(units.tolist())
        return np.zeros(640 * len(units), np.float32)

    seconds = first_audio_seconds(token2wav, [np.arange(40), np.arange(7)], chunk=15)
    assert seconds >= 0
    assert seen == [list(range(15))] * 2 + [list(range(7))] * 2  # each chunk once to warm up, once timed


def test_speech_wer_resamples_24khz_speech_for_the_16khz_judge(monkeypatch):
    class Speaks24k:  # a 440 Hz tone, 960 samples per unit (CosyVoice2's HiFT)
        sample_rate = 24_000

        def __call__(self, units):
            return np.sin(2 * np.pi * 440 * np.arange(960 * len(units)) / 24_000).astype(np.float32)

    heard = []
    monkeypatch.setattr(metrics, "transcribe", lambda wavs, *a, **k: heard.extend(wavs) or ["x"] * len(wavs))
    metrics.speech_wer([np.arange(25), np.arange(0)], ["x", "y"], Speaks24k())
    assert [len(w) for w in heard] == [16_000, 1600]  # 1 s at 16 kHz; no units: 0.1 s of silence
    spectrum = np.abs(np.fft.rfft(heard[0]))
    assert np.argmax(spectrum) == 440  # the same tone, at the judge's rate (1 Hz bins over 1 s)


@pytest.mark.parametrize("method", ["mdm", "ar"])
def test_decode_speech_runs_the_decoder_in_the_presets_dtype(monkeypatch, method):
    """Evaluation of a bfloat16 preset decodes with a bfloat16 KV cache, whichever sampler."""
    cfg = get_config("tiny", ["llm.num_layers=1", "encoder.num_layers=1", "speech_decoder.num_layers=1",
                              "speech_decoder.mtp_modules=0", f"sampler.method={method}", "sampler.denoise_steps=1",
                              "dtype=bfloat16"])
    seen = []
    sampler = block_diffusion if method == "mdm" else autoregressive
    generate = sampler.generate

    def spy(*args, **kwargs):
        state = generate(*args, **kwargs)
        seen.extend(c["k"].dtype for c in layer_caches(state.caches))
        return state

    monkeypatch.setattr(sampler, "generate", spy)
    hidden = np.random.default_rng(0).standard_normal((6, cfg.llm.d_model)).astype(np.float32)
    out = decode_speech(random_params(cfg)["speech_decoder"], cfg, [hidden], max_blocks=1, text_capacity=8)
    assert len(out["units"]) == 1 and seen and set(seen) == {jnp.dtype(jnp.bfloat16)}


def layer_caches(caches):
    """The {'k', 'v'} dicts of a sampler's caches (the stack's, or AR's {'decoder', 'mtp'})."""
    return [caches] if "k" in caches else [caches["decoder"], *caches["mtp"]]
