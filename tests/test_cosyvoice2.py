"""The real-weight speech path end to end, with random weights at reduced sizes (no hub access here):
CosyVoice2's flow.pt + hift.pt saved as CosyVoice2 ships them -> `convert cosyvoice2` -> token2wav
offline and streamed, against CosyVoice2's own code; `generate --token2wav` speaks the answer of a
converted VocalNet release."""

import dataclasses
import functools
import json
from types import SimpleNamespace
from unittest import mock

import jax
import numpy as np
import pytest
import soundfile as sf
from campplus_reference import reference as campplus_reference
from cosyvoice_reference import one_torch_thread, reference  # noqa: F401 (an autouse fixture)
from test_cosyvoice_flow import REDUCED, reference_flow, reference_mel
from test_hift import SIZES, _reference_model

from mdm_jax import cli
from mdm_jax.config.model import get_config
from mdm_jax.convert.hf_files import save_hf_folder
from mdm_jax.convert.hf_llm import llm_config_to_hf
from mdm_jax.convert.vocalnet_release import vocalnet_to_release
from mdm_jax.model.vocalnet import random_params
from mdm_jax.vocoder.cosyvoice_flow import CosyFlowConfig
from mdm_jax.vocoder.hift import HiFTConfig
from mdm_jax.vocoder.load import load_token2wav

FLOW = dataclasses.replace(REDUCED, vocab_size=6561)  # every Talker unit is a valid token
HIFT = SIZES["small"][0]


