"""CosyVoice2's flow in JAX against the PyTorch reference (cosyvoice2-eu's CausalMaskedDiffWithXvec):
the same random weights, tokens, voice prompt and noise table give the same mel."""

import jax.numpy as jnp
import numpy as np
import pytest
from cosyvoice_reference import one_torch_thread, reference  # noqa: F401 (an autouse fixture)

from mdm_jax.convert.cosyvoice_flow import flow_from_torch
from mdm_jax.convert.rules import ConversionError
from mdm_jax.vocoder.cosyvoice_flow import CosyFlowConfig, token2mel

REDUCED = CosyFlowConfig(vocab_size=100, encoder_ffn=256, encoder_blocks=1, decoder_channels=64, decoder_heads=2,
                         decoder_head_dim=32, decoder_blocks=1, decoder_mid_blocks=2)


def reference_flow(cfg: CosyFlowConfig, seed: int = 0):
    """CosyVoice2's flow built as cosyvoice2.yaml builds it, at `cfg`'s sizes, every tensor perturbed so that
    biases and norms are not at their init values. (The reference hard-wires 512 encoder channels.)"""
    import torch
    from omegaconf import DictConfig

    flow, matching, decoder, encoder = reference("cosyvoice.flow.flow", "cosyvoice.flow.flow_matching",
                                                 "cosyvoice.flow.decoder", "cosyvoice.transformer.upsample_encoder")
    torch.manual_seed(seed)
    enc = encoder.UpsampleConformerEncoder(
        input_size=cfg.d_model, output_size=cfg.d_model, attention_heads=cfg.encoder_heads,
        linear_units=cfg.encoder_ffn, num_blocks=cfg.encoder_blocks, input_layer="linear",
        pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn", use_cnn_module=False,
        macaron_style=False, static_chunk_size=cfg.chunk_tokens)
    est = decoder.CausalConditionalDecoder(
        in_channels=4 * cfg.n_mels, out_channels=cfg.n_mels, channels=[cfg.decoder_channels], dropout=0.0,
        attention_head_dim=cfg.decoder_head_dim, n_blocks=cfg.decoder_blocks, num_mid_blocks=cfg.decoder_mid_blocks,
        num_heads=cfg.decoder_heads, act_fn="gelu", static_chunk_size=cfg.chunk_tokens * cfg.token_mel_ratio,
        num_decoding_left_chunks=-1)
    cfm = matching.CausalConditionalCFM(
        in_channels=240, n_spks=1, spk_emb_dim=cfg.n_mels, estimator=est,
        cfm_params=DictConfig({"sigma_min": 1e-6, "solver": "euler", "t_scheduler": "cosine",
                               "training_cfg_rate": 0.2, "inference_cfg_rate": cfg.cfg_rate, "reg_loss_type": "l1"}))
    model = flow.CausalMaskedDiffWithXvec(
        input_size=cfg.d_model, output_size=cfg.n_mels, spk_embed_dim=cfg.spk_embed_dim, vocab_size=cfg.vocab_size,
        input_frame_rate=25, token_mel_ratio=cfg.token_mel_ratio, pre_lookahead_len=cfg.pre_lookahead, encoder=enc,
        decoder=cfm).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def reference_mel(model, tokens, prompt_tokens, prompt_mel, speaker, streaming, finalize) -> np.ndarray:
    """(U,) tokens after a (P,) prompt with its (2P, n_mels) mel -> the reference's (frames, n_mels) mel."""
    import torch

    with torch.no_grad():
        mel, _ = model.inference(torch.tensor(tokens[None]), torch.tensor([len(tokens)]),
                                 torch.tensor(prompt_tokens[None]), torch.tensor([len(prompt_tokens)]),
                                 torch.tensor(prompt_mel[None]), torch.tensor([len(prompt_mel)]),
                                 torch.tensor(speaker[None]), streaming, finalize)
    return mel[0].numpy().T


def our_mel(params, cfg, tokens, prompt_tokens, prompt_mel, speaker, noise, streaming, finalize) -> np.ndarray:
    full = np.concatenate([prompt_tokens, tokens])[None]
    mel = token2mel(params, cfg, jnp.asarray(full), jnp.asarray([full.shape[1]]), jnp.asarray(speaker[None]),
                    jnp.asarray(prompt_mel), noise, streaming=streaming, finalize=finalize)
    return np.asarray(mel[0, len(prompt_mel):])


def inputs(cfg, n_tokens=40, n_prompt=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, n_tokens), rng.integers(0, cfg.vocab_size, n_prompt),
            rng.normal(size=(cfg.token_mel_ratio * n_prompt, cfg.n_mels)).astype(np.float32),
            rng.normal(size=cfg.spk_embed_dim).astype(np.float32))


