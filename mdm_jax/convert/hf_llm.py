"""LLaMA 3.x / Qwen2 / Qwen3 (`transformers` LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM) <-> our
`LLM` params."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mdm_jax.config.model import LLMConfig
from mdm_jax.convert.rules import (
    ConversionError,
    Rule,
    export_tensors,
    import_tensors,
    linear,
    linear_in,
    reshape,
    transpose,
)
from mdm_jax.model.llm import abstract_llm_params

# LLMConfig.family = HF model_type -> HF architecture
FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def llm_config_from_hf(hf: Mapping) -> LLMConfig:
    """Our LLMConfig from a Hugging Face `config.json` dict (LLaMA, Qwen2 or Qwen3)."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ConversionError(f"model_type {family!r} is not supported ({', '.join(FAMILIES)})")
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim", 128 if family == "qwen3" else d // heads)  # absent: transformers' default
    if family != "qwen3" and head_dim != d // heads:  # a decoupled head_dim is parity-tested for Qwen3 only
        raise ConversionError(f"head_dim={head_dim} != hidden_size/num_attention_heads={d // heads}")
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ConversionError(f"rope scaling {rope_type!r} is not supported (default, llama3)")
    theta = hf.get("rope_theta", scaling.get("rope_theta", 10_000.0))
    kw = {}
    if rope_type == "llama3":
        kw = dict(rope_scaling="llama3", rope_factor=scaling["factor"],
                  rope_low_freq_factor=scaling["low_freq_factor"],
                  rope_high_freq_factor=scaling["high_freq_factor"],
                  rope_original_max_positions=scaling["original_max_position_embeddings"])
    return LLMConfig(
        family=family, vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads),
        head_dim_override=0 if head_dim == d // heads else head_dim, ffn_dim=hf["intermediate_size"],
        rope_theta=float(theta), rms_norm_eps=hf["rms_norm_eps"],
        qkv_bias=family == "qwen2" or bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **kw)


def llm_config_to_hf(cfg: LLMConfig) -> dict:
    """A Hugging Face `config.json` dict for our LLMConfig (the inverse of `llm_config_from_hf`)."""
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor,
                "low_freq_factor": cfg.rope_low_freq_factor, "high_freq_factor": cfg.rope_high_freq_factor,
                "original_max_position_embeddings": cfg.rope_original_max_positions}
    arch = FAMILIES[cfg.family]
    return {"architectures": [arch], "model_type": cfg.family, "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "intermediate_size": cfg.ffn_dim, "head_dim": cfg.head_dim,
            "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
            "attention_bias": cfg.qkv_bias and cfg.family != "qwen2", "hidden_act": "silu",
            "max_position_embeddings": max(131_072, 2 * cfg.rope_original_max_positions),
            "rope_theta": cfg.rope_theta, "rope_scaling": None if cfg.rope_scaling == "none" else rope,
            "rope_parameters": rope, "torch_dtype": "float32"}


def decoder_layer_rules(src: str, path: tuple, heads: int, kv_heads: int, head_dim: int,
                        qkv_bias: bool, qk_norm: bool = False) -> list[Rule]:
    """One transformers LLaMA/Qwen decoder layer at `src` (e.g. 'model.layers.3') -> our DecoderLayer at `path`."""
    rules = [
        Rule(f"{src}.self_attn.q_proj.weight", (*path, "attn", "wq"), **linear(heads, head_dim)),
        Rule(f"{src}.self_attn.k_proj.weight", (*path, "attn", "wk"), **linear(kv_heads, head_dim)),
        Rule(f"{src}.self_attn.v_proj.weight", (*path, "attn", "wv"), **linear(kv_heads, head_dim)),
        Rule(f"{src}.self_attn.o_proj.weight", (*path, "attn", "wo"), **linear_in(heads, head_dim)),
        Rule(f"{src}.mlp.gate_proj.weight", (*path, "mlp", "w_gate"), **transpose()),
        Rule(f"{src}.mlp.up_proj.weight", (*path, "mlp", "w_up"), **transpose()),
        Rule(f"{src}.mlp.down_proj.weight", (*path, "mlp", "w_down"), **transpose()),
        Rule(f"{src}.input_layernorm.weight", (*path, "attn_norm", "scale")),
        Rule(f"{src}.post_attention_layernorm.weight", (*path, "mlp_norm", "scale")),
    ]
    if qkv_bias:
        rules += [Rule(f"{src}.self_attn.{n}_proj.bias", (*path, "attn", f"b{n}"), **reshape(h, head_dim))
                  for n, h in (("q", heads), ("k", kv_heads), ("v", kv_heads))]
    if qk_norm:
        rules += [Rule(f"{src}.self_attn.{n}_norm.weight", (*path, "attn", f"{n}_norm", "scale")) for n in "qk"]
    return rules


def llm_rules(cfg: LLMConfig, prefix: str = "model.") -> list[Rule]:
    rules = [Rule(f"{prefix}embed_tokens.weight", ("embed", "embedding")),
             Rule(f"{prefix}norm.weight", ("norm", "scale"))]
    for i in range(cfg.num_layers):
        rules += decoder_layer_rules(f"{prefix}layers.{i}", ("layers", f"layers_{i}"), cfg.num_heads,
                                     cfg.num_kv_heads, cfg.head_dim, cfg.qkv_bias, cfg.qk_norm)
    if not cfg.tie_embeddings:
        rules.append(Rule("lm_head.weight", ("lm_head",), **transpose()))
    return rules


def llm_from_hf(state: Mapping[str, np.ndarray], cfg: LLMConfig, prefix: str = "model.") -> dict:
    """HF state dict (numpy arrays) -> params of `LLM(cfg)` (the `llm` subtree of VocalNet)."""
    state = dict(state)
    head = state.pop("lm_head.weight", None) if cfg.tie_embeddings else None
    params = import_tensors(state, llm_rules(cfg, prefix), abstract_llm_params(cfg))
    if head is not None and not np.array_equal(np.asarray(head, np.float32), params["embed"]["embedding"]):
        raise ConversionError("tie_embeddings=True but 'lm_head.weight' differs from 'embed_tokens.weight'")
    return params


def llm_to_hf(params: dict, cfg: LLMConfig, prefix: str = "model.") -> dict[str, np.ndarray]:
    """Params of `LLM(cfg)` -> HF state dict (tied models omit lm_head.weight, as HF saves them)."""
    return export_tensors(params, llm_rules(cfg, prefix))
