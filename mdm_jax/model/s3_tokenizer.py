"""CosyVoice2's speech tokenizer, S3Tokenizer v2 (25 Hz, 6561 FSQ codes), and CosyVoice3's v3: audio -> the
speech tokens VocalNet's Talker predicts.

    tok = S3Tokenizer.load("s3_v2_jax")        # written by `python -m mdm_jax.cli convert s3tokenizer`
    ids = tok([wave_a, wave_b])                # 16 kHz float32 waveforms -> [(25·s,) int32, ...]

Audio (16 kHz) -> 128-bin Whisper log-mel (100 Hz; `log_mel`, in JAX) -> two stride-2 convs (25 Hz) ->
pre-LN transformer layers whose attention has rotary q/k plus an FSMN memory (a depthwise conv over the
values, added to the output) -> Linear(d, 8) -> FSQ: each of the 8 dims is round(0.999·tanh(h)) + 1 in
{0, 1, 2}, the id is their base-3 number. v3 is v2 with 12 layers instead of 6 (same blocks, same FSQ).

Rows are padded to a length bucket with their valid sample counts: the mel, the convs' inputs,
attention keys and the FSMN memory all mask the padding, so a row's tokens are those of the row alone.
One program per (batch, bucket) shape.
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

from data_pipelines.features import HOP, N_FFT, SAMPLE_RATE, mel_filters
from mdm_jax.config.overrides import ConfigError, check
from mdm_jax.model.rope import apply_rope, inverse_frequencies
from mdm_jax.model.weights_folder import check_fits, load_folder, save_folder

TOKEN_HOP = 4 * HOP  # audio samples per token: two stride-2 convs over 100 Hz frames -> 25 Hz
MAX_SECONDS = 30  # the reference encodes at most 30 s at once (longer audio: overlapping windows)
FSQ_SCALE = np.float32(0.999)  # tanh is scaled below 1 so no dim rounds to +-1 on saturation alone
CONFIG_FILE = "s3_tokenizer.json"


@dataclass(frozen=True)
class S3TokenizerConfig:
    n_mels: int = 128
    d_model: int = 1280
    num_heads: int = 20
    num_layers: int = 6  # v2: 6, v3: 12
    fsmn_kernel: int = 31
    rope_dim: int = 64  # the reference's rotary table is 64 wide: heads must be 64 wide
    rope_theta: float = 10_000.0
    fsq_dims: int = 8
    fsq_levels: int = 3
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        check(self.d_model % self.num_heads == 0, f"d_model={self.d_model} not divisible by num_heads={self.num_heads}")
        check(self.d_model // self.num_heads == self.rope_dim,
              f"head width d_model/num_heads={self.d_model // self.num_heads} must equal rope_dim={self.rope_dim}")
        check(self.fsmn_kernel % 2 == 1, f"fsmn_kernel={self.fsmn_kernel} must be odd")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def codebook_size(self) -> int:
        return self.fsq_levels**self.fsq_dims


PRESETS = {"v2": S3TokenizerConfig(), "v3": S3TokenizerConfig(num_layers=12)}


def get_s3_config(name: str, overrides: dict | None = None) -> S3TokenizerConfig:
    """A preset ("v2" CosyVoice2, "v3" CosyVoice3) with field overrides, e.g. {"d_model": 128}."""
    if name not in PRESETS:
        raise ConfigError(f"unknown S3 tokenizer {name!r} (one of {', '.join(PRESETS)})")
    known = {f.name for f in dataclasses.fields(S3TokenizerConfig)}
    if unknown := sorted(set(overrides or {}) - known):
        raise ConfigError(f"unknown S3 tokenizer size {unknown[0]!r} (one of {', '.join(sorted(known))})")
    return dataclasses.replace(PRESETS[name], **(overrides or {}))


def num_tokens(samples):
    """Tokens of `samples` 16 kHz samples: 100 Hz mel frames, then two stride-2 convs (works on arrays)."""
    frames = samples // HOP
    return ((frames - 1) // 2 + 1 - 1) // 2 + 1


def log_mel(audio, samples, n_mels: int = 128):
    """Whisper's log-mel (as `data_pipelines.features.log_mel`), batched over zero-padded rows.

    Args:
      audio: (b, S) float32 waveforms at 16 kHz, row i valid for its first samples[i] (> N_FFT // 2) samples.
      samples: (b,) int.

    Returns:
      (b, n_mels, S // HOP) float32, row i valid for its first samples[i] // HOP frames (zeros after), each
      row's 80 dB floor taken from its own valid frames.
    """
    frames = audio.shape[1] // HOP
    n = samples[:, None, None]
    index = jnp.arange(frames)[:, None] * HOP + jnp.arange(N_FFT)[None, :] - N_FFT // 2  # centred windows
    index = jnp.abs(index)[None]  # reflect at the start
    index = jnp.clip(jnp.where(index >= n, 2 * (n - 1) - index, index), 0, audio.shape[1] - 1)  # and at the end
    windows = jax.vmap(lambda a, i: a[i])(audio.astype(jnp.float32), index)  # (b, F, N_FFT)
    hann = jnp.asarray(np.hanning(N_FFT + 1)[:-1], jnp.float32)  # periodic, as torch.hann_window
    spectrum = jnp.fft.rfft(windows * hann, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = jnp.einsum("bfk,km->bmf", power, jnp.asarray(mel_filters(n_mels), jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
    valid = jnp.arange(frames)[None, None, :] < (samples // HOP)[:, None, None]
    floor = jnp.max(jnp.where(valid, log_spec, -jnp.inf), axis=(1, 2), keepdims=True) - 8.0
    return jnp.where(valid, (jnp.maximum(log_spec, floor) + 4.0) / 4.0, 0.0)


def _layer_norm(eps: float, name: str):
    return nn.LayerNorm(eps, dtype=jnp.float32, name=name)  # in float32 whatever the compute dtype, as the reference


class FSMNAttention(nn.Module):
    """Self-attention with rotary q/k, plus the FSMN memory: values + a depthwise conv over them."""

    cfg: S3TokenizerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, valid):
        """x: (b, t, d); valid: (b, t) bool -> (b, t, d)."""
        c = self.cfg
        dense = lambda name, bias: nn.Dense(c.d_model, use_bias=bias, dtype=self.dtype, name=name)
        heads = lambda y: rearrange(y, "b t (h e) -> b t h e", h=c.num_heads)
        q, k, v = heads(dense("query", True)(x)), heads(dense("key", False)(x)), heads(dense("value", True)(x))
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        inv_freq = inverse_frequencies(c.rope_dim, c.rope_theta)
        scale = jnp.asarray(c.head_dim**-0.25, self.dtype)  # on q and k each, as the reference
        q, k = apply_rope(q, positions, inv_freq) * scale, apply_rope(k, positions, inv_freq) * scale
        logits = jnp.einsum("bqhe,bkhe->bhqk", q, k).astype(jnp.float32)
        logits = jnp.where(valid[:, None, None, :], logits, -1e10)  # padding is never a key
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = dense("out", True)(rearrange(jnp.einsum("bhqk,bkhe->bqhe", weights, v), "b t h e -> b t (h e)"))
        memory = rearrange(v, "b t h e -> b t (h e)") * valid[..., None]
        pad = (c.fsmn_kernel - 1) // 2
        memory = memory + nn.Conv(c.d_model, (c.fsmn_kernel,), padding=((pad, pad),), feature_group_count=c.d_model,
                                  use_bias=False, dtype=self.dtype, name="fsmn")(memory)
        return out + memory * valid[..., None]


class S3Layer(nn.Module):
    cfg: S3TokenizerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, valid):
        c = self.cfg
        x = x + FSMNAttention(c, self.dtype, name="attn")(
            _layer_norm(c.layer_norm_eps, "attn_norm")(x).astype(self.dtype), valid)
        h = _layer_norm(c.layer_norm_eps, "mlp_norm")(x).astype(self.dtype)
        h = nn.Dense(4 * c.d_model, dtype=self.dtype, name="fc1")(h)
        return x + nn.Dense(c.d_model, dtype=self.dtype, name="fc2")(nn.gelu(h, approximate=False))


class S3Encoder(nn.Module):
    """Log-mel -> the quantizer's input: the 8 pre-FSQ activations per 25 Hz token."""

    cfg: S3TokenizerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, mel, frames):
        """mel: (b, n_mels, F) log-mel at 100 Hz; frames: (b,) valid frames per row ->
        ((b, T, fsq_dims) float32, (b,) valid tokens), T = ceil(ceil(F / 2) / 2)."""
        c = self.cfg
        conv = lambda name: nn.Conv(c.d_model, (3,), strides=(2,), padding=((1, 1),), dtype=self.dtype,
                                    name=name)
        keep = lambda y, n: jnp.where(jnp.arange(y.shape[1])[None, :, None] < n[:, None, None], y, 0)
        x = keep(rearrange(mel, "b m f -> b f m"), frames).astype(self.dtype)
        x = nn.gelu(conv("conv1")(x), approximate=False)
        halved = (frames - 1) // 2 + 1
        x = nn.gelu(conv("conv2")(keep(x, halved)), approximate=False)
        tokens = (halved - 1) // 2 + 1
        valid = jnp.arange(x.shape[1])[None, :] < tokens[:, None]
        for i in range(c.num_layers):
            x = S3Layer(c, self.dtype, name=f"layers_{i}")(x, valid)
        return nn.Dense(c.fsq_dims, dtype=jnp.float32, name="project_down")(x.astype(jnp.float32)), tokens


def fsq_digits(h):
    """(..., fsq_dims) pre-FSQ activations -> their digits in {0, 1, 2} (float32); jnp.round: half to even."""
    return jnp.round(jnp.tanh(h.astype(jnp.float32)) * FSQ_SCALE) + 1


def fsq_ids(h, levels: int = 3):
    """(..., fsq_dims) -> (...) int32 ids in [0, levels**fsq_dims): digit i weighs levels**i."""
    powers = jnp.asarray(levels ** np.arange(h.shape[-1]), jnp.float32)
    return jnp.sum(fsq_digits(h) * powers, axis=-1).astype(jnp.int32)


def encode(params, cfg: S3TokenizerConfig, audio, samples, dtype=jnp.float32):
    """(b, S) zero-padded 16 kHz audio, (b,) valid samples -> ((b, T, fsq_dims) pre-FSQ float32, (b,) tokens)."""
    mel = log_mel(audio, samples, cfg.n_mels)
    return S3Encoder(cfg, dtype).apply({"params": params}, mel, samples // HOP)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def tokenize(params, cfg: S3TokenizerConfig, audio, samples, dtype: str = "float32"):
    """(b, S) zero-padded 16 kHz audio, (b,) valid samples -> ((b, T) int32 ids, 0 past each row's end, (b,) tokens)."""
    h, tokens = encode(params, cfg, audio, samples, jnp.dtype(dtype))
    ids = fsq_ids(h, cfg.fsq_levels)
    return jnp.where(jnp.arange(ids.shape[1])[None] < tokens[:, None], ids, 0), tokens


def random_params(cfg: S3TokenizerConfig, key) -> dict:
    mel = jnp.zeros((1, cfg.n_mels, 8), jnp.float32)
    return S3Encoder(cfg).init(key, mel, jnp.array([8]))["params"]


def seconds_bucket(samples: int) -> int:
    """The padded length of `samples`: whole seconds up to 2 s, then even seconds (16 programs up to 30 s)."""
    seconds = -(-samples // SAMPLE_RATE)
    return SAMPLE_RATE * (seconds if seconds <= 2 else seconds + seconds % 2)


def pad_batch(waves: list[np.ndarray], rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Waveforms -> ((rows, bucket) float32 zero-padded, (rows,) int32 samples); padding rows (beyond the
    waveforms) are silence one bucket long."""
    longest = seconds_bucket(max(len(w) for w in waves))
    rows = rows or len(waves)
    audio = np.zeros((rows, longest), np.float32)
    samples = np.full(rows, longest, np.int32)
    for i, w in enumerate(waves):
        audio[i, : len(w)], samples[i] = w, len(w)
    return audio, samples


@dataclass(frozen=True, eq=False)
class S3Tokenizer:
    """Converted S3 tokenizer weights + sizes; calling it tokenizes a batch of waveforms."""

    params: dict
    config: S3TokenizerConfig
    dtype: str = "float32"  # compute dtype ("bfloat16": bf16 matmuls; norms, softmax and FSQ stay float32)

    def __call__(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """16 kHz float32 waveforms (each N_FFT // 2 .. 30 s samples) -> their (25·s,) int32 ids."""
        for i, w in enumerate(waves):
            if not N_FFT // 2 < len(w) <= MAX_SECONDS * SAMPLE_RATE:
                raise ValueError(f"waveform {i}: {len(w)} samples; the tokenizer takes {N_FFT // 2 + 1} samples "
                                 f"to {MAX_SECONDS} s at {SAMPLE_RATE} Hz")
        audio, samples = pad_batch(waves)
        ids, tokens = jax.device_get(tokenize(self.params, self.config, audio, samples, self.dtype))
        return [row[:n] for row, n in zip(ids, tokens)]

    def save(self, path: str | Path) -> Path:
        return save_folder(path, CONFIG_FILE, dataclasses.asdict(self.config), self.params)

    @classmethod
    def load(cls, path: str | Path, dtype: str = "float32") -> S3Tokenizer:
        meta, params = load_folder(path, CONFIG_FILE, "S3 tokenizer", "s3tokenizer")
        cfg = S3TokenizerConfig(**meta)
        check_fits(params, functools.partial(random_params, cfg), path, CONFIG_FILE)
        return cls(params, cfg, dtype)
