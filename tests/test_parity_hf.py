"""Parity with the real reference: `transformers` (PyTorch, CPU) on small random configs built offline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mdm_jax.config.model import ModelConfig, SpeechDecoderConfig  # noqa: E402
from mdm_jax.convert import (  # noqa: E402
    ConversionError,
    encoder_config_from_hf,
    llm_config_from_hf,
    llm_from_hf,
    llm_to_hf,
    whisper_encoder_from_hf,
    whisper_encoder_to_hf,
)
from mdm_jax.convert.rules import export_tensors  # noqa: E402
from mdm_jax.convert.vocalnet_release import speech_generator_rules  # noqa: E402
from mdm_jax.model.llm import LLM  # noqa: E402
from mdm_jax.model.speech_decoder import SpeechDecoder  # noqa: E402
from mdm_jax.model.whisper import WhisperEncoder, sinusoids  # noqa: E402

torch.manual_seed(0)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def _state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _randomise(model):
    """Random init everywhere, norms included (HF inits them to 1, which would hide a swap)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def _hf_llm(family, tie, head_dim=16):
    """head_dim 16 = hidden_size / heads; Qwen3 alone may set another (Qwen3Config's own default is 128)."""
    common = dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=head_dim, intermediate_size=96, tie_word_embeddings=tie,
                  max_position_embeddings=131072)
    if family == "llama":
        hf_cfg = transformers.LlamaConfig(rope_theta=500000.0, rope_scaling=LLAMA3_SCALING, **common)
        model = transformers.LlamaForCausalLM(hf_cfg)
    elif family == "qwen2":
        hf_cfg = transformers.Qwen2Config(rope_theta=1e6, **common)
        model = transformers.Qwen2ForCausalLM(hf_cfg)
    else:
        hf_cfg = transformers.Qwen3Config(rope_theta=1e6, **common)
        model = transformers.Qwen3ForCausalLM(hf_cfg)
    return _randomise(model), hf_cfg.to_dict()


def _ours_llm(params, cfg, ids, positions):
    b, t = ids.shape
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    logits, hidden, _ = LLM(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(positions), mask,
                                       method=LLM.forward_ids)
    return np.asarray(logits), np.asarray(hidden)


@pytest.mark.parametrize("family,tie,head_dim", [("llama", True, 16), ("llama", False, 16), ("qwen2", False, 16),
                                                  ("qwen3", True, 16), ("qwen3", False, 16), ("qwen3", False, 32)])
def test_llm_logits_hidden_and_logprob_match_transformers(family, tie, head_dim):
    model, hf_dict = _hf_llm(family, tie, head_dim)
    cfg = llm_config_from_hf(hf_dict)
    assert cfg.qkv_bias == (family == "qwen2") and cfg.tie_embeddings == tie
    assert cfg.qk_norm == (family == "qwen3") and cfg.head_dim == head_dim
    assert cfg.rope_scaling == ("llama3" if family == "llama" else "none")
    params = llm_from_hf(_state(model), cfg)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 320, (2, 24))
    # positions far past original_max_position_embeddings exercise the llama3 scaled frequencies
    positions = np.stack([np.arange(24), 9000 + np.arange(24)])
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), position_ids=torch.tensor(positions),
                    output_hidden_states=True)
    logits, hidden = _ours_llm(params, cfg, ids, positions)
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(hidden, out.hidden_states[-1].numpy(), atol=1e-4, rtol=0)

    def seq_logprob(lg):
        lp = jax.nn.log_softmax(jnp.asarray(lg[:, :-1]), axis=-1)
        return np.asarray(jnp.take_along_axis(lp, jnp.asarray(ids[:, 1:, None]), -1).sum((1, 2)))

    np.testing.assert_allclose(seq_logprob(logits), seq_logprob(out.logits.numpy()), atol=1e-3, rtol=1e-6)


