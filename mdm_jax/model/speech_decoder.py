"""The speech decoder ("Talker"): VocalNet's over `[BOS][pre-NN(text states)][speech ids]`, or
VocalNet-MDM's anchor Talker over `[BOS][speech ids]` with the text states added as anchors at
the first Q positions of every block (`SpeechDecoderConfig.talker`).

The pre-NN (causal LLaMA layers) refines the LLM's text states; the decoder layers run over the
concatenation under whatever mask the objective needs (AR causal, MDM block-causal [x_t ; x_0],
streaming or not); the head reads the normed states; MTP modules (VocalNet's baseline) each add
one LLaMA layer + norm + head over the previous module's states.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mdm_jax.config.model import SpeechDecoderConfig
from mdm_jax.diffusion.attention_masks import Mask
from mdm_jax.diffusion.packing import Packed, segment_lengths
from mdm_jax.model.layers import Embed, RMSNorm, param
from mdm_jax.model.llm import layer_kwargs
from mdm_jax.model.rope import inverse_frequencies
from mdm_jax.model.transformer import DecoderLayer, DecoderStack, Execution


def causal_mask(batch: int, length: int) -> Mask:
    return Mask.causal(batch, length)


class Head(nn.Module):
    """RMSNorm + Linear (with bias, as VocalNet's output_proj) -> float32 logits."""

    cfg: SpeechDecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        c = self.cfg
        h = RMSNorm(c.rms_norm_eps, self.dtype, name="norm")(h)
        w = param(self, "w", (c.d_model, c.output_vocab), ("embed", "speech_vocab"), self.dtype)
        b = param(self, "b", (c.output_vocab,), ("speech_vocab",), self.dtype, nn.initializers.zeros)
        return (h @ w + b).astype(jnp.float32)


class Anchors(nn.Module):
    """Thinker states -> the anchor Talker's additive inputs: position r < Q of block c gets
    Linear(h[cQ + r]), or a learned end-of-text vector where that text state is not (yet) valid;
    positions r >= Q get nothing. text_hidden (b, T, d_text), text_valid (b, T) -> (b, length, d)."""

    cfg: SpeechDecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, text_hidden, text_valid, length: int, packed: tuple | None = None):
        """packed rows: (text segments (b, T), the positions' segments (b, length), their index in it (b, length))."""
        c = self.cfg
        t = text_hidden.shape[1]
        w = param(self, "w", (text_hidden.shape[-1], c.d_model), ("adaptor", "embed"), self.dtype)
        bias = param(self, "b", (c.d_model,), ("embed",), self.dtype, nn.initializers.zeros)
        end = param(self, "end_of_text", (c.d_model,), ("embed",), self.dtype)
        if packed is not None:
            return self.packed(text_hidden, packed, w, bias, end)
        block, r = np.divmod(np.arange(length), c.block_size)
        j = block * c.text_per_block + r  # (length,) the text state each position would carry
        anchor = r < c.text_per_block
        safe = np.minimum(j, t - 1)
        valid = jnp.asarray(anchor & (j < t)) & jnp.take(text_valid, safe, axis=1)  # (b, length)
        text = jnp.take(text_hidden.astype(self.dtype), safe, axis=1) @ w + bias
        return jnp.where(valid[..., None], text, jnp.where(anchor[:, None], end, 0.0)).astype(self.dtype)

    def packed(self, text_hidden, packed, w, bias, end):
        """Each position's anchor from its own segment's text: the segment's start + block * Q + r."""
        c = self.cfg
        text_segments, segments, index = packed
        lengths = segment_lengths(text_segments, text_hidden.shape[1]).at[:, 0].set(0)  # (b, T + 1)
        starts = jnp.cumsum(lengths, axis=1) - lengths  # segments lie in order 1, 2, ...
        block, r = jnp.divmod(index, c.block_size)
        j = block * c.text_per_block + r
        anchor = r < c.text_per_block
        valid = anchor & (j < jnp.take_along_axis(lengths, segments, axis=1)) & (segments > 0)
        source = jnp.clip(jnp.take_along_axis(starts, segments, axis=1) + j, 0, text_hidden.shape[1] - 1)
        text = jnp.take_along_axis(text_hidden.astype(self.dtype), source[..., None], axis=1) @ w + bias
        return jnp.where(valid[..., None], text, jnp.where(anchor[..., None], end, 0.0)).astype(self.dtype)


class MTPModule(nn.Module):
    """One LLaMA layer over the previous states, then its own head (predicts k tokens further)."""

    cfg: SpeechDecoderConfig
    layer: dict
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, positions, mask, cache=None, cache_index=None):
        h, cache = DecoderLayer(**self.layer, name="layer")(h, positions, mask, cache, cache_index)
        return h, Head(self.cfg, self.dtype, name="head")(h), cache


