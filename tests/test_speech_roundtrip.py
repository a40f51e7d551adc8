"""Audio -> S3 tokens -> CosyVoice2 token2wav -> audio, end to end with random reduced weights: a released-layout
speech_tokenizer_v2.onnx and CosyVoice2's flow.pt + hift.pt converted by the CLI, a manifest's answer
tokenized by `mdm_jax.tokenize_speech`, the units loaded as training reads them (num_units 6561,
the real presets'), spoken by the converted token2wav; every stage against its PyTorch reference on the
same input (the s3tokenizer package's ids, CosyVoice2's flow mel and HiFT audio)."""

import json

import jax
import numpy as np
import soundfile as sf
from test_cosyvoice2 import FLOW, _reference_hift, converted  # noqa: F401 (a fixture)
from test_cosyvoice_flow import reference_mel
from test_s3_tokenizer import REDUCED, reference_model, reference_run, released_onnx

from data_pipelines.manifest import load_units, read_manifest
from data_pipelines.validation import BadRecords
from mdm_jax import cli, tokenize_speech
from mdm_jax.config.model import get_config
from mdm_jax.model import s3_tokenizer as s3


def test_audio_to_tokens_to_audio(converted, tmp_path):  # noqa: F811
    from importlib import resources

    c = converted
    cfg = s3.S3TokenizerConfig(**REDUCED)
    model = reference_model("v2", cfg, seed=5)
    onnx_path = tmp_path / "speech_tokenizer_v2.onnx"
    released_onnx({k: v.numpy() for k, v in model.state_dict().items()}, onnx_path)
    assert cli.main(["convert", "s3tokenizer", "--src", str(onnx_path), "--out", str(tmp_path / "s3"),
                     *[f"{k}={v}" for k, v in REDUCED.items()]]) == 0

    clip = sf.read(str(resources.files("s3tokenizer") / "assets" / "BAC009S0764W0122.wav"), dtype="float32")[0]
    answer = clip[8_000:40_000]  # 2 s: 50 tokens
    (tmp_path / "data" / "wav").mkdir(parents=True)
    sf.write(tmp_path / "data" / "wav" / "a.wav", answer, 16_000)
    line = {"id": "q1", "user_audio": "wav/a.wav", "assistant_text": "ni hao", "assistant_audio": "wav/a.wav",
            "assistant_units": "units/q1.npy"}
    (tmp_path / "data" / "m.jsonl").write_text(json.dumps(line) + "\n")
    assert tokenize_speech.main(["--manifest", str(tmp_path / "data" / "m.jsonl"), "--tokenizer", str(tmp_path / "s3"),
                                 "--out", str(tmp_path / "report"), "--no-progress"]) == 0

    (record,) = read_manifest(str(tmp_path / "data" / "m.jsonl"), BadRecords(strict=True))
    units = load_units(record, get_config("vocalnet-mdm-qwen3-8b").speech_decoder.num_units)
    _, _, ref_ids, lengths = reference_run(model, [answer])
    np.testing.assert_array_equal(units, ref_ids[0, : lengths[0]])
    assert len(units) == 50 and FLOW.vocab_size == 6561

    audio = c.t2w(units)  # ours: converted flow + HiFT
    mel = reference_mel(c.flow, units, units[:0], np.zeros((0, FLOW.n_mels), np.float32), c.t2w.speaker,
                        streaming=False, finalize=True)
    with c.torch.inference_mode():
        wave, _ = _reference_hift(c.torch, c.hift, c.torch.from_numpy(mel.T[None].copy()), jax.random.key(c.t2w.seed))
    assert audio.shape == (len(units) * c.t2w.samples_per_unit,) and np.isfinite(audio).all()
    np.testing.assert_allclose(audio, wave[0].numpy(), atol=1e-4, rtol=0)
