"""mdm-jax: VocalNet-MDM (masked diffusion over speech-token blocks) in JAX/Flax."""

from data_pipelines.placeholders import SPEECH_PLACEHOLDER
from mdm_jax import platforms

platforms.default_to_cpu()  # before any computation starts a backend

from mdm_jax.config.model import ModelConfig, get_config  # noqa: E402
from mdm_jax.model.vocalnet import VocalNet, abstract_params, count_params, init_params, random_params  # noqa: E402

__all__ = ["ModelConfig", "SPEECH_PLACEHOLDER", "VocalNet", "abstract_params", "count_params",
           "get_config", "init_params", "random_params"]
