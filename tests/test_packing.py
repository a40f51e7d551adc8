"""Packed rows (`diffusion.packing`): the loss and gradients of a packed batch equal those of the same
examples one per row, for stage I (LLM over cached encoder frames) and every stage II objective (MDM,
AR, MTP, distillation) with both Talkers, ragged segments, streaming per example and an answer
ending exactly at a block boundary; and attention never crosses a segment (perturb one, the others'
logits stay). The unpacked path these compare with is the one every other test checks. Each Talker
runs MDM, AR and the isolation check; MTP and distillation (the same layouts) run on the anchor one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_train import small_overrides

from data_pipelines.tokenizer import SPEECH_PLACEHOLDER
from mdm_jax.config.train import get_train_config
from mdm_jax.diffusion.masking import corrupt
from mdm_jax.model.denoiser import denoiser
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train import distill, objectives
from mdm_jax.train.llm_states import lay_out

BLOCK = 5  # small_overrides' block size
TEXT = [4, 6, 2, 7, 3]  # answer states per example
UNITS = [7, 10, 3, 12, 5]  # units with EOS: example 1 and 4 end exactly at a block boundary
ROWS = [[0, 1, 2], [3, 4]]  # the packed layout: ragged segments, 3 and 2 per row
STREAMING = [True, False, True, False, True]


def _cfg(talker: str, objective: str, *extra):
    stage = ["stage.name=distill"] if objective == "distill" else ["stage.name=speech", f"stage.objective={objective}"]
    vocalnet = ["model.speech_decoder.talker=vocalnet", "model.speech_decoder.prenn_layers=1"]
    return get_train_config("tiny", [*small_overrides(), "model.speech_decoder.mtp_modules=2", *stage,
                                     *(vocalnet if talker == "vocalnet" else []), *extra])


def _examples(cfg, seed=0):
    rng = np.random.default_rng(seed)
    sd = cfg.model.speech_decoder
    hidden = [rng.standard_normal((t, cfg.model.llm.d_model)).astype(np.float32) for t in TEXT]
    units = [np.r_[rng.integers(0, sd.num_units, u - 1), sd.eos_id].astype(np.int32) for u in UNITS]
    return hidden, units


def _batches(cfg, hidden, units):
    """(one example per row, packed rows ROWS) of the same examples, with their streaming flags."""
    sd = cfg.model.speech_decoder
    kw = dict(block_size=BLOCK, pad_id=sd.pad_id)
    one = lay_out(hidden, units, [[i] for i in range(len(TEXT))], text_len=max(TEXT), unit_len=15, packed=False, **kw)
    packed = lay_out(hidden, units, ROWS, text_len=12, unit_len=25, packed=True, **kw)
    one["streaming"] = np.array(STREAMING)
    packed["streaming"] = np.zeros((len(ROWS), 25 // BLOCK), bool)
    for r, ids in enumerate(ROWS):
        packed["streaming"][r, : len(ids)] = [STREAMING[i] for i in ids]
    return one, packed


def _to_packed(x, packed):
    """A per-unit array of the one-per-row batch (n, 15, ...) laid out as the packed batch's units."""
    out = np.zeros(packed["units"].shape + x.shape[2:], x.dtype)
    for r, ids in enumerate(ROWS):
        for segment, i in enumerate(ids, 1):
            where = np.flatnonzero(packed["speech_segments"][r] == segment)
            out[r, where] = x[i, : len(where)]
    return out


def _loss_and_grads(fn, params, batch):
    return jax.jit(jax.value_and_grad(lambda p: fn(p, batch)[0]))(params)


def _assert_same(one, packed):
    (loss_1, grads_1), (loss_p, grads_p) = one, packed
    np.testing.assert_allclose(loss_p, loss_1, rtol=2e-5)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_1)) > 1e-6, "vacuous: no gradient"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6), grads_p, grads_1)


@pytest.mark.parametrize("talker, objective", [("anchor", "mdm"), ("vocalnet", "mdm"), ("anchor", "ar"),
                                               ("vocalnet", "ar"), ("anchor", "mtp")])
def test_packed_speech_objectives_equal_one_example_per_row(talker, objective):
    cfg = _cfg(talker, objective)
    params = random_params(cfg.model)["speech_decoder"]
    one, packed = _batches(cfg, *_examples(cfg))
    key = jax.random.key(0)
    one, packed = ({k: v for k, v in objectives.prepare(b, key, cfg).items() if k != "streaming"} | {
        "streaming": b["streaming"]} for b in (one, packed))
    if objective == "mdm":  # the same noise on each example, drawn once
        sd = cfg.model.speech_decoder
        noisy = corrupt(jax.random.key(1), jnp.asarray(one["units"]), jnp.asarray(one["speech_valid"]), cfg.mask,
                        block_size=BLOCK, mask_id=sd.mask_id)
        one |= dict(noisy_tokens=noisy.tokens, noisy_target=noisy.is_target, noisy_weight=noisy.weight)
        packed |= {f"noisy_{k}": _to_packed(np.asarray(v), packed) for k, v in
                   (("tokens", noisy.tokens), ("target", noisy.is_target), ("weight", noisy.weight))}
        packed["noisy_tokens"] = np.where(packed["speech_segments"] > 0, packed["noisy_tokens"], sd.pad_id)
    fn = lambda p, b: objectives.speech_objective(p, b, cfg)
    _assert_same(_loss_and_grads(fn, params, one), _loss_and_grads(fn, params, packed))
    if objective == "mtp":  # every head's metric too
        m1, mp = fn(params, one)[1], fn(params, packed)[1]
        for k in ("mtp/ce_0", "mtp/ce_1", "mtp/ce_2", "mtp/accuracy_2"):
            np.testing.assert_allclose(mp[k], m1[k], rtol=2e-5, err_msg=k)


