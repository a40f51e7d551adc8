"""CosyVoice2's flow: speech tokens (25 Hz, 6561 codes) -> 80-bin mel at 50 Hz (24 kHz audio), the
model VocalNet's released token2wav runs before HiFT; converted weights come from `flow.pt`
(`mdm_jax.convert.cosyvoice2`).

    mel = token2mel(params, cfg, tokens, lengths, speaker, prompt_mel, noise, streaming=True, finalize=True)

Encoder (`UpsampleConformerEncoder`): token embedding -> Linear + LayerNorm, scaled by sqrt(d) ->
a look-ahead convolution (each token sees the next `pre_lookahead` tokens) -> conformer layers with
relative-position attention -> nearest 2x upsampling + a causal conv -> the same again at 50 Hz ->
LayerNorm -> Linear to `mu` (the mel-sized condition). Estimator (`CausalConditionalDecoder`): a
one-level 1-D U-Net over [x ; mu ; speaker ; prompt mel] with causal convolutions, LayerNorm'd
resnet blocks taking the flow time, and transformer blocks. Sampling: `ode_steps` Euler steps on a
cosine time grid with classifier-free guidance (the unconditional branch zeroes mu, speaker and
prompt), from a fixed noise table indexed by frame, as CosyVoice2 does.

Streaming mode masks every attention to the frame's own `chunk_tokens`-token chunk and earlier ones;
convolutions are causal except the encoder's look-ahead, so with `finalize=False` (the last
`pre_lookahead` tokens only serve as look-ahead) the mel of whole chunks never changes when more
tokens arrive. Layout is channels-last: (batch, time, channels).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG_BIAS = -1.0e10  # the estimator's additive mask bias (CosyVoice2's mask_to_bias), not -inf


@dataclass(frozen=True)
class CosyFlowConfig:
    """Defaults: CosyVoice2-0.5B's `cosyvoice2.yaml` (flow: CausalMaskedDiffWithXvec)."""

    vocab_size: int = 6561
    d_model: int = 512  # token embedding = encoder width
    n_mels: int = 80
    spk_embed_dim: int = 192
    token_mel_ratio: int = 2
    pre_lookahead: int = 3
    encoder_heads: int = 8
    encoder_ffn: int = 2048
    encoder_blocks: int = 6
    up_encoder_blocks: int = 4
    chunk_tokens: int = 25  # static_chunk_size; the estimator's chunk is chunk_tokens · token_mel_ratio frames
    decoder_channels: int = 256
    decoder_heads: int = 8
    decoder_head_dim: int = 64
    decoder_blocks: int = 4  # transformer blocks per U-Net stage
    decoder_mid_blocks: int = 12
    cfg_rate: float = 0.7  # inference_cfg_rate
    ode_steps: int = 10


def chunk_mask(valid, chunk: int):
    """valid: (b, n) bool -> (b, n, n): query i reads key j iff j is valid and chunk(j) <= chunk(i)."""
    ids = jnp.arange(valid.shape[1]) // chunk
    return (ids[None, :] <= ids[:, None])[None] & valid[:, None, :]


def attention_mask(valid, chunk: int, streaming: bool):
    """(b, n) -> (b, n, n): the chunk mask in streaming mode, else every valid key."""
    return chunk_mask(valid, chunk) if streaming else jnp.broadcast_to(valid[:, None, :], valid.shape + valid.shape[1:])


def mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


class CausalConv(nn.Module):
    """Conv1d over time padded on the left only: output t reads inputs t-kernel+1 .. t."""

    features: int
    kernel: int

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (self.kernel - 1, 0), (0, 0)))
        return nn.Conv(self.features, (self.kernel,), padding="VALID", name="conv")(x)


# --- encoder -------------------------------------------------------------------------------------


def relative_positions(n: int, d: int):
    """(2n-1, d) sinusoids of relative positions n-1 .. -(n-1) (ESPnet's rel_pos_espnet table)."""
    rel = jnp.arange(n - 1, -n, -1, dtype=jnp.float32)[:, None]
    angles = rel * jnp.exp(jnp.arange(0, d, 2, dtype=jnp.float32) * -(math.log(10000.0) / d))
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(2 * n - 1, d)


