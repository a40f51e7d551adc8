"""CAM++, the speaker encoder CosyVoice2 ships as `campplus.onnx`: a 16 kHz prompt wav -> the 192-dim x-vector
its flow is conditioned on (`CosyVoice2Token2Wav.speaker`).

    enc = SpeakerEncoder.load("campplus_jax")      # written by `convert_campplus(campplus.onnx, ...)`
    t2w = t2w.with_voice(enc.embed(prompt_16k))    # (samples,) float32 in [-1, 1] -> (192,)

Front end, as CosyVoice2's `_extract_spk_embedding`: Kaldi fbank (`torchaudio.compliance.kaldi.fbank(speech,
num_mel_bins=80, dither=0, sample_frequency=16000)`: 25 ms povey frames every 10 ms, snip_edges, DC removal,
pre-emphasis 0.97, 512-point power spectrum, 80 HTK-mel filters 20 Hz .. 8 kHz, natural log floored at float32
eps), then each bin minus its mean over the utterance.

Network (3D-Speaker / FunASR `CAMPPlus`): an FCM head (2-D ResNet over (freq, time): 80 bins -> 10, 32
channels, flattened to 320), a stride-2 TDNN (128), three context-aware masked dense TDNN blocks (12, 24, 16
layers, growth 32, dilation 1, 2, 2; each layer's output gated by a sigmoid of its utterance mean plus its
100-frame segment means), each followed by a halving transit, statistics pooling (mean, unbiased std) and a
dense layer with a non-affine BatchNorm -> 192. Inference only: BatchNorms use their running statistics.

The front end is numpy (float64, see `kaldi_fbank`); the network is jitted over rows of features zero-padded
with their valid frame counts: every time convolution reads zeros past a row's end and
every pooling averages its valid frames only, so a row's embedding is that of the row alone.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from mdm_jax.config.overrides import check
from mdm_jax.model.weights_folder import check_fits, load_folder, save_folder

SAMPLE_RATE = 16_000
FRAME, SHIFT, FFT = 400, 160, 512  # Kaldi's 25 ms window, 10 ms shift, padded to a power of two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Kaldi's default lowest mel edge; the highest is Nyquist
LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi and torchaudio floor the mel energies at float32 eps
FRAMES_PER_SECOND = SAMPLE_RATE // SHIFT
MIN_SAMPLES = FRAME + 2 * SHIFT  # 3 fbank frames -> 2 after the stride-2 TDNN: the pooled std needs two
CONFIG_FILE = "campplus.json"


@dataclass(frozen=True)
class CAMPPlusConfig:
    n_mels: int = 80
    embedding_size: int = 192
    head_channels: int = 32  # FCM's 2-D conv channels
    init_channels: int = 128  # the stride-2 TDNN's width
    growth_rate: int = 32  # channels each dense layer adds
    bn_size: int = 4  # a dense layer's bottleneck is bn_size · growth_rate wide
    block_layers: tuple[int, ...] = (12, 24, 16)
    block_dilations: tuple[int, ...] = (1, 2, 2)
    kernel_size: int = 3
    segment: int = 100  # frames per context segment (1 s at 100 Hz, 2 s after the stride)
    bn_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "block_layers", tuple(self.block_layers))  # JSON gives lists
        object.__setattr__(self, "block_dilations", tuple(self.block_dilations))
        check(self.n_mels % 8 == 0, f"n_mels={self.n_mels} must be divisible by 8 (the head halves it 3 times)")
        check(len(self.block_layers) == len(self.block_dilations),
              f"block_layers {self.block_layers} and block_dilations {self.block_dilations} differ in length")
        check(self.kernel_size % 2 == 1, f"kernel_size={self.kernel_size} must be odd")


def num_frames(samples):
    """Kaldi fbank frames of `samples` (>= FRAME) samples with snip_edges (works on arrays)."""
    return 1 + (samples - FRAME) // SHIFT


def _kaldi_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)


@functools.cache
def kaldi_mel_banks(n_mels: int) -> np.ndarray:
    """(FFT // 2 + 1, n_mels) float32 triangular filters on Kaldi's mel scale 1127·ln(1 + f / 700), equally
    spaced from LOW_FREQ to Nyquist, unnormalised; the Nyquist bin has no weight (as Kaldi's)."""
    low, high = _kaldi_mel(LOW_FREQ), _kaldi_mel(SAMPLE_RATE / 2)
    edges = low + np.arange(n_mels + 2) * (high - low) / (n_mels + 1)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    bins = _kaldi_mel(np.arange(FFT // 2) * SAMPLE_RATE / FFT)[:, None]
    weights = np.maximum(0.0, np.minimum((bins - left) / (center - left), (right - bins) / (right - center)))
    return np.pad(weights, ((0, 1), (0, 0))).astype(np.float32)


def kaldi_fbank(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Kaldi log-mel filterbank, as torchaudio.compliance.kaldi.fbank(audio[None], num_mel_bins=n_mels, dither=0,
    sample_frequency=16000). In float64: float32 FFTs (Kaldi's, torchaudio's, XLA's) each round the quiet bins'
    logs by up to ~1e-4, so the exact value is the one closest to all of them.

    Args:
      audio: (samples,) float waveform at 16 kHz in [-1, 1], samples >= FRAME.

    Returns:
      (num_frames(samples), n_mels) float32.
    """
    index = np.arange(num_frames(len(audio)))[:, None] * SHIFT + np.arange(FRAME)[None, :]
    x = np.asarray(audio, np.float32).astype(np.float64)[index]  # (F, FRAME)
    x = x - x.mean(axis=-1, keepdims=True)  # remove_dc_offset
    x = x - PREEMPHASIS * np.concatenate([x[:, :1], x[:, :-1]], axis=-1)  # the first sample is its own past
    power = np.abs(np.fft.rfft(x * np.hanning(FRAME) ** 0.85, n=FFT, axis=-1)) ** 2  # povey window; (F, FFT/2 + 1)
    return np.log(np.maximum(power @ kaldi_mel_banks(n_mels).astype(np.float64), LOG_FLOOR)).astype(np.float32)


def features(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """CosyVoice2's CAM++ input: the fbank minus its mean over the utterance. (samples,) -> (F, n_mels) float32."""
    fbank = kaldi_fbank(audio, n_mels)
    return fbank - fbank.mean(axis=0, keepdims=True)


def _keep(x, valid):
    """Zero the frames past each row's end, as the reference's convolutions see its zero padding there.
    x: (b, ..., t, c) with time second to last; valid: (b, t) bool."""
    return jnp.where(valid.reshape(valid.shape[0], *([1] * (x.ndim - 3)), valid.shape[1], 1), x, 0.0)


class BatchNorm(nn.Module):
    """Inference BatchNorm over the last axis from running statistics; `affine=False`: no scale and bias."""

    eps: float
    affine: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.param("scale", nn.initializers.ones, (c,)) + self.param("bias", nn.initializers.zeros, (c,))
        return y


def _conv2d(channels: int, kernel: int, stride: int, name: str) -> nn.Conv:
    """FCM's bias-free 2-D conv over (freq, time), padded as the reference's (k - 1) / 2 on both sides;
    `stride` subsamples frequency only."""
    pad = (kernel - 1) // 2
    return nn.Conv(channels, (kernel, kernel), strides=(stride, 1), padding=((pad, pad), (pad, pad)), use_bias=False,
                   name=name)


class ResBlock(nn.Module):
    """FCM's 2-D basic residual block."""

    channels: int
    stride: int
    eps: float

    @nn.compact
    def __call__(self, x, valid):
        """x: (b, freq, t, c); valid: (b, t) -> (b, freq / stride, t, channels)."""
        h = nn.relu(BatchNorm(self.eps, name="bn1")(_conv2d(self.channels, 3, self.stride, "conv1")(_keep(x, valid))))
        h = BatchNorm(self.eps, name="bn2")(_conv2d(self.channels, 3, 1, "conv2")(_keep(h, valid)))
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = BatchNorm(self.eps, name="shortcut_bn")(_conv2d(self.channels, 1, self.stride, "shortcut")(x))
        return nn.relu(h + x)


class FCM(nn.Module):
    """The head: fbank (b, t, n_mels) -> (b, t, head_channels · n_mels / 8)."""

    cfg: CAMPPlusConfig

    @nn.compact
    def __call__(self, x, valid):
        c, m = self.cfg, self.cfg.head_channels
        x = rearrange(x, "b t f -> b f t")[..., None]  # (b, freq, t, 1): an image of one channel
        x = nn.relu(BatchNorm(c.bn_eps, name="bn1")(_conv2d(m, 3, 1, "conv1")(_keep(x, valid))))
        for layer in ("layer1", "layer2"):
            x = ResBlock(m, 2, c.bn_eps, name=f"{layer}_0")(x, valid)
            x = ResBlock(m, 1, c.bn_eps, name=f"{layer}_1")(x, valid)
        x = nn.relu(BatchNorm(c.bn_eps, name="bn2")(_conv2d(m, 3, 2, "conv2")(_keep(x, valid))))
        return rearrange(x, "b f t c -> b t (c f)")  # channel-major, as the reference's reshape


def _masked_mean(x, valid):
    """x: (b, ..., c) over frames (b, ..., t, c), valid (b, t) -> the mean of each row's valid frames (b, ..., 1, c)."""
    count = jnp.sum(valid, axis=-1)[..., None, None]
    return jnp.sum(jnp.where(valid[..., None], x, 0.0), axis=-2, keepdims=True) / jnp.maximum(count, 1)  # no 0 / 0


class CAMDenseLayer(nn.Module):
    """BN-ReLU-1x1 bottleneck, BN-ReLU, then a dilated conv gated by the context-aware mask: a sigmoid MLP of
    the utterance mean plus the mean of the frame's `segment`-frame segment."""

    cfg: CAMPPlusConfig
    dilation: int

    @nn.compact
    def __call__(self, x, valid):
        """x: (b, t, c_in); valid: (b, t) -> (b, t, growth_rate)."""
        c = self.cfg
        width = c.bn_size * c.growth_rate
        h = nn.Dense(width, use_bias=False, name="linear1")(nn.relu(BatchNorm(c.bn_eps, name="bn1")(x)))
        h = nn.relu(BatchNorm(c.bn_eps, name="bn2")(h))
        pad = (c.kernel_size - 1) // 2 * self.dilation
        y = nn.Conv(c.growth_rate, (c.kernel_size,), kernel_dilation=(self.dilation,), padding=((pad, pad),),
                    use_bias=False, name="local")(_keep(h, valid))
        t, s = h.shape[1], c.segment
        segments = -(-t // s)
        pad_to = ((0, 0), (0, segments * s - t))
        chunks = rearrange(jnp.pad(h, pad_to + ((0, 0),)), "b (n s) c -> b n s c", s=s)
        seg_mean = _masked_mean(chunks, rearrange(jnp.pad(valid, pad_to), "b (n s) -> b n s", s=s))  # (b, n, 1, c)
        seg_mean = rearrange(jnp.broadcast_to(seg_mean, chunks.shape), "b n s c -> b (n s) c")[:, :t]
        context = _masked_mean(h, valid) + seg_mean  # (b, t, width)
        gate = nn.sigmoid(nn.Dense(c.growth_rate, name="gate2")(nn.relu(nn.Dense(width // 2, name="gate1")(context))))
        return y * gate


class CAMPPlus(nn.Module):
    """Mean-normalised fbank (b, t, n_mels), frames (b,) -> (b, embedding_size) x-vectors."""

    cfg: CAMPPlusConfig

    @nn.compact
    def __call__(self, feats, frames):
        c = self.cfg
        valid = jnp.arange(feats.shape[1])[None, :] < frames[:, None]
        x = FCM(c, name="head")(feats, valid)
        x = nn.Conv(c.init_channels, (5,), strides=(2,), padding=((2, 2),), use_bias=False, name="tdnn")(
            _keep(x, valid))
        frames = (frames - 1) // 2 + 1
        valid = jnp.arange(x.shape[1])[None, :] < frames[:, None]
        x = nn.relu(BatchNorm(c.bn_eps, name="tdnn_bn")(x))
        for i, (layers, dilation) in enumerate(zip(c.block_layers, c.block_dilations), start=1):
            for j in range(1, layers + 1):
                x = jnp.concatenate([x, CAMDenseLayer(c, dilation, name=f"block{i}_{j}")(x, valid)], axis=-1)
            x = nn.relu(BatchNorm(c.bn_eps, name=f"transit{i}_bn")(x))
            x = nn.Dense(x.shape[-1] // 2, use_bias=False, name=f"transit{i}")(x)
        x = nn.relu(BatchNorm(c.bn_eps, name="out_bn")(x))
        mean = _masked_mean(x, valid)  # (b, 1, c)
        var = jnp.sum(jnp.where(valid[..., None], (x - mean) ** 2, 0.0), axis=1) / (frames[:, None] - 1)  # unbiased
        stats = jnp.concatenate([mean[:, 0], jnp.sqrt(var)], axis=-1)  # (b, 2c)
        return BatchNorm(c.bn_eps, affine=False, name="dense_bn")(
            nn.Dense(c.embedding_size, use_bias=False, name="dense")(stats))


def random_params(cfg: CAMPPlusConfig, key) -> dict:
    return CAMPPlus(cfg).init(key, jnp.zeros((1, 8, cfg.n_mels), jnp.float32), jnp.array([8]))["params"]


@functools.partial(jax.jit, static_argnames=("cfg",))
def embed_features(params, cfg: CAMPPlusConfig, feats, frames):
    """(b, t, n_mels) zero-padded `features`, (b,) valid frames (each >= 3) -> (b, embedding_size) float32."""
    with jax.default_matmul_precision("float32"):  # a 7 M-parameter encoder run once per voice: full precision
        return CAMPPlus(cfg).apply({"params": params}, feats, frames)


def check_audio(audio, name: str = "audio") -> np.ndarray:
    """A mono 16 kHz waveform as (samples,) float32, or ValueError naming `name` and what is wrong with it."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"{name}: shape {audio.shape}; expected mono (samples,) at {SAMPLE_RATE} Hz")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"{name}: dtype {audio.dtype}; expected float samples in [-1, 1]")
    if len(audio) < MIN_SAMPLES:
        raise ValueError(f"{name}: {len(audio)} samples ({len(audio) / SAMPLE_RATE * 1000:.0f} ms) is too short to "
                         f"embed a speaker: CAM++ needs at least {MIN_SAMPLES} samples at {SAMPLE_RATE} Hz")
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{name}: contains NaN or inf samples")
    return audio.astype(np.float32)


def speaker_embeddings(params, cfg: CAMPPlusConfig, waves: list[np.ndarray]) -> np.ndarray:
    """16 kHz float waveforms (each >= MIN_SAMPLES samples) -> (len(waves), embedding_size) float32 x-vectors.
    Rows are padded to whole seconds of frames: one program per (batch, seconds)."""
    feats = [features(check_audio(w, f"waveform {i}"), cfg.n_mels) for i, w in enumerate(waves)]
    frames = np.array([len(f) for f in feats], np.int32)
    batch = np.zeros((len(feats), FRAMES_PER_SECOND * -(-frames.max() // FRAMES_PER_SECOND), cfg.n_mels), np.float32)
    for i, f in enumerate(feats):
        batch[i, : len(f)] = f
    return np.asarray(embed_features(params, cfg, batch, frames))


def speaker_embedding(params, cfg: CAMPPlusConfig, audio_16k: np.ndarray) -> np.ndarray:
    """(samples,) 16 kHz float waveform in [-1, 1] -> (embedding_size,) float32: CosyVoice2's flow_embedding."""
    return speaker_embeddings(params, cfg, [audio_16k])[0]


@dataclass(frozen=True, eq=False)
class SpeakerEncoder:
    """Converted CAM++ weights + sizes; `embed` turns a prompt wav into the voice of a CosyVoice2 token2wav."""

    params: dict
    config: CAMPPlusConfig

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        return speaker_embedding(self.params, self.config, audio_16k)

    def save(self, path: str | Path) -> Path:
        return save_folder(path, CONFIG_FILE, dataclasses.asdict(self.config), self.params)

    @classmethod
    def load(cls, path: str | Path) -> SpeakerEncoder:
        meta, params = load_folder(path, CONFIG_FILE, "CAM++ speaker encoder", "campplus")
        cfg = CAMPPlusConfig(**meta)
        check_fits(params, functools.partial(random_params, cfg), path, CONFIG_FILE)
        return cls(params, cfg)