@pytest.mark.parametrize("family,head_dim", [("llama", 16), ("qwen3", 32)])
def test_llm_round_trip_is_exact_and_hf_loads_our_export(family, head_dim):
    model, hf_dict = _hf_llm(family, tie=False, head_dim=head_dim)
    cfg = llm_config_from_hf(hf_dict)
    state = _state(model)
    exported = llm_to_hf(llm_from_hf(state, cfg), cfg)
    assert exported.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(exported[k], state[k], err_msg=k)
    params = llm_from_hf(exported, cfg)
    again = llm_from_hf(llm_to_hf(params, cfg), cfg)
    jax.tree.map(np.testing.assert_array_equal, params, again)


def test_conversion_errors_name_the_key_and_shape():
    model, hf_dict = _hf_llm("llama", tie=False)
    cfg = llm_config_from_hf(hf_dict)
    state = _state(model)

    missing = dict(state)
    del missing["model.layers.1.mlp.up_proj.weight"]
    expected = r"missing key 'model.layers.1.mlp.up_proj.weight' \(expected shape \(96, 64\)\)"
    with pytest.raises(ConversionError, match=expected):
        llm_from_hf(missing, cfg)

    bad = dict(state, **{"model.layers.0.self_attn.k_proj.weight": np.zeros((64, 64), np.float32)})
    expected = r"'model.layers.0.self_attn.k_proj.weight' has shape \(64, 64\), expected \(32, 64\)"
    with pytest.raises(ConversionError, match=expected):
        llm_from_hf(bad, cfg)

    extra = dict(state, **{"model.layers.2.mlp.up_proj.weight": np.zeros((96, 64), np.float32)})
    with pytest.raises(ConversionError, match="unexpected key 'model.layers.2.mlp.up_proj.weight'"):
        llm_from_hf(extra, cfg)


def test_whisper_encoder_matches_transformers():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    hf_cfg = transformers.WhisperConfig(
        num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
        max_source_positions=60, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)
    model = _randomise(HFWhisperEncoder(hf_cfg))
    with torch.no_grad():  # keep Whisper's sinusoidal table, as the real checkpoints have it
        model.embed_positions.weight.copy_(torch.tensor(sinusoids(60, 64)))
    cfg = encoder_config_from_hf(hf_cfg.to_dict())
    state = {f"encoder.{k}": v for k, v in _state(model).items()}
    params = whisper_encoder_from_hf(state, cfg, prefix="encoder.")

    mel = np.random.default_rng(1).standard_normal((2, 80, 120)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.tensor(mel)).last_hidden_state.numpy()
    ours = np.asarray(WhisperEncoder(cfg).apply({"params": params}, jnp.asarray(mel)))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

    exported = whisper_encoder_to_hf(params, cfg, prefix="encoder.")
    for k, v in exported.items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


