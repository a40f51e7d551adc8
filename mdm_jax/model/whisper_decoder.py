"""Whisper text decoder: token + learned position embeddings, pre-LN layers (causal self-attention,
cross-attention to the encoder, GELU MLP), final LayerNorm, output head tied to the token embedding.

Decoding keeps a fixed-size cache as data: per layer the self-attention keys/values written at
`index`, and the cross-attention keys/values computed once from the encoder output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.config.model import WhisperDecoderConfig
from mdm_jax.model.attention import dot_product_attention
from mdm_jax.model.layers import param
from mdm_jax.model.whisper import WhisperMLP, layer_norm

_zeros = nn.initializers.zeros


class DecoderAttention(nn.Module):
    """Whisper attention: q, v and output projections with bias, k without."""

    d_model: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        d, h, hd = self.d_model, self.num_heads, self.d_model // self.num_heads
        axes = ("embed", "heads", "head_dim")
        self.wq, self.wk, self.wv = (param(self, f"w{n}", (d, h, hd), axes, self.dtype) for n in "qkv")
        self.bq, self.bv = (param(self, f"b{n}", (h, hd), axes[1:], self.dtype, _zeros) for n in "qv")
        self.wo = param(self, "wo", (h, hd, d), ("heads", "head_dim", "embed"), self.dtype)
        self.bo = param(self, "bo", (d,), ("embed",), self.dtype, _zeros)

    def keys_values(self, x):
        """x: (b, s, d) -> {'k', 'v'}: (b, s, h, hd)."""
        return {"k": jnp.einsum("bsD,Dhd->bshd", x, self.wk),
                "v": jnp.einsum("bsD,Dhd->bshd", x, self.wv) + self.bv}

    def __call__(self, x, kv, mask=None):
        """x: (b, t, d) queries; kv: {'k', 'v'} (b, s, h, hd); mask: (b, t, s) or None -> (b, t, d)."""
        q = jnp.einsum("btD,Dhd->bthd", x, self.wq) + self.bq
        out = dot_product_attention(q, kv["k"], kv["v"], mask)
        return jnp.einsum("bthd,hdD->btD", out, self.wo) + self.bo


def init_cache(cfg: WhisperDecoderConfig, batch: int, length: int, source_length: int, dtype=jnp.float32) -> list:
    """Per layer {'self': {'k', 'v'} (batch, length, h, hd), 'cross': {'k', 'v'} (batch, source_length, h, hd)}."""
    h, hd = cfg.num_heads, cfg.d_model // cfg.num_heads

    def kv(n):
        return {"k": jnp.zeros((batch, n, h, hd), dtype), "v": jnp.zeros((batch, n, h, hd), dtype)}

    return [{"self": kv(length), "cross": kv(source_length)} for _ in range(cfg.num_layers)]


class DecoderLayer(nn.Module):
    cfg: WhisperDecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, encoded, cache, index, mask):
        """x: (b, t, d); encoded: (b, s, d), or None to use cache['cross'] -> (b, t, d), cache."""
        c = self.cfg
        attn = DecoderAttention(c.d_model, c.num_heads, self.dtype, name="attn")
        cross = DecoderAttention(c.d_model, c.num_heads, self.dtype, name="cross")
        h = layer_norm(c.layer_norm_eps, self.dtype, "attn_norm")(x)
        kv = attn.keys_values(h)
        if cache is not None:
            kv = jax.tree.map(lambda old, new: lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), index, 1),
                              cache["self"], kv)
        x = x + attn(h, kv, mask)
        h = layer_norm(c.layer_norm_eps, self.dtype, "cross_norm")(x)
        cross_kv = cross.keys_values(encoded) if encoded is not None else cache["cross"]
        x = x + cross(h, cross_kv)
        x = x + WhisperMLP(c.ffn_dim, self.dtype, name="mlp")(layer_norm(c.layer_norm_eps, self.dtype, "mlp_norm")(x))
        return x, (None if cache is None else {"self": kv, "cross": cross_kv})


class WhisperDecoder(nn.Module):
    cfg: WhisperDecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, encoded=None, cache=None, index=0):
        """Logits for `tokens` at positions index .. index + t - 1.

        Args:
          tokens: (b, t) int32.
          encoded: (b, s, d) encoder output; required without a cache, and on the first call with
            one (it fills the cross-attention keys/values; later calls pass None).
          cache: from `init_cache`, or None for a plain causal pass over `tokens` (index 0).
          index: scalar position of tokens[:, 0] (may be traced).

        Returns:
          logits (b, t, vocab) float32, and the updated cache (None without one).
        """
        c = self.cfg
        b, t = tokens.shape
        embed = param(self, "embed_tokens", (c.vocab_size, c.d_model), ("vocab", "embed"), self.dtype)
        positions = param(self, "embed_positions", (c.max_target_positions, c.d_model), ("positions", "embed"),
                          self.dtype)
        x = jnp.take(embed, tokens, axis=0) + lax.dynamic_slice_in_dim(positions, index, t)
        keys = t if cache is None else cache[0]["self"]["k"].shape[1]
        mask = jnp.arange(keys)[None, :] <= index + jnp.arange(t)[:, None]  # causal over absolute positions
        mask = jnp.broadcast_to(mask, (b, t, keys))
        new_cache = []
        for i in range(c.num_layers):
            x, layer_cache = DecoderLayer(c, self.dtype, name=f"layers_{i}")(
                x, encoded, None if cache is None else cache[i], index, mask)
            new_cache.append(layer_cache)
        x = layer_norm(c.layer_norm_eps, self.dtype, "final_norm")(x)
        logits = jnp.einsum("btd,vd->btv", x, embed, preferred_element_type=jnp.float32)
        return logits, (None if cache is None else new_cache)


def greedy_decode(params, cfg: WhisperDecoderConfig, encoded, prompt, *, eot: int, max_new_tokens: int,
                  suppress=(), suppress_begin=()):
    """Greedy decoding as Whisper (and CTranslate2, beam_size=1) does it, for a batch.

    Args:
      params: `WhisperDecoder` params.
      encoded: (b, s, d) encoder output.
      prompt: (p,) int32 start tokens, the same for every row (e.g. <|startoftranscript|><|notimestamps|>).
      eot: end-of-text id; a row stops at it and is padded with it.
      max_new_tokens: length of the output (static).
      suppress: ids never generated; suppress_begin: ids not generated first (blank, end of text).

    Returns:
      (b, max_new_tokens) int32 generated ids, `eot` from the end of each row on.
    """
    model = WhisperDecoder(cfg)
    b, p = encoded.shape[0], len(prompt)
    if p + max_new_tokens > cfg.max_target_positions:
        raise ValueError(f"{p} prompt + {max_new_tokens} new tokens > {cfg.max_target_positions} decoder positions")
    cache = init_cache(cfg, b, p + max_new_tokens, encoded.shape[1], encoded.dtype)
    logits, cache = model.apply({"params": params}, jnp.broadcast_to(jnp.asarray(prompt, jnp.int32), (b, p)),
                                encoded, cache, 0)
    never = jnp.zeros(cfg.vocab_size, bool).at[jnp.asarray(suppress, jnp.int32)].set(True)
    not_first = never.at[jnp.asarray(suppress_begin, jnp.int32)].set(True)

    def step(carry):
        i, out, cache, logits, done = carry  # logits: (b, vocab) for the next token
        banned = jnp.where(i == 0, not_first, never)
        token = jnp.argmax(jnp.where(banned, -jnp.inf, logits), axis=-1).astype(jnp.int32)
        token = jnp.where(done, eot, token)
        done = done | (token == eot)
        out = out.at[:, i].set(token)
        logits, cache = model.apply({"params": params}, token[:, None], None, cache, p + i)
        return i + 1, out, cache, logits[:, -1], done

    def running(carry):
        i, _, _, _, done = carry
        return (i < max_new_tokens) & ~done.all()

    out = jnp.full((b, max_new_tokens), eot, jnp.int32)
    _, out, *_ = lax.while_loop(running, step, (0, out, cache, logits[:, -1], jnp.zeros(b, bool)))
    return out
