"""Configuration, one tree of frozen dataclasses: the model with its presets, training, and the
`key=value` overrides that reach any leaf of either."""

from mdm_jax.config.model import ModelConfig, get_config
from mdm_jax.config.overrides import ConfigError, apply_overrides, config_keys
from mdm_jax.config.train import TrainConfig, get_train_config, train_keys

__all__ = ["ConfigError", "ModelConfig", "TrainConfig", "apply_overrides", "config_keys", "get_config",
           "get_train_config", "train_keys"]
