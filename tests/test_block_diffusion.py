"""The block-diffusion sampler: cache exactness against an uncached re-run of the training-form
forward (both Talkers), schedules, EOS, compiles."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from per_layer import per_layer_map

from mdm_jax.config.model import ModelConfig, SpeechDecoderConfig
from mdm_jax.config.sampler import SamplerConfig, TokenSampling
from mdm_jax.decode.block_diffusion import generate
from mdm_jax.diffusion.schedules import step_schedule
from mdm_jax.model.denoiser import denoiser
from mdm_jax.model.init import random_init
from mdm_jax.model.speech_decoder import SpeechDecoder

CFG = SpeechDecoderConfig(talker="vocalnet",
                          num_units=40, d_model=64, num_heads=4, num_kv_heads=2, ffn_dim=96, prenn_layers=1,
                          num_layers=2, mtp_modules=0, block_size=5, text_per_block=2)
ANCHOR = dataclasses.replace(CFG, talker="anchor", prenn_layers=0)  # 2 anchors per block of 5: text for 3 blocks
NUM_BLOCKS = 3


def with_sampler(sampler: SamplerConfig, sd: SpeechDecoderConfig = CFG) -> ModelConfig:
    return ModelConfig(speech_decoder=sd, sampler=sampler)


def decoder(sd: SpeechDecoderConfig):
    """(sd, params, text, text_valid, streaming): ragged text, streaming and not, sharp random weights."""
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.standard_normal((3, 6, 64)).astype(np.float32))
    text_valid = jnp.asarray(np.arange(6)[None] < np.array([[6], [4], [5]]))
    streaming = jnp.array([True, False, True])
    tokens = jnp.zeros((3, 1 + 2 * NUM_BLOCKS * sd.block_size), jnp.int32)
    params = random_init(SpeechDecoder(sd).init, text, tokens)
    params = per_layer_map(lambda p: p * 3.0 if p.ndim == 2 else p, params)  # sharper distributions, fewer ties
    return sd, params, text, text_valid, streaming


@pytest.fixture(scope="module")
def setup():
    return decoder(CFG)[1:]


@pytest.fixture(scope="module", params=["vocalnet", "anchor"])
def talker(request):
    return decoder(CFG if request.param == "vocalnet" else ANCHOR)


@functools.partial(jax.jit, static_argnames="cfg")
def _training_form(params, batch, x_t, *, cfg):
    return denoiser(cfg, batch)(params, x_t)


def reference_decode(sd, params, text, text_valid, streaming, sampler: SamplerConfig):
    """Greedy decoding that re-runs the whole vectorised training sequence `[SOS][x_t][x_0]` at every
    step (no cache), with the commit rule written out in numpy."""
    B, L, b = sd.block_size, NUM_BLOCKS * sd.block_size, text.shape[0]
    batch = {"text_hidden": text, "text_valid": text_valid, "streaming": streaming,
             "speech_valid": jnp.ones((b, L), bool)}
    allowed = np.r_[np.ones(sd.num_units, bool), [False, False, True, False]]  # units + EOS
    n = step_schedule(B, sampler.denoise_steps, sampler.schedule)
    x0 = np.full((b, L), sd.mask_id)
    out = np.full((b, L), sd.pad_id)
    out_logits = np.zeros((b, L, sd.output_vocab), np.float32)
    min_gap = np.full((b, L), np.inf)  # top-2 logit gap at the commit of each position
    done = np.zeros(b, bool)
    for blk in range(NUM_BLOCKS):
        cur, masked = np.full((b, B), sd.mask_id), np.ones((b, B), bool)
        for step in range(B if sampler.threshold else sampler.denoise_steps):
            if not masked.any():
                break
            xt = np.full((b, L), sd.mask_id)
            xt[:, blk * B:(blk + 1) * B] = cur
            logits = _training_form(params, dict(batch, units=jnp.asarray(x0)), jnp.asarray(xt),
                                    cfg=with_sampler(sampler, sd))
            lg = np.where(allowed, np.asarray(logits)[:, blk * B:(blk + 1) * B], -1e30)
            probs = np.exp(lg - lg.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            proposal, score = lg.argmax(-1), probs.max(-1)
            top2 = np.sort(lg, -1)[..., -2:]
            sure = probs.max(-1)
            if step == 0:
                prior = probs.mean(1)  # (b, V): the block's marginal at its first, fully masked step
            if sampler.confidence == "calibrated":
                score = np.log(score) - np.log(np.take_along_axis(prior, proposal, axis=1))
            for r in range(b):
                order = [i for i in np.argsort(-score[r], kind="stable") if masked[r, i]]
                if sampler.threshold:
                    take = [i for i in order if score[r, i] >= sampler.threshold] or order[:1]
                else:
                    take = order[: masked[r].sum() - n[step + 1]]
                if sampler.early_exit and all(sure[r, i] >= sampler.early_exit for i in order if i not in take):
                    take = order
                for i in take:
                    cur[r, i], masked[r, i] = proposal[r, i], False
                    out_logits[r, blk * B + i] = lg[r, i]
                    min_gap[r, blk * B + i] = top2[r, i, 1] - top2[r, i, 0]
        for r in range(b):
            eos = np.flatnonzero(cur[r] == sd.eos_id)
            if done[r]:
                cur[r] = sd.pad_id
            elif eos.size:
                cur[r, eos[0] + 1:] = sd.pad_id
                done[r] = True
        out[:, blk * B:(blk + 1) * B] = cur
        x0[:, blk * B:(blk + 1) * B] = cur
        if done.all():
            break
    return out, out_logits, min_gap


@pytest.mark.parametrize("sampler", [SamplerConfig(denoise_steps=1), SamplerConfig(denoise_steps=2),
                                     SamplerConfig(denoise_steps=5), SamplerConfig(denoise_steps=3, schedule="cosine"),
                                     SamplerConfig(threshold=0.3),
                                     SamplerConfig(denoise_steps=5, confidence="calibrated"),
                                     SamplerConfig(denoise_steps=5, early_exit=0.06),
                                     SamplerConfig(denoise_steps=4, confidence="calibrated", early_exit=0.06)],
                         ids=str)
def test_cached_generation_equals_uncached_rerun(talker, sampler):
    sd, params, text, text_valid, streaming = talker
    ref_tokens, ref_logits, gap = reference_decode(sd, params, text, text_valid, streaming, sampler)
    out = generate(params, text, text_valid, streaming, jax.random.key(0), cfg=with_sampler(sampler, sd),
                   num_blocks=NUM_BLOCKS, record_logits=True)
    tokens, logits = np.asarray(out.tokens), np.asarray(out.logits)
    near_ties = 0
    for r in range(tokens.shape[0]):
        diff = np.flatnonzero(tokens[r] != ref_tokens[r])
        upto = diff[0] if diff.size else tokens.shape[1]  # after a divergence the contexts differ
        if diff.size:
            assert gap[r, diff[0]] < 1e-5, f"row {r}: token {diff[0]} differs without a near-tie"
            near_ties += 1
        real = ref_tokens[r, :upto] != sd.pad_id
        allowed = ref_logits[r, :upto][real] > -1e29
        np.testing.assert_allclose(logits[r, :upto][real][allowed], ref_logits[r, :upto][real][allowed], atol=1e-5)
    print(f"{sampler}: {near_ties} near-ties")
    assert near_ties <= 1


def test_forward_count_and_schedule(setup):
    params, text, text_valid, streaming = setup
    for steps in (1, 2, 5):  # record_logits=True: the programs the cache test above compiled (counting is the same)
        out = generate(params, text, text_valid, streaming, jax.random.key(0),
                       cfg=with_sampler(SamplerConfig(denoise_steps=steps)), num_blocks=NUM_BLOCKS, record_logits=True)
        assert int(out.forwards) == steps * int(out.block)  # S forwards per decoded block, nothing hidden


def test_early_exit_saves_forwards(setup):
    params, text, text_valid, streaming = setup
    run = lambda **kw: generate(params, text, text_valid, streaming, jax.random.key(0),
                                cfg=with_sampler(SamplerConfig(denoise_steps=5, **kw)), num_blocks=NUM_BLOCKS)
    scheduled, early, never = run(), run(early_exit=0.06), run(early_exit=1.0 + 1e-6)
    assert int(early.forwards) < int(scheduled.forwards) == 5 * int(scheduled.block)
    np.testing.assert_array_equal(never.tokens, scheduled.tokens)  # a threshold no token reaches changes nothing
    assert int(never.forwards) == int(scheduled.forwards)


def test_eos_ends_rows_and_the_loop(setup):
    params, text, text_valid, streaming = setup
    head = dict(params["head"], b=params["head"]["b"].at[CFG.eos_id].set(1e4))  # EOS wins everywhere
    out = generate(dict(params, head=head), text, text_valid, streaming, jax.random.key(0),
                   cfg=with_sampler(SamplerConfig(denoise_steps=2)), num_blocks=NUM_BLOCKS)
    tokens = np.asarray(out.tokens)
    assert int(out.block) == 1 and int(out.forwards) == 2  # every row done after block 0: no more forwards
    assert np.asarray(out.done).all()
    for r in range(tokens.shape[0]):
        first = int(np.argmax(tokens[r] == CFG.eos_id))
        assert out.lengths[r] == first
        assert (tokens[r, first + 1:] == CFG.pad_id).all()


def test_second_request_of_the_same_shape_does_not_recompile(setup):
    params, text, text_valid, streaming = setup
    sampler = SamplerConfig(denoise_steps=2, token=TokenSampling(temperature=1.0, top_k=8, top_p=0.9))
    before = generate._cache_size()
    generate(params, text, text_valid, streaming, jax.random.key(1), cfg=with_sampler(sampler), num_blocks=2)
    generate(params, text + 1.0, ~text_valid, ~streaming, jax.random.key(2), cfg=with_sampler(sampler), num_blocks=2)
    assert generate._cache_size() == before + 1


def test_sampling_is_reproducible_and_key_dependent(setup):
    params, text, text_valid, streaming = setup
    sampler = SamplerConfig(denoise_steps=2, token=TokenSampling(temperature=1.5))
    run = lambda k: np.asarray(generate(params, text, text_valid, streaming, jax.random.key(k), 
                                        cfg=with_sampler(sampler), num_blocks=2).tokens)
    np.testing.assert_array_equal(run(3), run(3))
    assert (run(3) != run(4)).any()
