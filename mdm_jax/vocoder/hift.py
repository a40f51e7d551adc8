"""CosyVoice2's HiFT vocoder (HiFTNet: neural source filter + iSTFTNet): 80-bin log-mel at 50 Hz -> 24 kHz
waveform, in Flax Linen, numerically matching the PyTorch `HiFTGenerator` (`mdm_jax.convert.hift` loads its weights).

    cfg = HiFTConfig(); params = hift_from_torch(torch.load("hift.pt", map_location="cpu"), cfg)  # or init_params
    wave, source = hift_waveform(params, cfg, mel, jax.random.key(0))  # mel (b, F, 80) -> wave, source (b, 480·F)
    wave2, _ = hift_waveform(params, cfg, mel2, jax.random.key(1), cache_source=source[:, -n:])  # next chunk

Pipeline (channels last; F mel frames, T = 480·F samples, H = nb_harmonics + 1, N = T / hop_len + 1 STFT frames):
  f0 predictor     mel (b, F, 80) -> 5 x (conv3 + ELU) -> |linear| -> f0 (b, F) Hz
  source (NSF)     f0 -> H harmonic sines at 24 kHz (SineGen2's frame-rate phase), voiced/unvoiced mask, noise,
                   linear + tanh -> excitation (b, T); its STFT (b, N, n_fft + 2) = [real | imag]
  filter           conv_pre -> 3 x (leaky ReLU, transposed conv x8 / x5 / x3, + source branch, mean of 3 resblocks)
                   -> conv_post (b, N, n_fft + 2) -> exp magnitude, sin phase -> iSTFT -> clip -> (b, T)

Randomness is an input: `phase` (b, H) ~ U[0, 1) (the reference's initial phase, in cycles) and `noise` (b, T, H)
~ N(0, 1), scaled here by the voiced/unvoiced noise amplitude; `hift_waveform` draws both from a key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class HiFTConfig:
    """CosyVoice2-0.5B's published `hift` (cosyvoice2.yaml)."""

    in_channels: int = 80  # mel bins
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24_000
    nsf_alpha: float = 0.1  # sine amplitude
    nsf_sigma: float = 0.003  # noise std in voiced samples (unvoiced: nsf_alpha / 3)
    nsf_voiced_threshold: float = 10.0  # Hz
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512  # ConvRNNF0Predictor(num_class=1, in_channels=in_channels, cond_channels=...)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # lists (JSON, overrides) become tuples: a config is a hashable jit key
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(tuple(x) if isinstance(x, list) else x for x in value))
        if self.n_fft % self.hop_len:
            raise ValueError(f"n_fft {self.n_fft} must be a multiple of hop_len {self.hop_len} (overlap-add by blocks)")

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates) * self.hop_len


class Snake(nn.Module):
    """x + sin²(αx) / α, one α per channel (BigVGAN's Snake, linear-scale α)."""

    @nn.compact
    def __call__(self, x):  # (b, n, c)
        alpha = self.param("alpha", nn.initializers.ones, (x.shape[-1],))
        return x + 1.0 / (alpha + 1e-9) * jnp.sin(x * alpha) ** 2


