"""VocalNet: Whisper encoder -> adaptor -> LLM -> speech decoder, as one Flax module.

Entry points (call through `model.apply(params, ..., method=...)`):
  encode_speech(mel)                      log-mel -> LLM-width speech embeddings at 10 Hz
  llm_forward(ids, speech_embeds, ...)    LLM over a prompt whose placeholder ids are replaced
                                          by the speech embeddings, in order
  speech_decode(text_hidden, tokens, ...) speech decoder over text states + speech ids
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from data_pipelines.placeholders import SPEECH_PLACEHOLDER
from mdm_jax.config.model import ModelConfig
from mdm_jax.config.overrides import ConfigError
from mdm_jax.model.adaptor import Adaptor
from mdm_jax.model.init import random_init
from mdm_jax.model.llm import LLM
from mdm_jax.model.speech_decoder import SpeechDecoder, causal_mask
from mdm_jax.model.whisper import WhisperEncoder


class VocalNet(nn.Module):
    cfg: ModelConfig

    def setup(self):
        c = self.cfg
        if c.speech_decoder.text_in_prefix and c.speech_decoder.d_model != c.llm.d_model:
            raise ConfigError(f"speech_decoder.d_model={c.speech_decoder.d_model} must equal "
                              f"llm.d_model={c.llm.d_model}: the VocalNet talker reads the LLM states as they are")
        dtype = jnp.dtype(c.dtype)
        self.encoder = WhisperEncoder(c.encoder, dtype, c.execution)
        self.adaptor = Adaptor(c.adaptor, c.llm.d_model, dtype)
        self.llm = LLM(c.llm, dtype, c.execution)
        self.speech_decoder = SpeechDecoder(c.speech_decoder, dtype, c.execution)

    def encode_speech(self, mel, frames=None):
        """mel: (b, n_mels, F) -> (b, ceil(F / 2) // k, d_llm); frames: (b,) valid mel frames of zero-padded
        rows (`WhisperEncoder`), the first num_speech_frames(frames) of a row then equal its unpadded run's."""
        return self.adaptor(self.encoder(mel, frames))

    def encode(self, mel):
        """mel: (b, n_mels, frames) -> the frozen Whisper encoder's frames (b, frames // 2, d_enc)."""
        return self.encoder(mel)

    def adapt(self, frames):
        """Encoder frames (b, n, d_enc) -> speech embeddings (b, n // k, d_llm): `encode_speech` after `encode`."""
        return self.adaptor(frames)

    def embed_prompt(self, ids, speech_embeds=None):
        """ids: (b, t) with SPEECH_PLACEHOLDER where speech goes; speech_embeds: (b, n, d) -> (b, t, d)."""
        is_speech = ids == SPEECH_PLACEHOLDER
        x = self.llm.embed_tokens(jnp.where(is_speech, 0, ids))
        if speech_embeds is None:
            return x
        slot = jnp.clip(jnp.cumsum(is_speech, axis=1) - 1, 0, speech_embeds.shape[1] - 1)
        spliced = jnp.take_along_axis(speech_embeds.astype(x.dtype), slot[..., None], axis=1)
        return jnp.where(is_speech[..., None], spliced, x)

    def llm_forward(self, ids, speech_embeds=None, positions=None, mask=None, caches=None, cache_index=None):
        """-> (logits (b, t, V), hidden (b, t, d), caches); defaults: positions 0..t-1, causal mask."""
        x = self.embed_prompt(ids, speech_embeds)
        b, t = ids.shape
        positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
        mask = causal_mask(b, t) if mask is None else mask
        return self.llm(x, positions, mask, caches, cache_index)

    def speech_decode(self, text_hidden, tokens, mask=None, positions=None):
        return self.speech_decoder(text_hidden, tokens, mask, positions)

    def __call__(self, mel, ids, speech_tokens):
        """Whole model, teacher-forced (used to create every parameter)."""
        _, hidden, _ = self.llm_forward(ids, self.encode_speech(mel))
        return self.speech_decode(hidden, speech_tokens)


def dummy_inputs(cfg: ModelConfig, batch: int = 1):
    frames = 4 * cfg.adaptor.downsample  # two adaptor frames
    mel = jnp.zeros((batch, cfg.encoder.num_mel_bins, frames), jnp.float32)
    ids = jnp.array([[1, SPEECH_PLACEHOLDER, SPEECH_PLACEHOLDER, 2]] * batch, jnp.int32)
    return mel, ids, jnp.full((batch, 3), cfg.speech_decoder.sos_id, jnp.int32)


def init_params(cfg: ModelConfig, key, boxed: bool = False):
    """Random params pytree (float32). `boxed=True` keeps the logical-axis boxes (for sharding)."""
    params = VocalNet(cfg).init(key, *dummy_inputs(cfg))["params"]
    return params if boxed else nn.unbox(params)


def random_params(cfg: ModelConfig, seed: int = 0, boxed: bool = False):
    """`init_params`' tree and distributions drawn by numpy: seconds, not Flax's eager init (`mdm_jax.model.init`)."""
    return random_init(VocalNet(cfg).init, *dummy_inputs(cfg), seed=seed, boxed=boxed)


def abstract_params(cfg: ModelConfig, boxed: bool = False):
    """Shapes and dtypes of the params, without allocating them."""
    return jax.eval_shape(lambda k: init_params(cfg, k, boxed), jax.random.key(0))


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter count per component, from shapes only."""
    tree = abstract_params(cfg)
    counts = {name: sum(x.size for x in jax.tree.leaves(sub)) for name, sub in tree.items()}
    counts["total"] = sum(counts.values())
    return counts
