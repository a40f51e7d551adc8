"""Configs: presets, overrides with clear errors, parameter counts against published sizes."""

import pytest

from mdm_jax.config.model import PRESETS, ModelConfig, get_config
from mdm_jax.config.overrides import ConfigError, config_keys
from mdm_jax.config.train import get_train_config
from mdm_jax.model.vocalnet import count_params

# Published sizes (Hugging Face model cards / safetensors headers).
LLAMA_3_2_1B = 1_235_814_400  # tied embeddings
LLAMA_3_1_8B = 8_030_261_248
QWEN2_5_7B = 7_615_616_512
WHISPER_LARGE_V3_ENCODER = 636_968_960  # incl. the 1500 x 1280 position table transformers stores


@pytest.mark.parametrize("name,llm,encoder", [
    ("vocalnet-1b", LLAMA_3_2_1B, WHISPER_LARGE_V3_ENCODER),
    ("vocalnet-8b", LLAMA_3_1_8B, WHISPER_LARGE_V3_ENCODER),
    ("vocalnet-qwen2.5-7b", QWEN2_5_7B, WHISPER_LARGE_V3_ENCODER),
    ("vocalnet-mdm-qwen3-8b", None, WHISPER_LARGE_V3_ENCODER),  # LLM: counted by transformers, next test
])
def test_preset_parameter_counts_match_published(name, llm, encoder):
    counts = count_params(get_config(name))  # jax.eval_shape: nothing is allocated
    assert counts["encoder"] == encoder
    if llm is not None:
        assert counts["llm"] == llm
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_qwen3_8b_preset_is_qwen3_8b_and_its_count_equals_transformers():
    """Qwen/Qwen3-8B's config.json through our converter gives the preset; transformers counts its
    parameters from shapes on the meta device (nothing allocated)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mdm_jax.convert import llm_config_from_hf

    hf = transformers.Qwen3Config(
        vocab_size=151_936, hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=12_288, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        max_position_embeddings=40_960, tie_word_embeddings=False, attention_bias=False)
    with torch.device("meta"):
        hf_count = sum(p.numel() for p in transformers.Qwen3ForCausalLM(hf).parameters())
    cfg = get_config("vocalnet-mdm-qwen3-8b")
    assert cfg.llm == llm_config_from_hf(hf.to_dict())
    assert count_params(cfg)["llm"] == hf_count
    assert round(hf_count / 1e9, 2) == 8.19  # model card: 8.2B


def test_tiny_encoder_count_equals_transformers_whisper_tiny_en():
    transformers = pytest.importorskip("transformers")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    enc = get_config("tiny").encoder
    hf = WhisperEncoder(transformers.WhisperConfig(
        num_mel_bins=enc.num_mel_bins, d_model=enc.d_model, encoder_layers=enc.num_layers,
        encoder_attention_heads=enc.num_heads, encoder_ffn_dim=enc.ffn_dim,
        max_source_positions=enc.max_source_positions))
    assert count_params(get_config("tiny"))["encoder"] == sum(p.numel() for p in hf.parameters())


def test_tiny_trains_on_a_laptop():
    counts = count_params(get_config("tiny"))
    trainable = counts["adaptor"] + counts["llm"] + counts["speech_decoder"]
    assert 5e6 < trainable < 15e6, counts


def test_overrides_apply_and_parse_types():
    cfg = get_config("tiny", ["llm.num_layers=2", "llm.rope_theta=5e5", "remat=true", "dtype=bfloat16",
                              "speech_decoder.block_size=5"])
    assert cfg.llm.num_layers == 2 and cfg.llm.rope_theta == 5e5 and cfg.remat is True
    assert cfg.dtype == "bfloat16" and cfg.speech_decoder.block_size == 5
    assert PRESETS["tiny"].llm.num_layers == 4  # presets are not mutated


@pytest.mark.parametrize("override,message", [
    ("llm.num_layer=2", "unknown config key 'llm.num_layer'"),
    ("llm.num_layers=two", "config key 'llm.num_layers' expects int, got 'two'"),
    ("remat=maybe", "config key 'remat' expects bool"),
    ("llm.num_layers", "not of the form key=value"),
    ("llm=3", "unknown config key 'llm'"),
])
def test_bad_overrides_raise_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        get_config("tiny", [override])


def test_empty_mask_ratio_window_names_the_key():
    with pytest.raises(ConfigError, match="mask.bernoulli_min=0.9"):
        get_train_config("tiny", ["mask.bernoulli_min=0.9", "mask.bernoulli_max=0.2"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_config("huge")


def test_every_key_is_listed_with_its_type():
    keys = config_keys(ModelConfig())
    assert keys["llm.num_kv_heads"] is int and keys["llm.qkv_bias"] is bool
    assert keys["speech_decoder.text_per_block"] is int and keys["encoder.layer_norm_eps"] is float


def test_special_speech_ids_follow_vocalnet():
    c = get_config("vocalnet-1b").speech_decoder
    assert (c.bos_id, c.sos_id, c.eos_id, c.pad_id, c.mask_id) == (6561, 6562, 6563, 6564, 6565)
    assert c.output_vocab == 6565


def test_optional_fields_take_none_or_their_type():
    from dataclasses import dataclass

    from mdm_jax.config.overrides import apply_overrides

    @dataclass(frozen=True)
    class Data:
        num_epochs: int | None = None

    assert apply_overrides(Data(), ["num_epochs=3"]).num_epochs == 3
    assert apply_overrides(Data(), ["num_epochs=none"]).num_epochs is None
    with pytest.raises(ConfigError, match="expects int, got 'x'"):
        apply_overrides(Data(), ["num_epochs=x"])


def test_registries_hold_exactly_the_configs_names():
    from mdm_jax.config.mask import CORRUPTIONS
    from mdm_jax.config.overrides import registry
    from mdm_jax.config.sampler import CONFIDENCES
    from mdm_jax.decode.sampling import CONFIDENCE
    from mdm_jax.diffusion.masking import MASKING

    assert set(MASKING) == set(CORRUPTIONS) and set(CONFIDENCE) == set(CONFIDENCES)
    with pytest.raises(ImportError, match=r"sampler.confidence.*\['a'\].*\['a', 'b'\]"):
        registry(("a", "b"), {"a": abs}, "sampler.confidence")  # a name without its code
