"""CosyVoice2's HiFT vocoder (PyTorch `HiFTGenerator` state dict, e.g. CosyVoice2-0.5B's hift.pt) -> our params.

Weight-normed layers may come in either torch key style, `X.parametrizations.weight.original0/1` (new) or
`X.weight_g` / `X.weight_v` (old), or all as plain `X.weight` (weight norm removed); the gain and direction are folded
into one kernel, w = g · v / ||v|| (norm over all but dim 0, as weight_norm(dim=0)). A `generator.` prefix on every
key (training checkpoints) is dropped. Every key is checked: missing, unexpected or mis-shaped -> ConversionError.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import numpy as np

from mdm_jax.convert.rules import ConversionError, Rule, conv1d, import_tensors, transpose
from mdm_jax.vocoder.hift import HiFTConfig, init_params

# weight-norm key style: gain suffix, direction suffix
_STYLES = ((".parametrizations.weight.original0", ".parametrizations.weight.original1"), (".weight_g", ".weight_v"))


def _fold_weight_norm(state: Mapping[str, np.ndarray]) -> tuple[dict, str]:
    """-> (state with each (gain, direction) pair replaced by the folded weight under the direction's key,
    the key suffix of weight-normed weights now: the style's direction suffix, or ".weight" if no style is used)."""
    style = next((s for s in _STYLES if any(k.endswith(s) for k in state)), None)
    if style is None:
        return dict(state), ".weight"
    g_suffix, v_suffix = style
    out = {k: v for k, v in state.items() if not k.endswith(style)}
    for base in sorted({k.removesuffix(g_suffix).removesuffix(v_suffix) for k in state if k.endswith(style)}):
        g_key, v_key = base + g_suffix, base + v_suffix
        for have, need in ((g_key, v_key), (v_key, g_key)):
            if need not in state:
                raise ConversionError(f"missing key {need!r}: {have!r} {np.shape(state[have])} has no weight-norm "
                                      f"partner")
        g, v = np.asarray(state[g_key], np.float32), np.asarray(state[v_key], np.float32)
        if g.shape != (v.shape[0],) + (1,) * (v.ndim - 1):
            raise ConversionError(f"key {g_key!r} has shape {g.shape}, expected {(v.shape[0],) + (1,) * (v.ndim - 1)} "
                                  f"for {v_key!r} {v.shape}")
        norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=tuple(range(1, v.ndim)), keepdims=True))
        out[v_key] = (g * (v / norm)).astype(np.float32)
    return out, v_suffix


def _resblock_rules(src: str, path: tuple, n_dilations: int, w: str) -> list[Rule]:
    rules = []
    for j in range(n_dilations):
        for conv in ("convs1", "convs2"):
            rules += [Rule(f"{src}.{conv}.{j}{w}", (*path, f"{conv}_{j}", "kernel"), **conv1d()),
                      Rule(f"{src}.{conv}.{j}.bias", (*path, f"{conv}_{j}", "bias"))]
        rules += [Rule(f"{src}.activations{a}.{j}.alpha", (*path, f"activations{a}_{j}", "alpha")) for a in (1, 2)]
    return rules


def hift_rules(cfg: HiFTConfig, w: str) -> list[Rule]:
    """torch keys -> our param paths; `w` is the key suffix of weight-normed weights (after folding)."""
    conv = lambda src, path, suffix: [Rule(f"{src}{suffix}", (*path, "kernel"), **conv1d()),
                                      Rule(f"{src}.bias", (*path, "bias"))]
    rules = [r for i in range(5) for r in conv(f"f0_predictor.condnet.{2 * i}", ("f0_predictor", f"condnet_{i}"), w)]
    rules += [Rule("f0_predictor.classifier.weight", ("f0_predictor", "classifier", "kernel"), **transpose()),
              Rule("f0_predictor.classifier.bias", ("f0_predictor", "classifier", "bias")),
              Rule("m_source.l_linear.weight", ("m_source", "l_linear", "kernel"), **transpose()),
              Rule("m_source.l_linear.bias", ("m_source", "l_linear", "bias")),
              *conv("conv_pre", ("conv_pre",), w), *conv("conv_post", ("conv_post",), w)]
    for i in range(len(cfg.upsample_rates)):
        rules += conv(f"ups.{i}", (f"ups_{i}",), w) + conv(f"source_downs.{i}", (f"source_downs_{i}",), ".weight")
        rules += _resblock_rules(f"source_resblocks.{i}", (f"source_resblocks_{i}",),
                                 len(cfg.source_resblock_dilation_sizes[i]), w)
    per_stage = len(cfg.resblock_kernel_sizes)
    for i in range(len(cfg.upsample_rates) * per_stage):
        rules += _resblock_rules(f"resblocks.{i}", (f"resblocks_{i}",), len(cfg.resblock_dilation_sizes[i % per_stage]),
                                 w)
    return rules


def hift_from_torch(state: Mapping[str, np.ndarray], cfg: HiFTConfig) -> dict:
    """A HiFTGenerator state dict (with its f0_predictor; numpy arrays or CPU tensors) -> `mdm_jax.vocoder.hift`
    params (numpy)."""
    if state and all(k.startswith("generator.") for k in state):
        state = {k.removeprefix("generator."): v for k, v in state.items()}
    state, w = _fold_weight_norm(state)
    abstract = jax.eval_shape(functools.partial(init_params, cfg))
    return import_tensors(state, hift_rules(cfg, w), abstract)
