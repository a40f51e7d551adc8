"""`convert vocalnet` reads a release's own config.json: random-weight releases at reduced sizes in each
released layout (LLaMA; Qwen2.5 with qkv biases; Qwen3 with q/k norms and a decoupled head width) convert
without --config, export back tensor for tensor, and answer through `generate` by AR and by MTP.

The LLM's tensors and config keys come from `transformers` itself, the Whisper encoder's from its
`WhisperEncoder`, the speech generator's from transformers' LLaMA pieces under the attribute names of
VocalNet's `SpeechGeneratorARMTP` (SJTU-OmniAgent/VocalNet speech_generator_ar_mtp.py), and the speech keys
of config.json as VocalNet-1B's config.json names them."""

import json
import re

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mdm_jax import cli  # noqa: E402
from mdm_jax.config.overrides import ConfigError  # noqa: E402
from mdm_jax.convert.hf_files import save_hf_folder  # noqa: E402
from mdm_jax.convert.params_io import load_params  # noqa: E402
from mdm_jax.convert.vocalnet_release import vocalnet_config_from_release, vocalnet_to_release  # noqa: E402

UNITS, WIDTH, ENCODER_WIDTH = 48, 64, 128
LLM = dict(vocab_size=256, hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2)
LLMS = {  # release model_type -> the LLM transformers builds
    "omni_speech2s_llama": transformers.LlamaConfig(
        **LLM, rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131_072, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500_000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "omni_speech2s_qwen": transformers.Qwen2Config(**LLM, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                                   rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "omni_speech2s_qwen3": transformers.Qwen3Config(**LLM, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                                    rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
}
FORMS = {"omni_speech2s_llama": transformers.LlamaForCausalLM, "omni_speech2s_qwen": transformers.Qwen2ForCausalLM,
         "omni_speech2s_qwen3": transformers.Qwen3ForCausalLM}
SPEECH = {  # VocalNet-1B's config.json keys for the speech parts, at reduced sizes
    "speech_generator_type": "ar_mtp", "llm_hidden_size": WIDTH, "decoder_hidden_size": WIDTH,
    "decoder_ffn_dim": 96, "decoder_num_heads": 4, "decoder_num_layers": 2, "encoder_num_layers": 1,
    "decoder_dropout": 0.1, "unit_vocab_size": UNITS, "special_tokens": 4, "speech_bos_token_id": UNITS,
    "speech_sos_token_id": UNITS + 1, "speech_eos_token_id": UNITS + 2, "speech_padding_token_id": UNITS + 3,
    "txt_token_num": 5, "speech_token_num": 15, "mtp_num": 2, "speech_encoder_type": "whisper",
    "speech_encoder": "./models/speech_encoder/whisper-large-v3", "speech_encoder_hidden_size": ENCODER_WIDTH,
    "speech_encoder_ds_rate": 5, "speech_projector_type": "linear", "torch_dtype": "float32",
}


def _speech_generator():
    """VocalNet's talker: LlamaDecoderLayers over the LLM's width with LlamaConfig's other defaults."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    vocab = UNITS + 4
    lc = transformers.LlamaConfig(vocab_size=vocab, hidden_size=WIDTH, intermediate_size=SPEECH["decoder_ffn_dim"],
                                  num_hidden_layers=SPEECH["decoder_num_layers"],
                                  num_attention_heads=SPEECH["decoder_num_heads"])
    return torch.nn.ModuleDict({
        "embedding": torch.nn.Embedding(vocab, WIDTH),
        "encode_layers": torch.nn.ModuleList([LlamaDecoderLayer(lc, i) for i in range(SPEECH["encoder_num_layers"])]),
        "norm": LlamaRMSNorm(WIDTH), "encode_rotary_emb": LlamaRotaryEmbedding(lc),
        "decode_layers": torch.nn.ModuleList([LlamaDecoderLayer(lc, i) for i in range(SPEECH["decoder_num_layers"])]),
        "rotary_emb": LlamaRotaryEmbedding(lc), "output_proj": torch.nn.Linear(WIDTH, vocab),
        "mtp_layers": torch.nn.ModuleList([torch.nn.ModuleDict({
            "rotary_emb": LlamaRotaryEmbedding(lc), "decoder_layer": LlamaDecoderLayer(lc, 0),
            "norm_final": LlamaRMSNorm(WIDTH), "output_proj": torch.nn.Linear(WIDTH, vocab)})
            for _ in range(SPEECH["mtp_num"])]),
    })


def _release(model_type: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A release's config.json and tensors, every tensor random (norm gains too: a swap cannot hide)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    llm = LLMS[model_type]
    whisper = transformers.WhisperConfig(d_model=ENCODER_WIDTH, encoder_layers=2, encoder_attention_heads=2,
                                         encoder_ffn_dim=256, num_mel_bins=80)
    parts = {"": FORMS[model_type](llm), "model.speech_encoder.": WhisperEncoder(whisper),
             "speech_generator.": _speech_generator(),
             "model.speech_projector.": torch.nn.ModuleDict({  # speech_projector.py: 5 frames -> 2048 -> the LLM
                 "linear1": torch.nn.Linear(5 * ENCODER_WIDTH, 2048), "linear2": torch.nn.Linear(2048, WIDTH)})}
    rng = np.random.default_rng(1)
    state = {prefix + k: rng.normal(0.0, 0.1, tuple(v.shape)).astype(np.float32)
             for prefix, part in parts.items() for k, v in part.state_dict().items()}
    if llm.tie_word_embeddings:
        del state["lm_head.weight"]  # save_pretrained keeps a tied head once, as the embedding
    config = {**llm.to_dict(), **SPEECH, "model_type": model_type}
    if model_type == "omni_speech2s_llama":  # RoPE as VocalNet-1B's config.json (transformers 4.44) writes it
        rope = config.pop("rope_parameters")
        config.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope)
    return config, state


@pytest.fixture(scope="module", params=list(LLMS))
def converted(request, tmp_path_factory):
    """(model_type, release tensors, converted checkpoint) for each released layout."""
    config, state = _release(request.param)
    root = tmp_path_factory.mktemp(request.param)
    src = save_hf_folder(root / "release", config, state)
    assert cli.main(["convert", "vocalnet", "--src", str(src), "--out", str(root / "ckpt")]) == 0
    return request.param, state, root / "ckpt"


def test_a_release_converts_by_its_own_config_and_exports_back_exactly(converted):
    model_type, state, ckpt = converted
    params, cfg = load_params(ckpt)
    llm = LLMS[model_type]
    assert (cfg.llm.family, cfg.llm.qkv_bias, cfg.llm.qk_norm, cfg.llm.head_dim) == {
        "omni_speech2s_llama": ("llama", False, False, 16), "omni_speech2s_qwen": ("qwen2", True, False, 16),
        "omni_speech2s_qwen3": ("qwen3", False, True, 32)}[model_type]
    assert (cfg.llm.tie_embeddings, cfg.llm.rms_norm_eps) == (llm.tie_word_embeddings, llm.rms_norm_eps)
    assert (cfg.llm.rope_theta, cfg.llm.rope_scaling) == (
        (500_000.0, "llama3") if model_type == "omni_speech2s_llama" else (1e6, "none"))
    assert (cfg.encoder.d_model, cfg.encoder.num_layers, cfg.encoder.num_heads) == (ENCODER_WIDTH, 2, 2)
    sd = cfg.speech_decoder
    assert (sd.talker, sd.num_units, sd.d_model, sd.prenn_layers, sd.num_layers, sd.mtp_modules, sd.block_size,
            sd.text_per_block) == ("vocalnet", UNITS, WIDTH, 1, 2, 2, 15, 5)
    assert cfg.sampler.method == "mtp"  # VocalNet's talker is autoregressive; its default decoding is MTP
    exported = vocalnet_to_release(params, cfg)
    assert sorted(exported) == sorted(state)
    for k, v in state.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_a_converted_release_streams_answers_by_ar_and_mtp(converted, tmp_path):
    _, _, ckpt = converted
    question = tmp_path / "q.wav"
    sf.write(question, 0.1 * np.sin(np.arange(16_000) * 0.05), 16_000)
    answers = {}
    for method in ("ar", "mtp"):
        out = tmp_path / f"{method}.json"
        assert cli.main(["generate", "--ckpt", str(ckpt), "--audio", str(question), "--out", str(out),
                         "--max-blocks", "2", "--max-text-tokens", "10", f"sampler.method={method}"]) == 0
        answers[method] = json.loads(out.read_text())
        assert answers[method]["sampler"]["method"] == method
        units = answers[method]["speech_units"]
        assert 0 < len(units) <= 2 * 15 and all(0 <= u < UNITS for u in units), units
    # one LLM, and the head alone picks the first unit either way: only what MTP modules propose may differ
    assert answers["ar"]["text_ids"] == answers["mtp"]["text_ids"]
    assert answers["ar"]["speech_units"][0] == answers["mtp"]["speech_units"][0]


def test_an_explicit_preset_wins_and_overrides_apply(tmp_path, capsys):
    config, state = _release("omni_speech2s_llama")
    src = save_hf_folder(tmp_path / "release", config, state)
    assert cli.main(["convert", "vocalnet", "--src", str(src), "--out", str(tmp_path / "a"),
                     "sampler.method=ar", "speech_decoder.block_size=10"]) == 0
    _, cfg = load_params(tmp_path / "a")
    assert (cfg.sampler.method, cfg.speech_decoder.block_size, cfg.speech_decoder.num_units) == ("ar", 10, UNITS)
    # tiny-vocalnet's sizes are not this release's: the preset is what the tensors are checked against
    assert cli.main(["convert", "vocalnet", "--src", str(src), "--out", str(tmp_path / "b"),
                     "--config", "tiny-vocalnet"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"model_type": "omni_speech2s_mistral"}, "model_type 'omni_speech2s_mistral' is not a VocalNet release"),
    ({"decoder_num_heads": None}, "no 'decoder_num_heads'"),
    ({"mtp_num": None, "txt_token_num": None}, "no 'txt_token_num', 'mtp_num'"),
    ({"intermediate_size": None}, "no 'intermediate_size' (a key of the LLM's own Hugging Face config)"),
    ({"speech_generator_type": "ctc"}, "speech_generator_type='ctc'"),
    ({"speech_eos_token_id": 0}, "speech_eos_token_id=0, ours is unit_vocab_size + 2"),
    ({"llm_hidden_size": 2 * WIDTH}, f"llm_hidden_size={2 * WIDTH} must equal hidden_size={WIDTH}"),
    ({"speech_encoder_hidden_size": 1280}, "speech_encoder_hidden_size=1280 but the encoder's"),
])
def test_what_a_release_config_cannot_give_is_named_with_its_file(change, message):
    config, state = _release("omni_speech2s_llama")
    config = {k: v for k, v in {**config, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match="^" + re.escape("SRC/config.json: ")) as error:
        vocalnet_config_from_release(config, state, "SRC/config.json")
    assert message in str(error.value), error.value


def test_the_whisper_encoder_sizes_come_from_its_tensors():
    config, state = _release("omni_speech2s_llama")
    del state["model.speech_encoder.layers.0.fc1.weight"]
    with pytest.raises(ConfigError, match="no tensor model.speech_encoder.layers.0.fc1.weight beside it"):
        vocalnet_config_from_release(config, state, "SRC/config.json")


def test_a_missing_key_is_one_line_of_the_cli(tmp_path, capsys):
    config, _ = _release("omni_speech2s_qwen")
    del config["unit_vocab_size"]
    src = save_hf_folder(tmp_path / "release", config, {"x": np.zeros(1, np.float32)})
    assert cli.main(["convert", "vocalnet", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {src / 'config.json'}: no 'unit_vocab_size' (keys of a VocalNet release's speech parts)\n"


def test_vocalnet_1b_sizes_give_the_vocalnet_1b_preset():
    """The sizes VocalNet-1B's config.json publishes (huggingface.co/VocalNet/VocalNet-1B; a copy in
    danjuan-77/VocalNet) with Whisper-large-v3's tensor shapes read as our vocalnet-1b preset, decoded by MTP."""
    import jax

    from mdm_jax.config.model import get_config
    from mdm_jax.config.overrides import differing_keys

    config = {
        "model_type": "omni_speech2s_llama", "vocab_size": 128_256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "rope_theta": 500_000.0, "rope_scaling": {
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192},
        "torch_dtype": "bfloat16", "speech_generator_type": "ar_mtp", "llm_hidden_size": 2048,
        "decoder_hidden_size": 2048, "decoder_ffn_dim": 8192, "decoder_num_heads": 32, "decoder_num_layers": 4,
        "encoder_num_layers": 2, "unit_vocab_size": 6561, "special_tokens": 4, "speech_bos_token_id": 6561,
        "speech_sos_token_id": 6562, "speech_eos_token_id": 6563, "speech_padding_token_id": 6564,
        "txt_token_num": 5, "speech_token_num": 15, "mtp_num": 5, "speech_encoder_type": "whisper",
        "speech_encoder_hidden_size": 1280, "speech_encoder_ds_rate": 5}
    shape = lambda *s: jax.ShapeDtypeStruct(s, np.float32)
    state = {"model.speech_encoder.conv1.weight": shape(1280, 128, 3),
             "model.speech_encoder.embed_positions.weight": shape(1500, 1280),
             **{f"model.speech_encoder.layers.{i}.fc1.weight": shape(5120, 1280) for i in range(32)}}
    cfg = vocalnet_config_from_release(config, state, "VocalNet-1B/config.json")
    assert differing_keys(get_config("vocalnet-1b"), cfg) == ["name", "sampler.method"]
    assert (cfg.name, cfg.sampler.method) == ("VocalNet-1B", "mtp")
