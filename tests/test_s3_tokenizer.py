"""S3Tokenizer v2 / v3 against the `s3tokenizer` package (the PyTorch reference) with random weights, on real
speech (the AISHELL clips the reference ships, the embedded corpus's Piper voice) in ragged batches: the
log-mel within 1e-4 of its front end, the pre-FSQ activations within 1e-4, the ids identical except at
quantization ties (a dim whose 0.999·tanh lies within the activation error of the 0.5 threshold);
bf16 compute keeps the ids but for near-ties; a batch gives each row what it gives alone."""

import functools
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from cosyvoice_reference import one_torch_thread  # noqa: F401 (an autouse fixture)
from s3tokenizer_reference import reference

from mdm_jax.convert.s3_tokenizer import s3_from_torch
from mdm_jax.model import s3_tokenizer as s3

TOL = 1e-4
REDUCED = dict(d_model=128, num_heads=2, num_layers=2)  # heads stay 64 wide: the reference's rotary table is
TIE = 2 * TOL  # |d tanh| <= |d h|: an activation error of 1e-4 moves 0.999·tanh by less than this


@pytest.fixture(scope="module")
def speech():
    """Real speech of several lengths (4.2 s, 4.1 s Mandarin; Piper English), a 1.3 s crop, 0.3 s of noise."""
    reference()
    assets = resources.files("s3tokenizer") / "assets"
    clips = [sf.read(str(assets / f"BAC009S0764W012{i}.wav"), dtype="float32")[0] for i in (1, 2)]
    try:
        from data_pipelines.corpus import tts

        clips.append(tts.synthesize("nine minus four is five", tts.ASSISTANT_VOICE))
    except ImportError:  # the `data` extra (Piper) absent: the shipped clips alone
        pass
    noise = np.random.default_rng(0).normal(0, 0.05, 4800).astype(np.float32)
    return [clips[0], clips[1][5000:25_800], *clips[2:], noise, clips[1]]