class SpeechDecoder(nn.Module):
    cfg: SpeechDecoderConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        c = self.cfg
        layer = layer_kwargs(c.num_heads, c.num_kv_heads, c.head_dim, c.ffn_dim,
                             inverse_frequencies(c.head_dim, c.rope_theta), c.rms_norm_eps, False, self.dtype,
                             attention=self.execution.attention)
        self.embed = Embed(c.input_vocab, c.d_model, "speech_vocab", self.dtype)
        self.prenn = DecoderStack(c.prenn_layers, layer, self.execution)
        self.decoder = DecoderStack(c.num_layers, layer, self.execution)
        self.head = Head(c, self.dtype)
        self.mtp = [MTPModule(c, layer, self.dtype) for _ in range(c.mtp_modules)]
        if not c.text_in_prefix:
            self.anchor = Anchors(c, self.dtype)

    def encode_text(self, text_hidden, packed: Packed | None = None):
        """Pre-NN, causal over the text states (packed rows: within each segment): (b, t, d) -> (b, t, d)."""
        b, t, _ = text_hidden.shape
        positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if packed is None else packed.text_index
        mask = Mask.causal(b, t, None if packed is None else packed.text_segments)
        return self.prenn(text_hidden.astype(self.dtype), positions, mask)[0]

    def prefix(self, text_hidden, packed: Packed | None = None):
        """`[BOS][pre-NN(text)]` (vocalnet): (b, t, d) -> (b, 1 + t, d); `[BOS]` (anchor): -> (b, 1, d)."""
        bos = self.embed(jnp.full((text_hidden.shape[0], 1), self.cfg.bos_id))
        if not self.cfg.text_in_prefix:
            return bos
        return jnp.concatenate([bos, self.encode_text(text_hidden, packed)], axis=1)

    def anchors(self, text_hidden, text_valid, length: int, packed: tuple | None = None):
        """The anchor Talker's text inputs at speech positions 0..length-1: (b, length, d) (see `Anchors`)."""
        return self.anchor(text_hidden, text_valid, length, packed)

    def embed_tokens(self, ids):
        return self.embed(ids)

    def backbone(self, x, positions, mask, caches=None, cache_index=None):
        """Decoder layers: x (b, n, d) -> (states (b, n, d) before the final norm, caches)."""
        return self.decoder(x, positions, mask, caches, cache_index)

    def logits(self, h):
        return self.head(h)

    def mtp_step(self, k: int, h, positions, mask, cache=None, cache_index=None):
        """MTP module k over states h -> (states, logits, cache)."""
        return self.mtp[k](h, positions, mask, cache, cache_index)

    def __call__(self, text_hidden, tokens, mask=None, positions=None, text_valid=None, packed: Packed | None = None,
                 anchor_slots: tuple | None = None):
        """Teacher-forced pass over `[BOS][pre-NN(text)][tokens]` (anchor: `[BOS][tokens + anchors]`).

        text_hidden: (b, t, d) LLM states; tokens: (b, l) speech input ids (e.g. `[SOS] units` for
        AR, `[x_t ; x_0]` for MDM); mask: a `Mask` over n = 1 + t + l (anchor: 1 + l; default
        causal); positions: (b, n) (default 0..n-1); text_valid: (b, t) (default all; anchor talker:
        anchor i is added to token i, the AR alignment where input i predicts unit i); packed rows:
        `packed` (the pre-NN within segments) and `anchor_slots` = (segments, index) of the tokens. Returns
        (speech logits (b, l, V), mtp logits [(b, l, V)] * modules, states (b, n, d)); the MTP
        modules reuse `mask` (objectives that need shifted masks call `mtp_step`).
        """
        speech = self.embed(tokens)
        if not self.cfg.text_in_prefix:
            valid = jnp.ones(text_hidden.shape[:2], bool) if text_valid is None else text_valid
            slots = None if packed is None else (packed.text_segments, *anchor_slots)
            speech = speech + self.anchors(text_hidden, valid, tokens.shape[1], slots)
        x = jnp.concatenate([self.prefix(text_hidden, packed), speech], axis=1)
        b, n, _ = x.shape
        mask = causal_mask(b, n) if mask is None else mask
        positions = jnp.broadcast_to(jnp.arange(n), (b, n)) if positions is None else positions
        h, _ = self.backbone(x, positions, mask)
        speech = n - tokens.shape[1]  # first row of the speech ids
        mtp_logits, hk = [], h
        for k in range(self.cfg.mtp_modules):
            hk, logits_k, _ = self.mtp_step(k, hk, positions, mask)
            mtp_logits.append(logits_k[:, speech:])
        return self.logits(h)[:, speech:], mtp_logits, h
