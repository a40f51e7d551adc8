"""CAM++ (CosyVoice2's campplus.onnx) against FunASR's PyTorch CAMPPlus at its real sizes, random weights (no hub
here), on real human speech, noise and clips shorter than a second: the Kaldi fbank within 1e-4 of the reference
front end; the embedding (our fbank + our network vs CosyVoice2's `_extract_spk_embedding` run on the reference)
within 1e-4 through the state-dict converter, and through the converter of an ONNX export of the reference (BatchNorms
folded into convs, as PyTorch exports them), which onnxruntime (what CosyVoice2 runs) agrees with; a batch gives each
row what it gives alone; a prompt wav's embedding gives a reduced-size CosyVoice2 token2wav its voice.

Real speech: AISHELL-1 clips BAC009S0764W0121.wav / BAC009S0764W0122.wav (Mandarin, 16 kHz) shipped in the
`s3tokenizer` package's assets (0.3.0, Apache-2.0; AISHELL-1 itself is Apache-2.0)."""

import dataclasses
from importlib import resources

import numpy as np
import pytest
import soundfile as sf
from campplus_reference import reference
from cosyvoice_reference import one_torch_thread  # noqa: F401 (an autouse fixture)
from s3tokenizer_reference import reference as s3tokenizer

from mdm_jax.convert.campplus import campplus_from_torch, convert_campplus, read_campplus_state
from mdm_jax.convert.rules import ConversionError
from mdm_jax.vocoder import campplus as cp

TOL = 1e-4


@pytest.fixture(scope="module")
def clips():
    """4.2 s of speech, 0.75 s of another speaker's clip, 1.5 s of noise, the shortest clip CAM++ embeds."""
    s3tokenizer()  # the package that ships the clips (imports with its torchaudio stand-in)
    assets = resources.files("s3tokenizer") / "assets"
    speech = [sf.read(str(assets / f"BAC009S0764W012{i}.wav"), dtype="float32")[0] for i in (1, 2)]
    noise = np.random.default_rng(0).normal(0, 0.05, 24_000).astype(np.float32)
    return {"speech": speech[0], "short": speech[1][20_000:32_000], "noise": noise,
            "shortest": speech[1][20_000:20_000 + cp.MIN_SAMPLES]}


@pytest.fixture(scope="module")
def ref():
    """The reference CAMPPlus (real sizes, its own init) with every BatchNorm and bias moved off its init, its
    converted params, and CosyVoice2's embedding of a waveform through it."""
    import torch

    model, fbank = reference()
    torch.manual_seed(0)
    net = model.CAMPPlus().eval()
    with torch.no_grad():
        for key, t in net.state_dict().items():
            if key.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif key.endswith(("running_mean", ".bias")):
                t.normal_(0.0, 0.1)
            elif t.ndim == 1 and t.is_floating_point():  # BatchNorm scales
                t.uniform_(0.5, 1.5)

    def features(wave):
        """CosyVoice2's `_extract_spk_embedding` front end, on the reference fbank."""
        feat = fbank.fbank(torch.from_numpy(wave)[None], num_mel_bins=80, dither=0, sample_frequency=16000)
        return feat - feat.mean(dim=0, keepdim=True)

    def embed(wave):
        with torch.no_grad():
            return net(features(wave)[None])[0].numpy()

    state = {k: v.numpy() for k, v in net.state_dict().items()}
    return dataclasses.make_dataclass("Ref", ["torch", "net", "fbank", "embed", "state", "params"])(
        torch, net, fbank, embed, state, campplus_from_torch(state, cp.CAMPPlusConfig()))


def test_fbank_matches_reference(ref, clips):
    for name, wave in clips.items():
        want = ref.fbank.fbank(ref.torch.from_numpy(wave)[None], num_mel_bins=80, dither=0,
                               sample_frequency=16000).numpy()
        got = cp.kaldi_fbank(wave)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=name)


def test_embedding_matches_reference(ref, clips):
    cfg = cp.CAMPPlusConfig()
    want = {name: ref.embed(wave) for name, wave in clips.items()}
    batch = cp.speaker_embeddings(ref.params, cfg, list(clips.values()))  # zero-padded rows of 2 s to 0.05 s
    for (name, w), got in zip(want.items(), batch):
        assert got.shape == (192,)
        np.testing.assert_allclose(got, w, rtol=0, atol=TOL, err_msg=name)
    alone = cp.speaker_embedding(ref.params, cfg, clips["short"])
    np.testing.assert_allclose(alone, batch[1], rtol=0, atol=1e-6)