class RelPositionAttention(nn.Module):
    """Transformer-XL attention: content term (q + u)·k plus position term (q + v)·W_pos·pe(i - j)."""

    heads: int

    @nn.compact
    def __call__(self, x, mask):
        """x: (b, n, d); mask: (b, n, n) bool -> (b, n, d)."""
        b, n, d = x.shape
        dk = d // self.heads
        split = lambda y: y.reshape(b, n, self.heads, dk)
        q, k, v = (split(nn.Dense(d, name=name)(x)) for name in ("linear_q", "linear_k", "linear_v"))
        p = nn.Dense(d, use_bias=False, name="linear_pos")(relative_positions(n, d)).reshape(2 * n - 1, self.heads, dk)
        u = self.param("pos_bias_u", nn.initializers.xavier_uniform(), (self.heads, dk))
        w = self.param("pos_bias_v", nn.initializers.xavier_uniform(), (self.heads, dk))
        content = jnp.einsum("bihk,bjhk->bhij", q + u, k)
        by_offset = jnp.einsum("bihk,rhk->bhir", q + w, p)  # r indexes relative position n-1-r
        index = (n - 1) - jnp.arange(n)[:, None] + jnp.arange(n)[None, :]  # (i, j) -> row of i - j
        position = jnp.take_along_axis(by_offset, jnp.broadcast_to(index, (b, self.heads, n, n)), axis=-1)
        scores = jnp.where(mask[:, None], (content + position) / math.sqrt(dk), -jnp.inf)
        attn = jnp.where(mask[:, None], jax.nn.softmax(scores, axis=-1), 0.0)
        return nn.Dense(d, name="linear_out")(jnp.einsum("bhij,bjhk->bihk", attn, v).reshape(b, n, d))


class ConformerLayer(nn.Module):
    """Pre-norm relative-position self-attention + Swish feed-forward (no macaron, no conv module)."""

    heads: int
    ffn: int

    @nn.compact
    def __call__(self, x, mask):
        d = x.shape[-1]
        x = x + RelPositionAttention(self.heads, name="self_attn")(nn.LayerNorm(1e-12, name="norm_mha")(x), mask)
        h = nn.LayerNorm(1e-12, name="norm_ff")(x)
        return x + nn.Dense(d, name="w_2")(nn.silu(nn.Dense(self.ffn, name="w_1")(h)))