def test_speech_decoder_matches_a_transformers_built_vocalnet_talker():
    """VocalNet's talker is transformers' LlamaDecoderLayer / LlamaRMSNorm / Linear / Embedding
    glued together; glue the same pieces here and compare the whole teacher-forced forward."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    c = SpeechDecoderConfig(talker="vocalnet", num_units=40, d_model=64, num_heads=4, num_kv_heads=4, ffn_dim=96,
                            prenn_layers=2, num_layers=2, mtp_modules=2)
    lc = transformers.LlamaConfig(vocab_size=c.output_vocab, hidden_size=64, intermediate_size=96,
                                  num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=c.rms_norm_eps,
                                  rope_theta=c.rope_theta, attn_implementation="eager")
    mods = torch.nn.ModuleDict({
        "embedding": torch.nn.Embedding(c.output_vocab, 64),
        "encode_layers": torch.nn.ModuleList([LlamaDecoderLayer(lc, i) for i in range(2)]),
        "decode_layers": torch.nn.ModuleList([LlamaDecoderLayer(lc, i) for i in range(2)]),
        "norm": LlamaRMSNorm(64, c.rms_norm_eps),
        "output_proj": torch.nn.Linear(64, c.output_vocab),
        "mtp_layers": torch.nn.ModuleList([torch.nn.ModuleDict({
            "decoder_layer": LlamaDecoderLayer(lc, 0), "norm_final": LlamaRMSNorm(64, c.rms_norm_eps),
            "output_proj": torch.nn.Linear(64, c.output_vocab)}) for _ in range(2)]),
    })
    _randomise(mods)
    rope = LlamaRotaryEmbedding(lc)

    def run(layers, h, mask):
        pos = torch.arange(h.shape[1])[None]
        bias = torch.where(mask, 0.0, torch.finfo(torch.float32).min)[:, None]
        for layer in layers:
            out = layer(h, attention_mask=bias, position_ids=pos, position_embeddings=rope(h, pos))
            h = out[0] if isinstance(out, tuple) else out
        return h

    rng = np.random.default_rng(2)
    text = rng.standard_normal((2, 7, 64)).astype(np.float32)
    tokens = np.concatenate([np.full((2, 1), c.sos_id), rng.integers(0, 40, (2, 11))], axis=1)
    n = 1 + 7 + tokens.shape[1]
    causal = lambda m: torch.tril(torch.ones(m, m, dtype=torch.bool))[None].expand(2, m, m)
    with torch.no_grad():
        pre = run(mods["encode_layers"], torch.tensor(text), causal(7))
        bos = mods["embedding"](torch.full((2, 1), c.bos_id))
        x = torch.cat([bos, pre, mods["embedding"](torch.tensor(tokens))], 1)
        h = run(mods["decode_layers"], x, causal(n))
        ref = mods["output_proj"](mods["norm"](h))[:, n - tokens.shape[1]:].numpy()
        hk, ref_mtp = h, []
        for m in mods["mtp_layers"]:
            hk = run([m["decoder_layer"]], hk, causal(n))
            ref_mtp.append(m["output_proj"](m["norm_final"](hk))[:, n - tokens.shape[1]:].numpy())

    state = {f"speech_generator.{k}": v.detach().numpy() for k, v in mods.state_dict().items()}
    from mdm_jax.convert.rules import import_tensors
    decoder = SpeechDecoder(c)
    abstract = jax.eval_shape(lambda: decoder.init(jax.random.key(0), jnp.asarray(text), jnp.asarray(tokens)))
    params = import_tensors(state, speech_generator_rules(c), __import__("flax").linen.unbox(abstract["params"]))
    logits, mtp, _ = decoder.apply({"params": params}, jnp.asarray(text), jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
    for ours, theirs in zip(mtp, ref_mtp):
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
    exported = export_tensors(params, speech_generator_rules(c))
    for k, v in state.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_model_config_json_round_trip():
    cfg = ModelConfig()
    assert ModelConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("family,head_dim", [("llama", 16), ("qwen2", 16), ("qwen3", 16), ("qwen3", 32)])
def test_our_llm_exports_to_a_folder_transformers_loads(tmp_path, family, head_dim):
    from mdm_jax.convert import llm_config_to_hf
    from mdm_jax.convert.hf_files import save_hf_folder

    model, hf_dict = _hf_llm(family, tie=family == "llama", head_dim=head_dim)
    cfg = llm_config_from_hf(hf_dict)
    params = llm_from_hf(_state(model), cfg)
    save_hf_folder(tmp_path, llm_config_to_hf(cfg), llm_to_hf(params, cfg))
    assert llm_config_from_hf(llm_config_to_hf(cfg)) == cfg
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = np.random.default_rng(3).integers(0, 320, (1, 16))
    positions = np.arange(16)[None] + 9000
    with torch.no_grad():
        theirs = loaded(input_ids=torch.tensor(ids), position_ids=torch.tensor(positions)).logits.numpy()
    ours, _ = _ours_llm(params, cfg, ids, positions)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