def test_onnx_export_converts(ref, clips, tmp_path):
    """torch.onnx.export as campplus.onnx was made (TorchScript exporter: each BatchNorm after a conv folded
    into it) -> convert_campplus -> the reference's embedding, and onnxruntime's run of the same file."""
    import onnxruntime

    path = tmp_path / "campplus.onnx"
    feats = ref.torch.zeros(1, 200, 80)
    ref.torch.onnx.export(ref.net, (feats,), str(path), input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {1: "frames"}}, dynamo=False)
    state = read_campplus_state(path)
    folded = state["head.bn1.running_var"]  # the exporter folded it into head.conv1: an identity plus a shift
    np.testing.assert_array_equal(folded, np.full_like(folded, 1 - cp.CAMPPlusConfig().bn_eps))
    convert_campplus(path, tmp_path / "campplus_jax")
    enc = cp.SpeakerEncoder.load(tmp_path / "campplus_jax")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for name in ("speech", "short"):
        wave = clips[name]
        got = enc.embed(wave)
        np.testing.assert_allclose(got, ref.embed(wave), rtol=0, atol=TOL, err_msg=name)
        feat = cp.features(wave)[None]
        np.testing.assert_allclose(session.run(None, {"input": feat})[0][0], got, rtol=0, atol=TOL, err_msg=name)


def test_bad_audio_and_bad_weights(ref, clips):
    cfg = cp.CAMPPlusConfig()
    wave = clips["short"]
    for bad, reason in [(wave[: cp.MIN_SAMPLES - 1], "too short to embed"), (np.stack([wave, wave]), "mono"),
                        ((wave * 32767).astype(np.int16), "float samples"),
                        (np.where(np.arange(len(wave)) == 5, np.nan, wave), "NaN")]:
        with pytest.raises(ValueError, match=reason):
            cp.speaker_embedding(ref.params, cfg, bad)
    missing = {k: v for k, v in ref.state.items() if k != "xvector.block2.tdnnd7.cam_layer.linear1.bias"}
    with pytest.raises(ConversionError, match="missing key 'xvector.block2.tdnnd7.cam_layer.linear1.bias'"):
        campplus_from_torch(missing, cfg)
    with pytest.raises(ConversionError, match="unexpected key 'xvector.extra.weight'"):
        campplus_from_torch({**ref.state, "xvector.extra.weight": np.zeros(3, np.float32)}, cfg)
    with pytest.raises(ConversionError, match="'xvector.dense.linear.weight' has shape"):
        campplus_from_torch({**ref.state, "xvector.dense.linear.weight": np.zeros((192, 512, 1), np.float32)}, cfg)


def test_prompt_wav_gives_token2wav_its_voice(ref, clips):
    """audio -> CAM++ x-vector -> CosyVoice2 token2wav (reduced flow and HiFT, random weights): the voice changes
    the waveform, the same voice gives the same waveform."""
    from test_cosyvoice_flow import REDUCED
    from test_hift import SIZES

    from mdm_jax.vocoder import cosyvoice_flow, hift
    from mdm_jax.vocoder.cosyvoice2 import CosyVoice2Token2Wav

    flow_cfg, hift_cfg = REDUCED, SIZES["small"][0]
    t2w = CosyVoice2Token2Wav(cosyvoice_flow.init_params(flow_cfg), flow_cfg, hift.init_params(hift_cfg), hift_cfg,
                              np.zeros(flow_cfg.spk_embed_dim, np.float32),
                              prompt_mel=np.zeros((0, flow_cfg.n_mels), np.float32))
    units = np.random.default_rng(1).integers(0, flow_cfg.vocab_size, 30)
    voices = cp.speaker_embeddings(ref.params, cp.CAMPPlusConfig(), [clips["speech"], clips["short"]])
    waves = [t2w.with_voice(v)(units) for v in (*voices, voices[0])]
    assert waves[0].shape == (t2w.samples_per_unit * len(units),) and np.all(np.isfinite(waves[0]))
    assert np.abs(waves[0] - waves[1]).max() > 1e-3 * np.abs(waves[0]).max()
    np.testing.assert_array_equal(waves[0], waves[2])
    with pytest.raises(ValueError, match=r"expected \(192,\)"):
        t2w.with_voice(voices)
