"""Masked diffusion over speech blocks: schedules, masking, attention masks, losses (model-free)."""

from mdm_jax.diffusion.attention_masks import autoregressive_mask, block_diffusion_mask, draw_streaming
from mdm_jax.diffusion.losses import cross_entropy, mdm_loss, mtp_loss
from mdm_jax.diffusion.masking import MASKING, Corruption, corrupt
from mdm_jax.diffusion.schedules import elbo_weight, mask_prob, sample_t, step_schedule

__all__ = [
    "MASKING",
    "Corruption",
    "autoregressive_mask",
    "block_diffusion_mask",
    "corrupt",
    "cross_entropy",
    "draw_streaming",
    "elbo_weight",
    "mask_prob",
    "mdm_loss",
    "mtp_loss",
    "sample_t",
    "step_schedule",
]