class LinearEmbed(nn.Module):
    """Linear + LayerNorm, times sqrt(d) (LinearNoSubsampling + the positional module's x-scale)."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.LayerNorm(1e-5, name="norm")(nn.Dense(self.features, name="linear")(x)) * math.sqrt(self.features)


class UpsampleConformerEncoder(nn.Module):
    cfg: CosyFlowConfig

    @nn.compact
    def __call__(self, x, valid, *, streaming: bool, finalize: bool):
        """x: (b, U, d) embedded tokens (zero where invalid); valid: (b, U) bool -> (h (b, 2U', d), valid
        (b, 2U')) with U' = U, or U - pre_lookahead when not `finalize` (the last tokens are look-ahead only)."""
        c = self.cfg
        x = LinearEmbed(c.d_model, name="embed")(x) * valid[..., None]  # the look-ahead reads zeros past the end
        h = jax.nn.leaky_relu(
            nn.Conv(c.d_model, (c.pre_lookahead + 1,), padding=[(0, c.pre_lookahead)], name="lookahead_conv1")(x))
        x = x + CausalConv(c.d_model, 3, name="lookahead_conv2")(h)
        if not finalize:
            lengths = valid.sum(1) - c.pre_lookahead
            x, valid = x[:, : -c.pre_lookahead], jnp.arange(x.shape[1] - c.pre_lookahead) < lengths[:, None]
        mask = attention_mask(valid, c.chunk_tokens, streaming)
        for i in range(c.encoder_blocks):
            x = ConformerLayer(c.encoder_heads, c.encoder_ffn, name=f"encoders_{i}")(x, mask)
        x = CausalConv(c.d_model, 2 * c.token_mel_ratio + 1, name="up_conv")(jnp.repeat(x, c.token_mel_ratio, axis=1))
        valid = jnp.repeat(valid, c.token_mel_ratio, axis=1)
        x = LinearEmbed(c.d_model, name="up_embed")(x)
        mask = attention_mask(valid, c.chunk_tokens * c.token_mel_ratio, streaming)
        for i in range(c.up_encoder_blocks):
            x = ConformerLayer(c.encoder_heads, c.encoder_ffn, name=f"up_encoders_{i}")(x, mask)
        return nn.LayerNorm(1e-5, name="after_norm")(x), valid


# --- estimator -----------------------------------------------------------------------------------


def time_embedding(t, dim: int):
    """(b,) -> (b, dim) sinusoids of 1000·t (Matcha's SinusoidalPosEmb: log(10000) / (dim/2 - 1))."""
    half = dim // 2
    angles = 1000.0 * t[:, None] * jnp.exp(jnp.arange(half) * -(math.log(10000.0) / (half - 1)))
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class CausalBlock(nn.Module):
    """Causal conv (k=3) -> LayerNorm -> Mish, zero outside the mask."""

    features: int

    @nn.compact
    def __call__(self, x, m):
        return mish(nn.LayerNorm(1e-5, name="norm")(CausalConv(self.features, 3, name="conv")(x * m))) * m


class ResnetBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, m, t):
        """x: (b, T, c_in); m: (b, T, 1); t: (b, time_dim) -> (b, T, features)."""
        h = CausalBlock(self.features, name="block1")(x, m) + nn.Dense(self.features, name="mlp")(mish(t))[:, None]
        h = CausalBlock(self.features, name="block2")(h, m)
        return h + nn.Conv(self.features, (1,), name="res_conv")(x * m)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention (no qkv bias) + GELU feed-forward, the mask as an additive bias."""

    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x, bias):
        """x: (b, T, d); bias: (b, T, T) additive -> (b, T, d)."""
        b, n, d = x.shape
        h = nn.LayerNorm(1e-5, name="norm1")(x)
        q, k, v = (nn.Dense(self.heads * self.head_dim, use_bias=False, name=name)(h).reshape(b, n, self.heads, -1)
                   for name in ("to_q", "to_k", "to_v"))
        scores = jnp.einsum("bihk,bjhk->bhij", q, k) / math.sqrt(self.head_dim) + bias[:, None]
        o = jnp.einsum("bhij,bjhk->bihk", jax.nn.softmax(scores, axis=-1), v).reshape(b, n, -1)
        x = x + nn.Dense(d, name="to_out")(o)
        h = nn.LayerNorm(1e-5, name="norm3")(x)
        return x + nn.Dense(d, name="ff_out")(jax.nn.gelu(nn.Dense(4 * d, name="ff_proj")(h), approximate=False))


class Stage(nn.Module):
    """One U-Net stage: a resnet block, then `blocks` transformer blocks."""

    cfg: CosyFlowConfig

    @nn.compact
    def __call__(self, x, m, t, bias):
        c = self.cfg
        x = ResnetBlock(c.decoder_channels, name="resnet")(x, m, t)
        for j in range(c.decoder_blocks):
            x = TransformerBlock(c.decoder_heads, c.decoder_head_dim, name=f"transformer_{j}")(x, bias)
        return x


class Estimator(nn.Module):
    """CosyVoice2's CausalConditionalDecoder with one channel level (`channels: [256]`): down stage, mid
    stages, up stage over [h ; skip], each followed by a causal conv; no resampling."""

    cfg: CosyFlowConfig

    @nn.compact
    def __call__(self, x, valid, mu, t, spks, cond, *, streaming: bool):
        """x, mu, cond: (b, T, n_mels); valid: (b, T) bool; t: (b,); spks: (b, n_mels) -> velocity (b, T, n_mels)."""
        c = self.cfg
        in_channels = 4 * c.n_mels
        t = time_embedding(t, in_channels)
        t = nn.Dense(4 * c.decoder_channels, name="time_linear_2")(
            nn.silu(nn.Dense(4 * c.decoder_channels, name="time_linear_1")(t)))
        spks = jnp.broadcast_to(spks[:, None], x.shape[:2] + spks.shape[-1:])
        h = jnp.concatenate([x, mu, spks, cond], axis=-1)
        m = valid[..., None].astype(h.dtype)
        bias = jnp.where(attention_mask(valid, c.chunk_tokens * c.token_mel_ratio, streaming), 0.0, NEG_BIAS)
        skip = Stage(c, name="down")(h, m, t, bias)
        h = CausalConv(c.decoder_channels, 3, name="down_conv")(skip * m)
        for i in range(c.decoder_mid_blocks):
            h = Stage(c, name=f"mid_{i}")(h, m, t, bias)
        h = Stage(c, name="up")(jnp.concatenate([h, skip], axis=-1), m, t, bias)
        h = CausalConv(c.decoder_channels, 3, name="up_conv")(h * m)
        h = CausalBlock(c.decoder_channels, name="final_block")(h, m)
        return nn.Conv(c.n_mels, (1,), name="final_proj")(h * m) * m


# --- the flow ------------------------------------------------------------------------------------


class CosyFlow(nn.Module):
    cfg: CosyFlowConfig

    def setup(self):
        c = self.cfg
        self.input_embedding = nn.Embed(c.vocab_size, c.d_model)
        self.spk_embed_affine_layer = nn.Dense(c.n_mels)
        self.encoder = UpsampleConformerEncoder(c)
        self.encoder_proj = nn.Dense(c.n_mels)
        self.estimator = Estimator(c)

    def __call__(self, tokens, valid, speaker, x, t):
        """Initialises every parameter (shapes only)."""
        mu, valid, spks = self.condition(tokens, valid, speaker, streaming=False, finalize=True)
        return self.estimator(x, valid, mu, t, spks, mu, streaming=False)

    def velocity(self, x, valid, mu, t, spks, cond, *, streaming: bool):
        """The estimator's velocity (see `Estimator`)."""
        return self.estimator(x, valid, mu, t, spks, cond, streaming=streaming)

    def condition(self, tokens, valid, speaker, *, streaming: bool, finalize: bool):
        """tokens, valid: (b, U); speaker: (b, spk_embed_dim) x-vector -> mu (b, F, n_mels), frame valid (b, F),
        speaker condition (b, n_mels)."""
        norm = jnp.linalg.norm(speaker, axis=-1, keepdims=True)
        spks = self.spk_embed_affine_layer(speaker / jnp.maximum(norm, 1e-12))
        x = self.input_embedding(jnp.maximum(tokens, 0)) * valid[..., None]
        h, frame_valid = self.encoder(x, valid, streaming=streaming, finalize=finalize)
        return self.encoder_proj(h), frame_valid, spks


def init_params(cfg: CosyFlowConfig, seed: int = 0) -> dict:
    u, f = 2 * cfg.pre_lookahead, 2 * cfg.pre_lookahead * cfg.token_mel_ratio
    tokens = jnp.zeros((1, u), jnp.int32)
    return CosyFlow(cfg).init(jax.random.key(seed), tokens, tokens == 0, jnp.zeros((1, cfg.spk_embed_dim)),
                              jnp.zeros((1, f, cfg.n_mels)), jnp.zeros(1))["params"]


def time_grid(steps: int):
    """(steps + 1,) cosine schedule 1 - cos(π/2 · k / steps) from 0 to 1 (CosyVoice2's t_scheduler)."""
    return 1.0 - jnp.cos(jnp.linspace(0.0, 1.0, steps + 1) * 0.5 * jnp.pi)


@functools.partial(jax.jit, static_argnames=("cfg", "streaming", "finalize"))
def token2mel(params, cfg: CosyFlowConfig, tokens, lengths, speaker, prompt_mel, noise, *, streaming: bool,
              finalize: bool):
    """tokens: (b, U) ids, a shared voice prompt's tokens first; lengths: (b,) valid tokens per row;
    speaker: (b, spk_embed_dim); prompt_mel: (P, n_mels) mel of the prompt, conditioning frames < P
    (P may be 0); noise: (>= F, n_mels) the noise table, frame-indexed (CosyVoice2's rand_noise).
    -> mel (b, F, n_mels), F = token_mel_ratio · (U or U - pre_lookahead when not `finalize`); frames past
    a row's valid length are zero, the first P frames reproduce the prompt's region (callers drop them)."""
    model = CosyFlow(cfg)
    valid = jnp.arange(tokens.shape[1]) < lengths[:, None]
    mu, frame_valid, spks = model.apply({"params": params}, tokens, valid, speaker, streaming=streaming,
                                        finalize=finalize, method=CosyFlow.condition)
    b, frames = frame_valid.shape
    cond = jnp.zeros((b, frames, cfg.n_mels)).at[:, : prompt_mel.shape[0]].set(prompt_mel[:frames])
    # row 0..b-1 conditioned, b..2b-1 unconditioned: one estimator call per Euler step
    both = lambda y, none: jnp.concatenate([y, jnp.zeros_like(y) if none else y], axis=0)
    mu2, spks2, cond2, valid2 = both(mu, True), both(spks, True), both(cond, True), both(frame_valid, False)
    grid = time_grid(cfg.ode_steps)

    def euler(k, x):
        t = jnp.full((2 * b,), grid[k])
        v = model.apply({"params": params}, both(x, False), valid2, mu2, t, spks2, cond2, streaming=streaming,
                        method=CosyFlow.velocity)
        v = (1.0 + cfg.cfg_rate) * v[:b] - cfg.cfg_rate * v[b:]
        return x + (grid[k + 1] - grid[k]) * v

    x = jnp.broadcast_to(noise[:frames], (b, frames, cfg.n_mels))
    return jax.lax.fori_loop(0, cfg.ode_steps, euler, x) * frame_valid[..., None]
