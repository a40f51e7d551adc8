"""Weight converters between Hugging Face / VocalNet state dicts and our params pytree."""

from mdm_jax.convert.hf_llm import llm_config_from_hf, llm_config_to_hf, llm_from_hf, llm_to_hf
from mdm_jax.convert.hf_whisper import encoder_config_from_hf, whisper_encoder_from_hf, whisper_encoder_to_hf
from mdm_jax.convert.rules import ConversionError

__all__ = ["ConversionError", "encoder_config_from_hf", "llm_config_from_hf", "llm_config_to_hf", "llm_from_hf",
           "llm_to_hf",
           "whisper_encoder_from_hf", "whisper_encoder_to_hf"]
