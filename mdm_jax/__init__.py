"""mdm-jax: VocalNet-MDM (masked diffusion over speech-token blocks) in JAX/Flax."""

from mdm_jax.config import ModelConfig, get_config
from mdm_jax.vocalnet import SPEECH_PLACEHOLDER, VocalNet, abstract_params, count_params, init_params, random_params

__all__ = ["ModelConfig", "SPEECH_PLACEHOLDER", "VocalNet", "abstract_params", "count_params",
           "get_config", "init_params", "random_params"]