class ResBlock(nn.Module):
    """HiFi-GAN residual block with Snake activations: per dilation d, x += conv(snake(conv_d(snake(x))))."""

    channels: int
    kernel_size: int
    dilations: tuple[int, ...]

    @nn.compact
    def __call__(self, x):  # (b, n, channels)
        k = self.kernel_size
        for i, d in enumerate(self.dilations):
            h = Snake(name=f"activations1_{i}")(x)
            h = nn.Conv(self.channels, (k,), kernel_dilation=d, padding=d * (k - 1) // 2, name=f"convs1_{i}")(h)
            h = Snake(name=f"activations2_{i}")(h)
            x = x + nn.Conv(self.channels, (k,), padding=(k - 1) // 2, name=f"convs2_{i}")(h)
        return x


class F0Predictor(nn.Module):
    """CosyVoice's ConvRNNF0Predictor (num_class 1): mel (b, F, n_mels) -> f0 (b, F) in Hz."""

    channels: int

    @nn.compact
    def __call__(self, mel):
        h = mel
        for i in range(5):
            h = nn.elu(nn.Conv(self.channels, (3,), padding=1, name=f"condnet_{i}")(h))
        return jnp.abs(nn.Dense(1, name="classifier")(h)[..., 0])


def _resample_linear(x, n_out: int, ratio: float):
    """torch's F.interpolate(mode="linear", align_corners=False, scale_factor=1/ratio) along axis 1 of (b, n, c).

    Source positions are rounded to float32 once, as ATen's fused multiply-add does, so the weights on the (large)
    phases are ATen's."""
    n_in, f32 = x.shape[1], np.float32
    src = np.maximum(f32(ratio) * (np.arange(n_out) + 0.5) - 0.5, 0).astype(f32)  # float64 product, then one rounding
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam1 = np.clip(src - i0.astype(f32), 0, 1).astype(f32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return x[:, i0] * (f32(1) - lam1)[:, None] + x[:, i1] * lam1[:, None]


def harmonics(cfg: HiFTConfig, f0, phase, noise):
    """SineGen2: f0 (b, F) Hz, phase (b, H) ~ U[0, 1), noise (b, T, H) ~ N(0, 1) -> (b, T, H) noisy harmonics.

    The phase is integrated at frame rate (per-sample increments linearly resampled to F frames, cumsum, times
    samples_per_frame) and linearly interpolated back to T samples, as the reference does for its 24 kHz model.
    The initial phase is added to the first sample only, which (as in the reference) the resampling to frames reads
    only when samples_per_frame <= 2: at 480 it has no effect."""
    s, h = cfg.samples_per_frame, cfg.nb_harmonics + 1
    f0 = jnp.repeat(f0, s, axis=1)[..., None]  # (b, T, 1): nearest upsampling, as nn.Upsample
    rad = (f0 * jnp.arange(1, h + 1, dtype=jnp.float32) / cfg.sampling_rate) % 1  # cycles per sample
    rad = rad.at[:, 0].add(jnp.where(jnp.arange(h) == 0, 0.0, phase))  # initial phase, none for the fundamental
    rad = _resample_linear(rad, f0.shape[1] // s, 1.0 / (1.0 / s))  # (b, F, H); torch's ratio is 1 / scale_factor
    theta = _resample_linear(jnp.cumsum(rad, axis=1) * 2 * np.pi * s, f0.shape[1], 1.0 / s)  # (b, T, H) radians
    uv = (f0 > cfg.nsf_voiced_threshold).astype(jnp.float32)
    noise_amp = uv * cfg.nsf_sigma + (1 - uv) * cfg.nsf_alpha / 3
    return jnp.sin(theta) * cfg.nsf_alpha * uv + noise_amp * noise


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window, = scipy.signal.get_window("hann", n, fftbins=True)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x, n_fft: int, hop: int):
    """torch.stft(center=True, reflect padding, periodic Hann): (b, T) -> (b, T // hop + 1, n_fft + 2) [real | imag]."""
    padded = jnp.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    starts = np.arange((padded.shape[1] - n_fft) // hop + 1) * hop
    spec = jnp.fft.rfft(padded[:, starts[:, None] + np.arange(n_fft)] * _hann(n_fft), axis=-1)
    return jnp.concatenate([spec.real, spec.imag], axis=-1)


def istft(magnitude, phase, n_fft: int, hop: int):
    """torch.istft(center=True, periodic Hann): magnitude, phase (b, N, n_fft // 2 + 1) -> (b, hop·(N - 1))."""
    magnitude = jnp.minimum(magnitude, 1e2)
    frames = jnp.fft.irfft(jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase)), n=n_fft, axis=-1)
    window = _hann(n_fft)
    b, n, r = frames.shape[0], frames.shape[1], n_fft // hop
    blocks = (frames * window).reshape(b, n, r, hop)  # frame j's block m lands on output block j + m
    out, envelope = jnp.zeros((b, n + r - 1, hop)), np.zeros((n + r - 1, hop), np.float32)
    for m in range(r):
        out = out.at[:, m:m + n].add(blocks[:, :, m])
        envelope[m:m + n] += (window**2).reshape(r, hop)[m]
    trim = slice(n_fft // 2, -(n_fft // 2))  # center=True: drop the half-window padding at both ends
    return out.reshape(b, -1)[:, trim] / envelope.reshape(-1)[trim]


class SourceMerge(nn.Module):
    """SourceModuleHnNSF2's merge: (b, T, H) harmonics -> tanh(linear) -> (b, T) excitation."""

    @nn.compact
    def __call__(self, harmonics):
        return jnp.tanh(nn.Dense(1, name="l_linear")(harmonics)[..., 0])


class HiFTGenerator(nn.Module):
    """Mel + explicit random draws -> waveform; params named after the torch modules (`resblocks_4/convs1_0`)."""

    cfg: HiFTConfig

    def setup(self):
        c = self.cfg
        ch = [c.base_channels // 2 ** (i + 1) for i in range(len(c.upsample_rates))]
        self.f0_predictor = F0Predictor(c.f0_cond_channels)
        self.m_source = SourceMerge()
        self.conv_pre = nn.Conv(c.base_channels, (7,), padding=3)
        # kernel (k, out, in) as torch's ConvTranspose1d; transpose_kernel flips it, so padding k-1-p gives torch's p
        self.ups = [nn.ConvTranspose(ch[i], (k,), strides=(u,), padding=[(k - 1 - (k - u) // 2,) * 2],
                                     transpose_kernel=True)
                    for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes))]
        # the source STFT (hop_len) is brought down to stage i's rate, prod(upsample_rates[i+1:]) times coarser
        down = [math.prod(c.upsample_rates[i + 1:]) for i in range(len(ch))]
        self.source_downs = [nn.Conv(ch[i], (2 * u,), strides=u, padding=u // 2) if u > 1
                             else nn.Conv(ch[i], (1,), padding=0) for i, u in enumerate(down)]
        self.source_resblocks = [ResBlock(ch[i], k, d) for i, (k, d) in enumerate(
            zip(c.source_resblock_kernel_sizes, c.source_resblock_dilation_sizes))]
        self.resblocks = [ResBlock(ch[i], k, d) for i in range(len(ch))
                          for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes)]
        self.conv_post = nn.Conv(c.n_fft + 2, (7,), padding=3)

    def __call__(self, mel, phase, noise, cache_source=None):
        """mel (b, F, n_mels); phase (b, H); noise (b, T, H); cache_source (b, n) replaces the excitation's first n
        samples -> (waveform (b, T), excitation (b, T), f0 (b, F))."""
        f0 = self.f0_predictor(mel)
        source = self.m_source(harmonics(self.cfg, f0, phase, noise))
        if cache_source is not None:
            source = source.at[:, :cache_source.shape[1]].set(cache_source)
        return self.decode(mel, source), source, f0

    def decode(self, mel, source):
        """mel (b, F, n_mels), excitation (b, T) -> waveform (b, T)."""
        c, nk = self.cfg, len(self.cfg.resblock_kernel_sizes)
        s = stft(source, c.n_fft, c.hop_len)  # (b, T / hop + 1, n_fft + 2)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(nn.leaky_relu(x, c.lrelu_slope))
            if i == len(self.ups) - 1:  # one more frame (reflected) to line up with the STFT's T / hop + 1
                x = jnp.pad(x, ((0, 0), (1, 0), (0, 0)), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s))
            x = sum(rb(x) for rb in self.resblocks[i * nk:(i + 1) * nk]) / nk
        x = self.conv_post(nn.leaky_relu(x, 0.01))  # torch's default slope here, not lrelu_slope
        bins = c.n_fft // 2 + 1
        wave = istft(jnp.exp(x[..., :bins]), jnp.sin(x[..., bins:]), c.n_fft, c.hop_len)
        return jnp.clip(wave, -c.audio_limit, c.audio_limit)


def init_params(cfg: HiFTConfig, seed: int = 0) -> dict:
    """Randomly initialised params (Flax default initialisers, Snake alphas 1), for tests and shapes."""
    frames = 2
    t, h = frames * cfg.samples_per_frame, cfg.nb_harmonics + 1
    mel, phase, noise = jnp.zeros((1, frames, cfg.in_channels)), jnp.zeros((1, h)), jnp.zeros((1, t, h))
    return nn.unbox(HiFTGenerator(cfg).init(jax.random.key(seed), mel, phase, noise)["params"])


@functools.partial(jax.jit, static_argnames=("cfg",))
def hift_waveform(params, cfg: HiFTConfig, mel, key, cache_source=None):
    """mel (b, F, n_mels) log-mel at 50 Hz -> (waveform (b, 480·F), excitation (b, 480·F)), both 24 kHz.

    The random initial phase and noise come from `key` (U[0, 1) and N(0, 1), as torch.rand / randn_like in the
    reference). cache_source (b, n): the previous chunk's excitation tail, replacing this chunk's first n samples;
    CosyVoice2 streams with mel chunks that start with the previous chunk's last n / 480 frames."""
    h, t = cfg.nb_harmonics + 1, mel.shape[1] * cfg.samples_per_frame
    k_phase, k_noise = jax.random.split(key)
    phase = jax.random.uniform(k_phase, (mel.shape[0], h))
    noise = jax.random.normal(k_noise, (mel.shape[0], t, h))
    wave, source, _ = HiFTGenerator(cfg).apply({"params": params}, mel, phase, noise, cache_source)
    return wave, source
