"""HiFT vocoder (`mdm_jax.vocoder.hift`) and its converter against CosyVoice2's PyTorch HiFTGenerator.

The reference is built with random weights at a reduced width and at CosyVoice2-0.5B's size; every weight-norm gain
and Snake alpha is perturbed (a wrong fold or a dropped alpha would show), and the f0 classifier is rescaled so f0
spans 0..300 Hz (voiced and unvoiced frames, phases of thousands of radians). Both sides get the same random draws:
torch.rand / torch.randn_like, which SineGen2 / SourceModuleHnNSF2 call, are patched to return ours.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from types import SimpleNamespace
from unittest import mock

import jax
import numpy as np
import pytest
from cosyvoice_reference import one_torch_thread, reference  # noqa: F401 (an autouse fixture)

from mdm_jax.convert.hift import hift_from_torch
from mdm_jax.convert.rules import ConversionError
from mdm_jax.vocoder.hift import HiFTConfig, HiFTGenerator, SourceMerge, harmonics, hift_waveform

SIZES = {"small": (dataclasses.replace(HiFTConfig(), base_channels=64, f0_cond_channels=32), 12),  # (cfg, frames)
         "real": (HiFTConfig(), 4)}
WAVE_ATOL = 1e-4
# f0 differs from torch's by conv rounding (~1e-6 relative); the excitation's phase integrates it over thousands of
# radians, so the end-to-end excitation is compared looser than the NSF fed torch's own f0
SOURCE_ATOL = 5e-4


@functools.partial(jax.jit, static_argnames="cfg")
def _forward(params, cfg, mel, phase, noise, cache_source=None):
    return HiFTGenerator(cfg).apply({"params": params}, mel, phase, noise, cache_source)


def _reference_model(torch, generator, f0_module, cfg: HiFTConfig, mel):
    torch.manual_seed(0)
    model = generator.HiFTGenerator(
        in_channels=cfg.in_channels, base_channels=cfg.base_channels, nb_harmonics=cfg.nb_harmonics,
        sampling_rate=cfg.sampling_rate, nsf_alpha=cfg.nsf_alpha, nsf_sigma=cfg.nsf_sigma,
        nsf_voiced_threshold=cfg.nsf_voiced_threshold, upsample_rates=list(cfg.upsample_rates),
        upsample_kernel_sizes=list(cfg.upsample_kernel_sizes),
        istft_params={"n_fft": cfg.n_fft, "hop_len": cfg.hop_len},
        resblock_kernel_sizes=list(cfg.resblock_kernel_sizes),
        resblock_dilation_sizes=[list(d) for d in cfg.resblock_dilation_sizes],
        source_resblock_kernel_sizes=list(cfg.source_resblock_kernel_sizes),
        source_resblock_dilation_sizes=[list(d) for d in cfg.source_resblock_dilation_sizes],
        lrelu_slope=cfg.lrelu_slope, audio_limit=cfg.audio_limit,
        f0_predictor=f0_module.ConvRNNF0Predictor(num_class=1, in_channels=cfg.in_channels,
                                                  cond_channels=cfg.f0_cond_channels)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".original0", ".alpha")):  # gains start at ||v||, alphas at 1
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
        # f0 = |w·h + b| spread over [0, 300] Hz: the lowest frame unvoiced, the rest voiced
        predictor = model.f0_predictor
        z = predictor.condnet(torch.from_numpy(mel)).transpose(1, 2) @ predictor.classifier.weight.T
        scale = 300.0 / (z.max() - z.min())
        predictor.classifier.weight.mul_(scale)
        predictor.classifier.bias.fill_(-scale * z.min())
    return model


def _run_reference(torch, model, mel, phase, noise, cache_source=None):
    """model.inference with torch.rand -> phase and the first torch.randn_like -> noise."""
    calls = []

    def rand(*shape, **kwargs):
        calls.append(("rand", shape))
        return torch.from_numpy(phase.copy())  # SineGen2 zeroes column 0 in place

    def randn_like(x):
        calls.append(("randn_like", tuple(x.shape)))
        return torch.from_numpy(noise) if len(calls) == 2 else torch.zeros_like(x)  # then the unused noise branch

    cache = torch.zeros(1, 1, 0) if cache_source is None else torch.from_numpy(cache_source[:, None])
    with torch.inference_mode(), mock.patch.object(torch, "rand", rand), mock.patch.object(torch, "randn_like",
                                                                                        randn_like):
        wave, source = model.inference(torch.from_numpy(mel), cache)
    assert calls == [("rand", phase.shape), ("randn_like", noise.shape), ("randn_like", (*noise.shape[:2], 1))]
    return wave.numpy(), source[:, 0].numpy()


@functools.cache
def _build(size: str) -> SimpleNamespace:
    """The reference at `size`, its converted params, a mel (b, n_mels, F) and the random draws (phase, noise)."""
    generator, f0_module = reference("cosyvoice.hifigan.generator", "cosyvoice.hifigan.f0_predictor")
    import torch

    cfg, frames = SIZES[size]
    rng = np.random.default_rng(0)
    b, h, t = 2, cfg.nb_harmonics + 1, frames * cfg.samples_per_frame
    mel = (rng.standard_normal((b, cfg.in_channels, frames)) * 2 - 5).astype(np.float32)  # torch layout
    model = _reference_model(torch, generator, f0_module, cfg, mel)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return SimpleNamespace(torch=torch, cfg=cfg, model=model, state=state, params=hift_from_torch(state, cfg), mel=mel,
                           phase=rng.random((b, h), np.float32), noise=rng.standard_normal((b, t, h), np.float32))


@pytest.fixture(scope="module", params=list(SIZES))
def case(request):
    return _build(request.param)


@pytest.fixture(scope="module")
def small():
    return _build("small")


def _ours(case, cache_source=None):
    wave, source, f0 = _forward(case.params, case.cfg, case.mel.transpose(0, 2, 1), case.phase, case.noise,
                                cache_source)
    return np.asarray(wave), np.asarray(source), np.asarray(f0)


def test_waveform_matches_reference(case):
    with case.torch.inference_mode():
        f0_ref = case.model.f0_predictor(case.torch.from_numpy(case.mel)).numpy()
    assert (f0_ref < case.cfg.nsf_voiced_threshold).any() and (f0_ref > 50).sum() > f0_ref.size // 2
    wave_ref, source_ref = _run_reference(case.torch, case.model, case.mel, case.phase, case.noise)
    wave, source, f0 = _ours(case)
    assert wave.shape == source.shape == (2, case.mel.shape[2] * 480)
    assert 0.01 < np.abs(wave_ref).max() < case.cfg.audio_limit  # a real signal, not clipped flat
    np.testing.assert_allclose(f0, f0_ref, rtol=0, atol=1e-3)  # Hz; w·h + b cancels terms of ~100s
    np.testing.assert_allclose(source, source_ref, rtol=0, atol=SOURCE_ATOL)
    np.testing.assert_allclose(wave, wave_ref, rtol=0, atol=WAVE_ATOL)


def test_source_matches_reference_given_f0(case):
    """The NSF alone (SineGen2 + merge) on torch's own f0: no f0 rounding to integrate, only the last bit of the
    interpolated phase (torch's CPU kernel fuses it into an FMA): 2.4e-4 rad at ~3000 rad, x 0.1 amplitude."""
    torch = case.torch
    with torch.inference_mode():
        f0 = case.model.f0_predictor(torch.from_numpy(case.mel))
        upsampled = case.model.f0_upsamp(f0[:, None]).transpose(1, 2)
        with mock.patch.object(torch, "rand", lambda *shape, **kw: torch.from_numpy(case.phase.copy())), \
                mock.patch.object(torch, "randn_like", lambda x: torch.from_numpy(case.noise) if x.shape[-1] > 1
                                  else torch.zeros_like(x)):
            source_ref = case.model.m_source(upsampled)[0][..., 0].numpy()
    source = SourceMerge().apply({"params": case.params["m_source"]},
                                 harmonics(case.cfg, f0.numpy(), case.phase, case.noise))
    np.testing.assert_allclose(np.asarray(source), source_ref, rtol=0, atol=1e-4)


def test_cache_source_matches_reference(case):
    n = 2 * case.cfg.samples_per_frame + 37  # not frame-aligned
    cache = np.random.default_rng(1).uniform(-0.3, 0.3, (2, n)).astype(np.float32)
    wave_ref, source_ref = _run_reference(case.torch, case.model, case.mel, case.phase, case.noise, cache)
    wave, source, _ = _ours(case, cache)
    np.testing.assert_array_equal(source[:, :n], cache)
    np.testing.assert_allclose(source, source_ref, rtol=0, atol=SOURCE_ATOL)
    np.testing.assert_allclose(wave, wave_ref, rtol=0, atol=WAVE_ATOL)


def test_hift_waveform(small):
    mel, key = small.mel.transpose(0, 2, 1), jax.random.key(3)
    wave, source = hift_waveform(small.params, small.cfg, mel, key)
    assert wave.shape == source.shape == (2, mel.shape[1] * 480) and wave.dtype == np.float32
    assert np.abs(wave).max() <= small.cfg.audio_limit and np.isfinite(wave).all()
    np.testing.assert_array_equal(hift_waveform(small.params, small.cfg, mel, key)[0], wave)
    assert np.abs(hift_waveform(small.params, small.cfg, mel, jax.random.key(4))[1] - source).max() > 1e-3
    # streaming: the next chunk starts from this one's excitation tail
    wave2, source2 = hift_waveform(small.params, small.cfg, mel, jax.random.key(5), cache_source=source[:, -480:])
    np.testing.assert_array_equal(source2[:, :480], source[:, -480:])


def _params_equal(a, b, rtol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=0)


def test_weight_norm_key_styles(small):
    torch, state = small.torch, small.state
    legacy = {k.replace(".parametrizations.weight.original0", ".weight_g")
               .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in state.items()}
    assert sum(k.endswith(".weight_g") for k in legacy) == sum(k.endswith(".weight_v") for k in legacy) > 80
    _params_equal(hift_from_torch(legacy, small.cfg), small.params)
    _params_equal(hift_from_torch({f"generator.{k}": v for k, v in state.items()}, small.cfg), small.params)
    # weight norm removed by torch itself: plain `.weight`s, folded by torch
    plain = copy.deepcopy(small.model)
    for module in plain.modules():
        if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            torch.nn.utils.parametrize.remove_parametrizations(module, "weight")
    state = {k: v.detach().numpy() for k, v in plain.state_dict().items()}
    _params_equal(hift_from_torch(state, small.cfg), small.params, rtol=1e-5)


@pytest.mark.parametrize("edit, key", [
    ("drop", "ups.1.parametrizations.weight.original1"),  # a weight-norm direction without its gain
    ("drop", "conv_pre.parametrizations.weight.original0"),  # and a gain without its direction
    ("drop", "source_downs.0.weight"),
    ("drop", "resblocks.4.activations2.1.alpha"),
    ("add", "f0_predictor.classifier.extra"),
    ("reshape", "conv_post.bias"),
    ("reshape", "m_source.l_linear.weight"),
    ("reshape", "f0_predictor.condnet.4.parametrizations.weight.original1"),
    ("reshape", "source_resblocks.2.convs1.0.parametrizations.weight.original0"),
])
def test_conversion_errors(small, edit, key):
    state = dict(small.state)
    if edit == "drop":
        del state[key]
    elif edit == "add":
        state[key] = np.zeros(3, np.float32)
    else:
        state[key] = state[key][:-1]
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        hift_from_torch(state, small.cfg)
