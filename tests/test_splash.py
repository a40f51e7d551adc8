"""Splash attention (interpreted on this CPU) equals einsum attention: per mask kind at the attention
level (forward within 1e-5, gradients within 1e-4, float32), and through every objective's loss and
gradients: stage I unpacked and packed, MDM / AR (both Talkers, streaming per row), MTP and
distillation, one example per row with ragged padding and packed rows whose segments end on a block
boundary (`test_packing`'s examples). Also: how many tiles the tile masks skip."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_train import small_overrides
from test_packing import _batches, _cfg, _examples

from experiments.bench_splash import main as bench_splash
from mdm_jax.config.train import get_train_config
from mdm_jax.diffusion.attention_masks import Layout, Mask, autoregressive_mask, block_diffusion_mask
from mdm_jax.diffusion.packing import Packed
from mdm_jax.model.attention import dot_product_attention
from mdm_jax.model.splash import computed_tiles
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train import distill, objectives

RNG = np.random.default_rng(0)
TEXT_VALID = jnp.asarray(np.arange(10)[None] < np.array([[10], [6]]))
SPEECH_VALID = jnp.asarray(np.arange(48)[None] < np.array([[48], [29]]))
STREAMING = jnp.array([True, False])


def _packed_rows():
    """Two rows of 48 units in blocks of 16: row 0 holds answers of 16 (ends on a block boundary) and 20
    units, row 1 one of 40; their text states 4 + 6 and 9 in 12 slots."""
    speech = np.zeros((2, 48), np.int32)
    speech[0, :16], speech[0, 16:48], speech[1, :48] = 1, 2, 1
    valid = np.zeros((2, 48), bool)
    valid[0, :16], valid[0, 16:36], valid[1, :40] = True, True, True
    index = np.zeros((2, 48), np.int32)
    index[0, :16], index[0, 16:48], index[1] = np.arange(16), np.arange(32), np.arange(48)
    text = np.zeros((2, 12), np.int32)
    text[0, :4], text[0, 4:10], text[1, :9] = 1, 2, 1
    text_index = np.where(text > 0, np.arange(12) - np.where(text == 2, 4, 0), 0).astype(np.int32)
    return Packed(*map(jnp.asarray, (text, text_index, speech, index))), jnp.asarray(valid), jnp.asarray(text > 0)


def _masks():
    packed, speech_valid, text_valid = _packed_rows()
    no_text, not_streaming = text_valid[:, :0], jnp.zeros((2, 3), bool)
    segments = jnp.asarray(np.r_[[1] * 10 + [2] * 20 + [0] * 10, [1] * 39 + [0]].reshape(2, 40).astype(np.int32))
    kw = dict(block_size=16, text_per_block=4)
    return {
        "full, ragged keys": Mask.full(jnp.asarray(np.arange(40)[None] < np.array([[40], [25]]))),
        "causal": Mask.causal(2, 40),
        "causal, packed": Mask.causal(2, 40, segments),
        "block diffusion, anchor": block_diffusion_mask(TEXT_VALID[:, :0], SPEECH_VALID, STREAMING, **kw)[0],
        "block diffusion, text, streaming per row": block_diffusion_mask(TEXT_VALID, SPEECH_VALID, STREAMING,
                                                                         **kw)[0],
        "autoregressive, text, streaming per row": autoregressive_mask(TEXT_VALID, SPEECH_VALID, STREAMING,
                                                                       chunk_size=16, text_per_chunk=4)[0],
        "block diffusion, anchor, packed": block_diffusion_mask(no_text, speech_valid, not_streaming,
                                                                packed=packed.prefix(0), **kw)[0],
        "autoregressive, anchor, packed": autoregressive_mask(no_text, speech_valid, not_streaming, chunk_size=16,
                                                              text_per_chunk=4, packed=packed.prefix(0))[0],
    }


@pytest.mark.parametrize("name", list(_masks()))
def test_splash_equals_einsum_for_every_mask_kind(name):
    mask = _masks()[name]
    assert mask.splashable
    dense = mask.dense()
    n = 40 if dense is None else dense.shape[-1]
    b, h, kv, d = 2, 4, 2, 16
    q, k, v = (jnp.asarray(RNG.standard_normal((b, n, heads, d)), jnp.float32) for heads in (h, kv, kv))
    # padded queries' outputs are never read (they see only themselves under einsum): compare the rest
    real = np.ones((b, n), bool) if dense is None or dense.shape[1] == 1 else np.asarray(dense).sum(-1) > 1
    weight = jnp.asarray(RNG.standard_normal((b, n, h, d)), jnp.float32) * real[..., None, None]

    def loss_and_grads(implementation):
        out = dot_product_attention(q, k, v, mask, implementation)
        grads = jax.grad(lambda *qkv: (dot_product_attention(*qkv, mask, implementation) * weight).sum(),
                         argnums=(0, 1, 2))(q, k, v)
        return np.asarray(out)[real], grads

    (splash, splash_grads), (einsum, einsum_grads) = loss_and_grads("splash"), loss_and_grads("einsum")
    np.testing.assert_allclose(splash, einsum, atol=1e-5)
    for a, e in zip(splash_grads, einsum_grads):
        np.testing.assert_allclose(a, e, atol=1e-4)


def _same_loss_and_grads(fn, params, cfg, batch):
    """fn(cfg) -> f(params, batch) -> (loss, metrics), under einsum and splash attention."""
    results = []
    for attention in ("einsum", "splash"):
        run = fn(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention=attention)))
        results.append(jax.jit(jax.value_and_grad(lambda p, run=run: run(p, batch)[0]))(params))
    (loss_e, grads_e), (loss_s, grads_s) = results
    np.testing.assert_allclose(loss_s, loss_e, rtol=1e-5)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_e)) > 1e-6, "vacuous: no gradient"
    jax.tree.map(lambda s, e: np.testing.assert_allclose(s, e, rtol=1e-4, atol=1e-6), grads_s, grads_e)


@pytest.mark.parametrize("talker, objective, layout", [
    ("anchor", "mdm", "one"), ("anchor", "mdm", "packed"), ("vocalnet", "mdm", "one"), ("anchor", "ar", "packed"),
    ("vocalnet", "ar", "one"), ("anchor", "mtp", "one"), ("anchor", "mtp", "packed")])
def test_splash_equals_einsum_for_speech_objectives(talker, objective, layout):
    cfg = _cfg(talker, objective)
    params = random_params(cfg.model)["speech_decoder"]
    batch = dict(zip(("one", "packed"), _batches(cfg, *_examples(cfg))))[layout]
    batch = objectives.prepare(batch, jax.random.key(0), cfg)
    _same_loss_and_grads(lambda c: lambda p, b: objectives.speech_objective(p, b, c), params, cfg, batch)


@pytest.mark.parametrize("layout", ["one", "packed"])
def test_splash_equals_einsum_for_distillation(layout):
    cfg = _cfg("anchor", "distill", "mask.bernoulli_min=1.0", "mask.bernoulli_max=1.0", "distill.teacher_steps=2")
    params = random_params(cfg.model)["speech_decoder"]
    teacher = random_params(cfg.model, seed=1)["speech_decoder"]
    batch = dict(zip(("one", "packed"), _batches(cfg, *_examples(cfg))))[layout]
    _same_loss_and_grads(lambda c: lambda p, b: distill.distill_loss(
        p, teacher, b, jax.random.key(0), cfg=c.model, distill=c.distill, mask=c.mask), params, cfg, batch)


@pytest.mark.parametrize("packed", [False, True])
def test_splash_equals_einsum_for_stage_one(packed):
    """The LLM (causal, packed: within each dialogue) and the encoder (bidirectional over valid frames)."""
    cfg = get_train_config("tiny", [*small_overrides(), "stage.name=text"])
    params = random_params(cfg.model)
    rng = np.random.default_rng(0)
    k, d_enc, width = cfg.model.adaptor.downsample, cfg.model.encoder.d_model, 16
    batch = {"text": rng.integers(6, 128, (2, width)).astype(np.int32), "text_valid": np.ones((2, width), bool),
             "text_loss_mask": np.arange(width)[None] >= np.array([[4], [3]]),
             "encoded": rng.standard_normal((2, width * k, d_enc)).astype(np.float32)}
    batch["text"][:, 1:3] = 5  # speech placeholders
    if packed:
        batch["text_segments"] = np.repeat(np.r_[[1] * 9 + [2] * 5 + [0] * 2][None], 2, 0).astype(np.int32)
        batch["text_index"] = np.where(batch["text_segments"] == 2, np.arange(width) - 9, np.arange(width))
        batch["text_index"] = np.where(batch["text_segments"] > 0, batch["text_index"], 0).astype(np.int32)
    _same_loss_and_grads(lambda c: lambda p, b: objectives.text_objective(p, b, c), params, cfg, batch)


def test_tiles_skip_what_the_masks_hide():
    """Block diffusion's x_t half sees one block of itself: most of its tiles are skipped; causal about half."""
    done, total = computed_tiles("layout", Layout("block_diffusion", 0, 1024, 16, 4, False), 2 + 2048)
    assert done / total < 0.35  # 1024 units: 0.34 (tiles aligned to the regions)
    done, total = computed_tiles("causal", None, 1024)
    assert done / total == (8 * 9 / 2) / 64
    done, total = computed_tiles("full", None, 1024)
    assert done == total


def test_bench_splash_table(tmp_path, capsys):
    """docs/tpu.md's splash table: the MDM objective at 2048 units computes <= 35 % of the dense tiles, the
    causal LLM at 1024 tokens <= 60 %; packed rows are reported against one example per row."""
    rows = {(r["case"], r["length"]): r for r in bench_splash(["--out", str(tmp_path / "splash.json")])["rows"]}
    assert rows[("MDM [x_t ; x_0], anchor Talker", 2 + 2 * 2048)]["fraction"] <= 0.35
    assert rows[("causal LLM", 1024)]["fraction"] <= 0.60
    assert all(r["packed_over_one_per_row"] > 1 for r in rows.values() if "packed_over_one_per_row" in r)
    assert "packed / one per row" in capsys.readouterr().out and (tmp_path / "splash.json").is_file()