@pytest.mark.parametrize("talker", ["anchor"])
def test_packed_distillation_equals_one_example_per_row(talker):
    """Fully masked blocks (γ_g = 1) make the noise the same draw in both layouts; the teacher is greedy."""
    cfg = _cfg(talker, "distill", "mask.bernoulli_min=1.0", "mask.bernoulli_max=1.0", "distill.teacher_steps=2")
    params = random_params(cfg.model)["speech_decoder"]
    teacher = random_params(cfg.model, seed=1)["speech_decoder"]
    one, packed = _batches(cfg, *_examples(cfg))

    def fn(p, b):
        return distill.distill_loss(p, teacher, b, jax.random.key(0), cfg=cfg.model, distill=cfg.distill,
                                    mask=cfg.mask)

    _assert_same(_loss_and_grads(fn, params, one), _loss_and_grads(fn, params, packed))


@pytest.mark.parametrize("talker", ["anchor", "vocalnet"])
def test_attention_never_crosses_a_segment(talker):
    """Example 1 (the middle of row 0) changed, text and units: examples 0 and 2 keep every logit."""
    cfg = _cfg(talker, "mdm")
    params = random_params(cfg.model)["speech_decoder"]
    hidden, units = _examples(cfg)
    other_hidden, other_units = _examples(cfg, seed=1)
    _, packed = _batches(cfg, hidden, units)
    _, changed = _batches(cfg, [other_hidden[i] if i == 1 else h for i, h in enumerate(hidden)],
                          [other_units[i] if i == 1 else u for i, u in enumerate(units)])
    logits = {name: np.asarray(denoiser(cfg.model, b)(params, jnp.asarray(b["units"])))
              for name, b in (("packed", packed), ("changed", changed))}
    seg = packed["speech_segments"][0]
    np.testing.assert_allclose(logits["changed"][0, seg != 2], logits["packed"][0, seg != 2], rtol=1e-5, atol=1e-6)
    assert np.abs(logits["changed"][0, seg == 2] - logits["packed"][0, seg == 2]).max() > 1e-3  # not vacuous
    np.testing.assert_array_equal(logits["changed"][1], logits["packed"][1])


def test_packed_stage_one_equals_one_dialogue_per_row():
    """The LLM over packed dialogues (cached encoder frames spliced per segment, per-segment positions,
    causal within each) gives the answer CE and LoRA / adaptor gradients of one dialogue per row."""
    cfg = get_train_config("tiny", [*small_overrides(), "stage.name=text"])
    params = random_params(cfg.model)
    rng = np.random.default_rng(0)
    k, d_enc = cfg.model.adaptor.downsample, cfg.model.encoder.d_model
    dialogues = []
    for speech, answer in ((2, 3), (1, 5), (3, 1)):
        text = np.r_[1, 3, [SPEECH_PLACEHOLDER] * speech, 4, rng.integers(6, 128, answer), 2].astype(np.int32)
        loss_mask = np.r_[np.zeros(3 + speech), np.ones(answer + 1)].astype(bool)
        dialogues.append((text, loss_mask, rng.standard_normal((speech * k, d_enc)).astype(np.float32)))

    def batch(rows):
        width = max(sum(len(dialogues[i][0]) for i in ids) for ids in rows)
        out = {"text": np.zeros((len(rows), width), np.int32), "text_valid": np.zeros((len(rows), width), bool),
               "text_loss_mask": np.zeros((len(rows), width), bool),
               "encoded": np.zeros((len(rows), width * k, d_enc), np.float32),
               "text_segments": np.zeros((len(rows), width), np.int32),
               "text_index": np.zeros((len(rows), width), np.int32)}
        for r, ids in enumerate(rows):
            t0 = f0 = 0
            for segment, i in enumerate(ids, 1):
                text, loss_mask, frames = dialogues[i]
                out["text"][r, t0 : t0 + len(text)], out["text_valid"][r, t0 : t0 + len(text)] = text, True
                out["text_loss_mask"][r, t0 : t0 + len(text)] = loss_mask
                out["text_segments"][r, t0 : t0 + len(text)], out["text_index"][r, t0 : t0 + len(text)] = (
                    segment, np.arange(len(text)))
                out["encoded"][r, f0 : f0 + len(frames)] = frames
                t0, f0 = t0 + len(text), f0 + len(frames)
        return out

    one = {k: v for k, v in batch([[0], [1], [2]]).items() if k not in ("text_segments", "text_index")}
    fn = lambda p, b: objectives.text_objective(p, b, cfg)
    _assert_same(_loss_and_grads(fn, params, one), _loss_and_grads(fn, params, batch([[0, 1, 2]])))