def reference_model(version: str, cfg: s3.S3TokenizerConfig, seed: int = 0):
    """The reference S3TokenizerV2 / V3 at `cfg`'s sizes: torch's default init, LayerNorms perturbed."""
    import torch

    s3tokenizer = reference()
    from s3tokenizer.model_v3 import ModelConfigV3, S3TokenizerV3

    torch.manual_seed(seed)
    sizes = dict(n_mels=cfg.n_mels, n_audio_state=cfg.d_model, n_audio_head=cfg.num_heads,
                 n_audio_layer=cfg.num_layers)
    model = (s3tokenizer.S3TokenizerV2("speech_tokenizer_v2_25hz", s3tokenizer.model_v2.ModelConfig(**sizes))
             if version == "v2" else S3TokenizerV3("speech_tokenizer_v3_25hz", ModelConfigV3(**sizes))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_ln." in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def reference_run(model, waves):
    """The reference's own batch (its mel per clip, padded to the longest) -> (mels, pre-FSQ, ids, lengths)."""
    import torch

    s3tokenizer = reference()
    mels = [s3tokenizer.log_mel_spectrogram(torch.from_numpy(w)) for w in waves]
    mel, mel_len = s3tokenizer.padding(mels)
    with torch.no_grad():
        hidden, lengths = model.encoder(mel, mel_len)
        pre = model.quantizer._codebook.project_down(hidden).float().numpy()
        ids, id_lengths = model.quantize(mel, mel_len)
    assert (lengths == id_lengths).all()
    return [m.numpy() for m in mels], pre, ids.numpy(), lengths.numpy()


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _ours(params, cfg, audio, samples, dtype="float32"):
    h, tokens = s3.encode(params, cfg, audio, samples, jnp.dtype(dtype))
    return s3.log_mel(audio, samples, cfg.n_mels), h, tokens


def compare(model, cfg, waves, dtype="float32"):
    """Ours (bucketed batch) vs the reference (its batch) on `waves` -> a summary; asserts lengths agree."""
    params = s3_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
    ref_mels, ref_pre, ref_ids, lengths = reference_run(model, waves)
    audio, samples = s3.pad_batch(waves)
    mel, h, tokens = jax.device_get(_ours(params, cfg, audio, samples, dtype))
    np.testing.assert_array_equal(tokens, lengths)
    ids = np.asarray(s3.fsq_ids(h))
    rows = [slice(0, n) for n in lengths]
    mel_err = max(np.abs(mel[i][:, : m.shape[1]] - m).max() for i, m in enumerate(ref_mels))
    pre_err = max(np.abs(h[i][r] - ref_pre[i][r]).max() for i, r in enumerate(rows))
    same = np.concatenate([ids[i][r] == ref_ids[i][r] for i, r in enumerate(rows)])
    margins = np.concatenate([np.asarray(s3.fsq_margin(ref_pre[i][r])) for i, r in enumerate(rows)])
    summary = dict(mel_err=float(mel_err), pre_err=float(pre_err), tokens=int(same.size), agree=float(same.mean()),
                   mismatch_margins=margins[~same].tolist(), min_margin=float(margins.min()))
    print(f"\n{dtype} {cfg.num_layers} layers d={cfg.d_model}: {summary}")
    return summary, params


def _assert_parity(summary):
    assert summary["mel_err"] < TOL
    assert summary["pre_err"] < TOL
    assert all(m < TIE for m in summary["mismatch_margins"]), summary  # any id mismatch is a tie


@pytest.fixture(scope="module")
def reduced_v2():
    cfg = s3.S3TokenizerConfig(**REDUCED)
    return cfg, reference_model("v2", cfg)


def test_log_mel_matches_reference_front_end(speech):
    import torch

    s3tokenizer = reference()
    audio, samples = s3.pad_batch(speech)
    mel = np.asarray(jax.jit(s3.log_mel)(audio, samples))
    for i, w in enumerate(speech):
        ref = s3tokenizer.log_mel_spectrogram(torch.from_numpy(w)).numpy()
        assert ref.shape[1] == samples[i] // 160
        np.testing.assert_allclose(mel[i, :, : ref.shape[1]], ref, atol=TOL, rtol=0)
        assert not mel[i, :, ref.shape[1]:].any()


def test_v2_reduced_matches_reference(speech, reduced_v2):
    summary, _ = compare(reduced_v2[1], reduced_v2[0], speech)
    _assert_parity(summary)
    assert summary["agree"] == 1.0 or summary["mismatch_margins"]


def test_v2_real_size_matches_reference(speech):
    cfg = s3.PRESETS["v2"]
    summary, _ = compare(reference_model("v2", cfg, seed=1), cfg, [speech[1][:9_000], speech[4][:12_000]])
    _assert_parity(summary)


def test_v3_reduced_matches_reference(speech):
    cfg = s3.S3TokenizerConfig(**{**REDUCED, "num_layers": 3})
    summary, _ = compare(reference_model("v3", cfg, seed=2), cfg, speech[:3])
    _assert_parity(summary)


def test_bf16_ids_agree_but_for_near_ties(speech, reduced_v2):
    summary, _ = compare(reduced_v2[1], reduced_v2[0], speech, dtype="bfloat16")
    assert summary["agree"] > 0.9, summary
    assert all(m < 0.05 for m in summary["mismatch_margins"]), summary  # bf16 moves activations by ~1e-2


def test_rows_alone_equal_rows_batched(speech, reduced_v2):
    cfg, model = reduced_v2
    tok = s3.S3Tokenizer(s3_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, cfg), cfg)
    batched = tok(speech)
    for wave, ids in zip(speech, batched):
        np.testing.assert_array_equal(tok([wave])[0], ids)
        assert len(ids) == s3.num_tokens(len(wave)) and ids.dtype == np.int32
        assert ids.min() >= 0 and ids.max() < cfg.codebook_size


def test_too_long_or_too_short_audio_is_named(reduced_v2):
    cfg, model = reduced_v2
    tok = s3.S3Tokenizer(s3_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, cfg), cfg)
    with pytest.raises(ValueError, match="waveform 1: 480001 samples"):
        tok([np.zeros(1600, np.float32), np.zeros(480_001, np.float32)])
    with pytest.raises(ValueError, match="waveform 0: 100 samples"):
        tok([np.zeros(100, np.float32)])


def test_fsq_ids_are_base_three_digits():
    h = np.array([[-3.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0], [3.0] * 8, [-3.0] * 8], np.float32)
    np.testing.assert_array_equal(np.asarray(s3.fsq_ids(h)), [0 + 1 * 3 + 2 * 9 + sum(3**i for i in range(3, 8)),
                                                               6560, 0])