@pytest.fixture(scope="module")
def reduced():
    model = reference_flow(REDUCED)
    params = flow_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, REDUCED)
    return model, params, jnp.asarray(model.decoder.rand_noise[0].numpy().T)


@pytest.mark.parametrize("streaming,finalize", [(True, True), (True, False)])  # non-streaming: test_cosyvoice2
def test_mel_matches_reference(reduced, streaming, finalize):
    model, params, noise = reduced
    tokens, prompt, prompt_mel, speaker = inputs(REDUCED)
    ref = reference_mel(model, tokens, prompt, prompt_mel, speaker, streaming, finalize)
    ours = our_mel(params, REDUCED, tokens, prompt, prompt_mel, speaker, noise, streaming, finalize)
    assert ours.shape == ref.shape == (2 * (len(tokens) - (0 if finalize else REDUCED.pre_lookahead)), 80)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_ragged_batch_equals_rows(reduced):
    """Rows of different lengths in one call give each row's batch-1 mel (padding never leaks)."""
    _, params, noise = reduced
    rng = np.random.default_rng(1)
    lengths = [33, 21]
    tokens = rng.integers(0, REDUCED.vocab_size, (2, max(lengths)))
    speaker = rng.normal(size=(2, REDUCED.spk_embed_dim)).astype(np.float32)
    empty = jnp.zeros((0, REDUCED.n_mels))
    batch = token2mel(params, REDUCED, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(speaker), empty, noise,
                      streaming=True, finalize=False)
    for i, n in enumerate(lengths):
        row = token2mel(params, REDUCED, jnp.asarray(tokens[i : i + 1, :n]), jnp.asarray([n]),
                        jnp.asarray(speaker[i : i + 1]), empty, noise, streaming=True, finalize=False)
        frames = 2 * (n - REDUCED.pre_lookahead)
        np.testing.assert_allclose(batch[i, :frames], row[0], atol=1e-5)
        assert not np.asarray(batch[i, frames:]).any()


def test_whole_chunks_do_not_change_as_tokens_arrive(reduced):
    """CosyVoice2's streaming: re-running the flow on more tokens (the last `pre_lookahead` only as
    look-ahead) leaves the mel of every completed 25-token chunk as it was."""
    _, params, noise = reduced
    tokens, _, _, speaker = inputs(REDUCED, n_tokens=2 * REDUCED.chunk_tokens + REDUCED.pre_lookahead + 9)
    empty = np.zeros((0, REDUCED.n_mels), np.float32)
    first = our_mel(params, REDUCED, tokens[: REDUCED.chunk_tokens + REDUCED.pre_lookahead], tokens[:0], empty,
                    speaker, noise, True, False)
    later = our_mel(params, REDUCED, tokens, tokens[:0], empty, speaker, noise, True, False)
    np.testing.assert_allclose(later[: len(first)], first, atol=1e-5)
    assert len(first) == REDUCED.chunk_tokens * REDUCED.token_mel_ratio


def test_real_size_matches_reference():
    """CosyVoice2-0.5B's flow sizes (112.5 M parameters, 1121 tensors), streaming with look-ahead."""
    cfg = CosyFlowConfig()
    model = reference_flow(cfg, seed=1)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert len(state) == 1121
    params = flow_from_torch(state, cfg)
    tokens, prompt, prompt_mel, speaker = inputs(cfg, n_tokens=13, n_prompt=2, seed=2)
    ref = reference_mel(model, tokens, prompt, prompt_mel, speaker, True, False)
    ours = our_mel(params, cfg, tokens, prompt, prompt_mel, speaker, jnp.asarray(model.decoder.rand_noise[0].numpy().T),
                   True, False)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_converter_names_the_bad_key(reduced):
    model, _, _ = reduced
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    key = "decoder.estimator.mid_blocks.1.1.0.attn1.to_k.weight"
    with pytest.raises(ConversionError, match="missing key.*mid_blocks.1.1.0.attn1.to_k.weight"):
        flow_from_torch({k: v for k, v in state.items() if k != key}, REDUCED)
    with pytest.raises(ConversionError, match="unexpected key.*encoder.extra.weight"):
        flow_from_torch({**state, "encoder.extra.weight": np.zeros(3)}, REDUCED)
    with pytest.raises(ConversionError, match="encoder.up_layer.conv.weight.*shape"):
        flow_from_torch({**state, "encoder.up_layer.conv.weight": np.zeros((512, 512, 3))}, REDUCED)
