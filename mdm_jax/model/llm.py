"""The text LLM (LLaMA 3.x / Qwen2 / Qwen3): embedding, decoder stack, final norm, tied or separate head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.config.model import LLMConfig
from mdm_jax.model.layers import Embed, RMSNorm, param
from mdm_jax.model.rope import inverse_frequencies
from mdm_jax.model.sharding import local
from mdm_jax.model.transformer import DecoderStack, Execution


def layer_kwargs(num_heads, num_kv_heads, head_dim, ffn_dim, inv_freq, eps, qkv_bias, dtype, qk_norm=False,
                 attention="einsum") -> dict:
    return dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, ffn_dim=ffn_dim,
                inv_freq=tuple(float(f) for f in inv_freq), eps=eps, qkv_bias=qkv_bias, dtype=dtype,
                qk_norm=qk_norm, attention=attention)


class LLM(nn.Module):
    cfg: LLMConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        c = self.cfg
        inv_freq = inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling, c.rope_factor,
                                       c.rope_low_freq_factor, c.rope_high_freq_factor,
                                       c.rope_original_max_positions)
        self.embed = Embed(c.vocab_size, c.d_model, "vocab", self.dtype)
        self.layers = DecoderStack(c.num_layers, layer_kwargs(
            c.num_heads, c.num_kv_heads, c.head_dim, c.ffn_dim, inv_freq, c.rms_norm_eps, c.qkv_bias,
            self.dtype, c.qk_norm, self.execution.attention), self.execution)
        self.norm = RMSNorm(c.rms_norm_eps, self.dtype)
        if not c.tie_embeddings:
            self.lm_head = param(self, "lm_head", (c.d_model, local(c.vocab_size, "vocab_size")),
                                 ("embed", "vocab"), jnp.float32)

    def embed_tokens(self, ids):
        """ids: (b, t) -> (b, t, d)."""
        return self.embed(ids)

    def __call__(self, x, positions, mask, caches=None, cache_index=None):
        """x: (b, t, d) input embeddings; mask: (b, t, s) -> (logits (b, t, V) f32, hidden (b, t, d), caches).

        `hidden` is the final-normed last layer (what VocalNet feeds the speech decoder). Under
        tensor parallelism the logits are this device's vocabulary slice.
        """
        h, caches = self.layers(x, positions, mask, caches, cache_index)
        h = self.norm(h)
        logits = self.embed.attend(h) if self.cfg.tie_embeddings else h @ self.lm_head.astype(self.dtype)
        return logits.astype(jnp.float32), h, caches

    def forward_ids(self, ids, positions, mask, caches=None, cache_index=None):
        """Text-only forward from token ids (b, t); same outputs as `__call__`."""
        return self(self.embed_tokens(ids), positions, mask, caches, cache_index)


def abstract_llm_params(cfg: LLMConfig):
    """ShapeDtypeStructs of `LLM(cfg)` params, without allocating them."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, 1, 1), bool)
    tree = jax.eval_shape(lambda *a: LLM(cfg).init(*a, method=LLM.forward_ids)["params"],
                          jax.random.key(0), ids, ids, mask)
    return nn.unbox(tree)