def _overrides(part: str, cfg, default) -> list[str]:
    return [f"{part}.{k}={json.dumps(v)}" for k, v in dataclasses.asdict(cfg).items()
            if v != dataclasses.asdict(default)[k]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import torch

    generator, f0 = reference("cosyvoice.hifigan.generator", "cosyvoice.hifigan.f0_predictor")
    src, out = tmp_path_factory.mktemp("CosyVoice2-random"), tmp_path_factory.mktemp("cosyvoice2_jax")
    flow = reference_flow(FLOW)
    mel = np.random.default_rng(0).normal(-5.0, 2.0, (1, HIFT.in_channels, 20)).astype(np.float32)
    hift = _reference_model(torch, generator, f0, HIFT, mel)
    torch.save(flow.state_dict(), src / "flow.pt")
    torch.save(hift.state_dict(), src / "hift.pt")
    argv = ["convert", "cosyvoice2", "--src", str(src), "--out", str(out),
            *_overrides("flow", FLOW, CosyFlowConfig()), *_overrides("hift", HIFT, HiFTConfig())]
    assert cli.main(argv) == 0
    t2w = load_token2wav(str(out))
    flow.decoder.rand_noise = torch.from_numpy(np.asarray(t2w.noise).T[None].copy())  # the same noise table
    return SimpleNamespace(torch=torch, flow=flow, hift=hift, t2w=t2w, path=out)


def _reference_hift(torch, hift, mel, key, cache_source=None):
    """hift.inference with torch.rand / randn_like drawing what `hift_waveform` draws from `key`."""
    k_phase, k_noise = jax.random.split(key)
    draws = []

    def rand(*shape, **_):
        draws.append("rand")
        return torch.from_numpy(np.array(jax.random.uniform(k_phase, shape)))

    def randn_like(x):
        draws.append("randn_like")
        return torch.from_numpy(np.array(jax.random.normal(k_noise, x.shape))) if len(draws) == 2 else x * 0

    with mock.patch.object(torch, "rand", rand), mock.patch.object(torch, "randn_like", randn_like):
        return hift.inference(mel, cache_source) if cache_source is not None else hift.inference(mel)


def test_offline_matches_reference(converted):
    c = converted
    units = np.random.default_rng(3).integers(0, FLOW.vocab_size, 30)
    empty_mel = np.zeros((0, FLOW.n_mels), np.float32)
    mel = reference_mel(c.flow, units, units[:0], empty_mel, c.t2w.speaker, streaming=False, finalize=True)
    np.testing.assert_allclose(c.t2w.mel(units, streaming=False), mel, atol=1e-4, rtol=0)
    with c.torch.inference_mode():
        wave, _ = _reference_hift(c.torch, c.hift, c.torch.from_numpy(mel.T[None].copy()), jax.random.key(c.t2w.seed))
    ours = c.t2w(units)
    assert ours.shape == (len(units) * c.t2w.samples_per_unit,) and c.t2w.sample_rate == 24_000
    np.testing.assert_allclose(ours, wave[0].numpy(), atol=1e-4, rtol=0)


def test_stream_matches_cosyvoice2_streaming(converted):
    """Pushed in Talker-sized blocks at CosyVoice2's own hop (25 units + 3 look-ahead), the audio equals
    CosyVoice2Model.token2wav's streaming loop (flow re-run per hop, HiFT mel/excitation caches, fade)."""
    c = converted
    (model_module,) = reference("cosyvoice.cli.model")
    units = np.random.default_rng(4).integers(0, FLOW.vocab_size, 59)  # two hops of 25 (+3), then the rest
    state = SimpleNamespace(flow=c.flow, hift=c.hift, fp16=False, device=c.torch.device("cpu"),
                            hift_cache_dict={"u": None}, mel_cache_len=c.t2w.mel_overlap,
                            source_cache_len=c.t2w.mel_overlap * HIFT.samples_per_frame,
                            speech_window=np.hamming(2 * c.t2w.mel_overlap * HIFT.samples_per_frame))
    token2wav = functools.partial(model_module.CosyVoice2Model.token2wav, state,
                                  prompt_token=c.torch.zeros(1, 0, dtype=c.torch.int32),
                                  prompt_feat=c.torch.zeros(1, 0, FLOW.n_mels),
                                  embedding=c.torch.from_numpy(c.t2w.speaker[None]), uuid="u")
    reference_audio, offset, call = [], 0, 0
    with c.torch.inference_mode():
        while len(units) - offset >= FLOW.chunk_tokens + FLOW.pre_lookahead:  # CosyVoice2Model.tts, stream=True
            key = jax.random.fold_in(jax.random.key(c.t2w.seed), call)
            speech = _with_draws(c, key, functools.partial(
                token2wav, token=c.torch.tensor(units[None, : offset + FLOW.chunk_tokens + FLOW.pre_lookahead]),
                token_offset=offset, stream=True, finalize=False))
            reference_audio.append(speech[0].numpy())
            offset, call = offset + FLOW.chunk_tokens, call + 1
        key = jax.random.fold_in(jax.random.key(c.t2w.seed), call)
        speech = _with_draws(c, key, functools.partial(token2wav, token=c.torch.tensor(units[None]),
                                                       token_offset=offset, finalize=True))
        reference_audio.append(speech[0].numpy())

    stream = c.t2w.stream(FLOW.chunk_tokens)
    ours = [stream.push(units[i : i + 16]) for i in range(0, len(units), 16)] + [stream.push(units[:0], final=True)]
    ours = np.concatenate(ours)
    assert len(ours) == len(units) * c.t2w.samples_per_unit
    np.testing.assert_allclose(ours, np.concatenate(reference_audio), atol=1e-4, rtol=0)


def _with_draws(c, key, run):
    """Run `run` with the reference HiFT drawing what `hift_waveform` draws from `key`."""
    inference = c.hift.inference
    with mock.patch.object(c.hift, "inference",
                           lambda speech_feat, cache_source=None: _reference_hift(
                               c.torch, SimpleNamespace(inference=inference), speech_feat, key, cache_source)):
        return run()


def test_generate_speaks_a_converted_vocalnet(converted, tmp_path, capsys):
    """`convert vocalnet` of a random tiny release, then `generate --token2wav` with the converted
    CosyVoice2 on two questions at once: each answer's units become its growing wav, one timing line
    per block."""
    cfg = get_config("tiny-vocalnet", ["llm.num_layers=1", "encoder.num_layers=1", "speech_decoder.num_layers=1",
                                       "speech_decoder.mtp_modules=0"])
    release = save_hf_folder(tmp_path / "release", llm_config_to_hf(cfg.llm),
                             vocalnet_to_release(random_params(cfg), cfg))
    ckpt = tmp_path / "vocalnet"
    assert cli.main(["convert", "vocalnet", "--src", str(release), "--out", str(ckpt), "--config", "tiny-vocalnet",
                     "llm.num_layers=1", "encoder.num_layers=1", "speech_decoder.num_layers=1",
                     "speech_decoder.mtp_modules=0"]) == 0
    questions = [tmp_path / "q1.wav", tmp_path / "q2.wav"]
    for q, seconds in zip(questions, (1.0, 1.7)):
        sf.write(q, 0.1 * np.sin(np.arange(int(16_000 * seconds)) * 0.05), 16_000)
    answer = tmp_path / "answer.json"
    assert cli.main(["generate", "--ckpt", str(ckpt), "--audio", *map(str, questions), "--token2wav",
                     str(converted.path), "--wav", str(tmp_path / "answer.wav"), "--out", str(answer),
                     "--max-blocks", "2", "--max-text-tokens", "8"]) == 0
    answers = json.loads(answer.read_text())["answers"]
    assert len(answers) == 2
    for i, result in enumerate(answers):
        audio, rate = sf.read(tmp_path / f"answer_{i}.wav")
        assert rate == 24_000 and len(result["speech_units"]) > 0 and result["wav"].endswith(f"answer_{i}.wav")
        assert len(audio) == len(result["speech_units"]) * converted.t2w.samples_per_unit
        assert np.abs(audio).max() > 0 and result["audio_s"] == pytest.approx(len(audio) / rate)
        assert len(result["times"]) == result["blocks"]
    out = capsys.readouterr().out
    assert "question 1 block 0" in out and "audio +" in out and "vocoder" in out


def test_generate_speaks_in_the_voice_of_a_prompt_wav(converted, tmp_path):
    """`convert campplus` of FunASR's CAM++ (real size, its init) and `generate --prompt-wav --campplus`: the same
    answer in two voices sounds different (CAM++'s x-vector is the flow's speaker); without --campplus, one line."""
    model, _ = campplus_reference()
    converted.torch.manual_seed(0)
    converted.torch.save(model.CAMPPlus().eval().state_dict(), tmp_path / "campplus.pt")
    cam = tmp_path / "cam"
    assert cli.main(["convert", "campplus", "--src", str(tmp_path / "campplus.pt"), "--out", str(cam)]) == 0
    sizes = ["llm.num_layers=1", "encoder.num_layers=1", "speech_decoder.num_layers=1", "speech_decoder.mtp_modules=0"]
    cfg = get_config("tiny-vocalnet", sizes)
    save_hf_folder(tmp_path / "release", llm_config_to_hf(cfg.llm), vocalnet_to_release(random_params(cfg), cfg))
    ckpt = tmp_path / "vocalnet"
    assert cli.main(["convert", "vocalnet", "--src", str(tmp_path / "release"), "--out", str(ckpt), "--config",
                     "tiny-vocalnet", *sizes]) == 0
    sf.write(tmp_path / "q.wav", 0.1 * np.sin(np.arange(16_000) * 0.05), 16_000)
    noise = 0.1 * np.random.default_rng(0).normal(size=48_000)
    voices = {"low": 0.3 * np.sin(np.arange(48_000) * 0.02), "noise": noise}
    audio = {}
    for name, wave in voices.items():
        sf.write(tmp_path / f"{name}.wav", wave, 16_000)
        argv = ["generate", "--ckpt", str(ckpt), "--audio", str(tmp_path / "q.wav"), "--token2wav", str(converted.path),
                "--wav", str(tmp_path / f"answer_{name}.wav"), "--out", str(tmp_path / "answer.json"), "--max-blocks",
                "2", "--max-text-tokens", "8", "--prompt-wav", str(tmp_path / f"{name}.wav")]
        assert cli.main([*argv, "--campplus", str(cam)]) == 0
        audio[name] = sf.read(tmp_path / f"answer_{name}.wav")[0]
    assert len(audio["low"]) == len(audio["noise"]) > 0 and not np.allclose(audio["low"], audio["noise"])
    assert cli.main(argv) == 2  # --prompt-wav without --campplus
