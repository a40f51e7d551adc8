"""Decoding runs every layer stack unrolled over per-layer params (`layers_0`, ...): a scan over
stacked params would slice (copy) each layer's weights on every decoding step. Training keeps the
stacks scanned. Every decoding entry point passes its config and params through `for_decoding`,
a no-op on params already in the per-layer layout: callers that decode many times (streaming)
unstack once and pass the result.
"""

from __future__ import annotations

import dataclasses

from mdm_jax.config.model import ModelConfig
from mdm_jax.model.transformer import unstack_layers


def for_decoding(cfg: ModelConfig, params):
    """-> (cfg with unrolled layer stacks, params in the per-layer layout)."""
    return dataclasses.replace(cfg, unroll_layers=True), unstack_layers(params)
