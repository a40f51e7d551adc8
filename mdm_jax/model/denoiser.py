"""The masked-diffusion forward of the speech decoder over the vectorised BD3-LM layout
`[BOS][text][SOS][x_t][x_0]` (anchor Talker: `[BOS][SOS][x_t][x_0]`, both halves with the text
anchors): every block of a sequence denoised in one pass, each x_t block reading the clean x_0
blocks before it. The MDM objective, self-distillation and the training benchmark
all call it.

    logits = denoiser(cfg, batch)(params["speech_decoder"], x_t)     # x_t (b, L) -> (b, L, V)
"""

from __future__ import annotations

import jax.numpy as jnp

from mdm_jax.config.model import ModelConfig
from mdm_jax.diffusion.attention_masks import block_diffusion_mask
from mdm_jax.diffusion.packing import packed_of
from mdm_jax.model.speech_decoder import SpeechDecoder


def denoiser(cfg: ModelConfig, batch):
    """-> f(speech decoder params, x_t (b, L)) -> logits (b, L, V) at the x_t positions, with x_0 =
    batch units (no MTP modules), in `cfg.dtype`.

    batch: text_hidden (b, T, d), text_valid (b, T), streaming (b,), units, speech_valid (b, L); packed
    rows (`packing.PACKED_KEYS`): one SOS slot per possible example, streaming (b, L / block).
    """
    sd, units = cfg.speech_decoder, batch["units"]
    b, length = units.shape
    packed = packed_of(batch)
    text_slots = sd.prefix_text(batch["text_valid"]).shape[1]
    mask, positions = block_diffusion_mask(sd.prefix_text(batch["text_valid"]), batch["speech_valid"],
                                           batch["streaming"], block_size=sd.block_size,
                                           text_per_block=sd.text_per_block, speech_offset=sd.speech_position_offset,
                                           packed=None if packed is None else packed.prefix(text_slots))
    sos = jnp.full((b, 1 if packed is None else length // sd.block_size), sd.sos_id, units.dtype)

    def run(module: SpeechDecoder, x_t):
        speech = module.embed_tokens(jnp.concatenate([sos, x_t, units], axis=1))
        if not sd.text_in_prefix:  # x_t and x_0 carry the same anchors, SOS none
            slots = None if packed is None else (packed.text_segments, packed.speech_segments, packed.speech_index)
            anchors = module.anchors(batch["text_hidden"], batch["text_valid"], length, slots)
            speech = speech + jnp.concatenate([jnp.zeros_like(anchors[:, : sos.shape[1]]), anchors, anchors], axis=1)
        prefix = module.prefix(batch["text_hidden"], packed)
        h, _ = module.backbone(jnp.concatenate([prefix, speech], axis=1), positions, mask)
        return module.logits(h[:, -2 * length : -length])

    decoder = SpeechDecoder(sd, jnp.dtype(cfg.dtype), cfg.execution)
    return lambda params, x_t: decoder.apply({"params": params}, x_t, method=run)
