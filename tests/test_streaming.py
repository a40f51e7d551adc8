"""Streaming: speech blocks decoded while the text still arrives equal the blocks decoded after it."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from per_layer import per_layer_map

from data_pipelines.buckets import bucket
from data_pipelines.tokenizer import SPEECH_PLACEHOLDER, num_speech_frames
from mdm_jax.config.model import ModelConfig, SpeechDecoderConfig, get_config
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.decode import autoregressive, block_diffusion, speech, streaming
from mdm_jax.decode.inference import audio_bucket
from mdm_jax.decode.streaming import batch_text_tokens, stream, stream_batch
from mdm_jax.model.init import random_init
from mdm_jax.model.speech_decoder import SpeechDecoder
from mdm_jax.model.vocalnet import VocalNet, random_params

SAMPLER = SamplerConfig(denoise_steps=2)


def _decoder(offset, talker="vocalnet", mtp_modules=0):
    sd = SpeechDecoderConfig(talker=talker, num_units=40, d_model=64, num_heads=4, num_kv_heads=2, ffn_dim=96,
                             prenn_layers=int(talker == "vocalnet"), num_layers=2, mtp_modules=mtp_modules,
                             block_size=5, text_per_block=2, speech_position_offset=offset)
    text = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 64)).astype(np.float32))
    params = random_init(SpeechDecoder(sd).init, text, jnp.zeros((2, 4), jnp.int32))
    return ModelConfig(speech_decoder=sd, sampler=SAMPLER), per_layer_map(lambda p: p * 3.0 if p.ndim == 2 else p,
                                                                        params), text


def _chunked(cfg, params, text, blocks, talker=block_diffusion):
    """Text revealed 2 states per block (zeros until then), one block decoded after each reveal."""
    b, t, _ = text.shape
    extra = dict(record_logits=True) if talker is block_diffusion else {}
    state = talker.begin(params, jnp.ones((b,), bool), jax.random.key(0), cfg=cfg, num_blocks=blocks,
                         text_capacity=t, **extra)
    tpb = cfg.speech_decoder.text_per_block
    for c in range(blocks):
        known = min(t, (c + 1) * tpb)
        seen = jnp.arange(t)[None, :, None] < known
        if c * tpb < t:
            state = talker.add_text(params, state, jnp.where(seen, text, 0.0), seen[..., 0].repeat(b, 0),
                                    start=c * tpb, count=tpb, cfg=cfg)
        step = talker.first_block if c == 0 else talker.next_block
        state = step(params, state, cfg=cfg)
    return state


@pytest.mark.parametrize("offset,talker", [(64, "vocalnet"), (0, "vocalnet"), (0, "anchor")])
def test_streamed_blocks_equal_offline_blocks_only_with_a_fixed_speech_offset(offset, talker):
    """VocalNet's talker streams exactly only with a fixed speech offset; the anchor Talker always
    does (its text enters as anchors, the sequence before speech is the same at every length)."""
    cfg, params, text = _decoder(offset, talker)
    offline = block_diffusion.generate(params, text, jnp.ones((2, 6), bool), jnp.ones((2,), bool),
                                       jax.random.key(0), cfg=cfg, num_blocks=4, record_logits=True)
    streamed = _chunked(cfg, params, text, 4)
    gap = np.abs(np.asarray(streamed.logits) - np.asarray(offline.logits)).max()
    if offset or talker == "anchor":
        np.testing.assert_array_equal(streamed.tokens, offline.tokens)
        assert gap < 1e-4
    else:  # VocalNet's positions depend on the final text length, unknown while streaming
        assert gap > 1e-2


@pytest.mark.parametrize("method, talker", [("ar", "vocalnet"), ("ar", "anchor"), ("mtp", "vocalnet"),
                                            ("mtp", "anchor")])
def test_autoregressive_blocks_streamed_equal_offline(method, talker):
    """AR and MTP (1 + 2 tokens a forward, so forwards straddle blocks) decoded block by block as the text
    arrives: token for token what `autoregressive.generate` decodes with all text known, both Talkers."""
    cfg, params, text = _decoder(64, talker, mtp_modules=2)
    cfg = dataclasses.replace(cfg, sampler=SamplerConfig(method=method))
    offline = autoregressive.generate(params, text, jnp.ones((2, 6), bool), jnp.ones((2,), bool),
                                      jax.random.key(0), cfg=cfg, max_tokens=4 * 5)
    streamed = _chunked(cfg, params, text, 4, autoregressive)
    np.testing.assert_array_equal(streamed.tokens[:, :20], offline.tokens)
    assert int(offline.lengths.min()) > 5, "vacuous: speech ends in the first block"


def test_a_method_the_talker_cannot_run_is_refused_in_words():
    cfg, params, text = _decoder(64, "anchor")  # no MTP modules
    cfg = dataclasses.replace(cfg, sampler=SamplerConfig(method="mtp"))
    with pytest.raises(ValueError, match="sampler.method=mtp but the speech decoder has no MTP modules"):
        autoregressive.begin(params, jnp.ones((2,), bool), jax.random.key(0), cfg=cfg, num_blocks=2, text_capacity=6)


@pytest.mark.parametrize("talker, method", [("vocalnet", "mdm"), ("anchor", "mdm"), ("anchor", "ar"),
                                            ("vocalnet", "mtp")])
def test_speech_to_speech_stream_matches_offline_decoding(talker, method):
    """`stream` decodes by the config's method (a checkpoint's own): block diffusion, AR or MTP."""
    cfg = get_config("tiny" if talker == "anchor" else "tiny-vocalnet", [
        "llm.num_layers=2", "encoder.num_layers=1", "speech_decoder.num_layers=1", "speech_decoder.mtp_modules=2",
        "speech_decoder.block_size=5", "speech_decoder.text_per_block=2", "sampler.denoise_steps=2",
        f"sampler.method={method}"])
    params = random_params(cfg)
    mel = np.random.default_rng(0).standard_normal((cfg.encoder.num_mel_bins, 100)).astype(np.float32)
    prompt = [1, 3] + [SPEECH_PLACEHOLDER] * 10 + [4]
    class Beeps:  # a token2wav without its own stream: each block is synthesised on its own
        sample_rate = 16_000

        def __call__(self, units):
            return np.full(640 * len(units), 0.5, np.float32)

    chunks = list(stream(params, cfg, mel, prompt, eos_ids=set(), max_text_tokens=7, max_blocks=4,
                         token2wav=Beeps()))

    assert [c.block for c in chunks] == list(range(len(chunks))) and len(chunks) >= 1
    assert [len(c.audio) for c in chunks] == [640 * len(c.speech) for c in chunks]
    assert all(set(c.times) == {"encoder", "llm", "decoder", "vocoder"} for c in chunks)
    assert [len(c.text_ids) for c in chunks] == [min(7, 2 * (i + 1)) for i in range(len(chunks))]
    assert all(a.elapsed_s < b.elapsed_s for a, b in zip(chunks, chunks[1:]))
    text_ids = chunks[-1].text_ids

    # Offline: the teacher-forced LLM over prompt + answer, then all blocks at once.
    def apply(method):  # one compiled program each, not op-by-op dispatch
        return jax.jit(functools.partial(VocalNet(cfg).apply, method=method))

    speech_in = apply(VocalNet.encode_speech)({"params": params}, jnp.asarray(mel)[None])
    ids = jnp.asarray([prompt + text_ids])
    logits, hidden, _ = apply(VocalNet.llm_forward)({"params": params}, ids, speech_in)
    assert text_ids[1:] == np.asarray(jnp.argmax(logits[0, len(prompt):-1], -1)).tolist()  # greedy text
    answer = hidden[:, len(prompt):]
    offline = speech.generate(params["speech_decoder"], answer, jnp.ones(answer.shape[:2], bool),
                              jnp.ones((1,), bool), jax.random.key(0), cfg=cfg, num_blocks=4)
    streamed = np.concatenate([c.speech for c in chunks])
    np.testing.assert_array_equal(streamed, np.asarray(offline.tokens[0, :offline.lengths[0]]))


def test_stream_decodes_in_the_presets_dtype(monkeypatch):
    """A bfloat16 preset streams a ragged batch with a bfloat16 LLM cache, speech decoder and KV cache, not
    float32."""
    cfg = get_config("tiny", ["llm.num_layers=1", "encoder.num_layers=1", "speech_decoder.num_layers=1",
                              "speech_decoder.mtp_modules=0", "speech_decoder.block_size=5",
                              "speech_decoder.text_per_block=2", "sampler.denoise_steps=1", "dtype=bfloat16"])
    seen = []

    def spy(fn):
        def run(*args, **kwargs):
            state = fn(*args, **kwargs)
            seen.extend(state.caches[name].dtype for name in ("k", "v"))
            return state
        return run

    for name in ("first_block", "next_block"):
        monkeypatch.setattr(block_diffusion, name, spy(getattr(block_diffusion, name)))
    llm_caches, prefill = [], streaming._prefill

    def prefill_spy(*args, **kwargs):
        logits, caches = prefill(*args, **kwargs)
        llm_caches.append(caches)
        return logits, caches

    monkeypatch.setattr(streaming, "_prefill", prefill_spy)
    mels = [np.zeros((cfg.encoder.num_mel_bins, n), np.float32) for n in (100, 160)]
    prompts = [[1, 3] + [SPEECH_PLACEHOLDER] * num_speech_frames(m.shape[1], cfg.adaptor.downsample) + [4]
               for m in mels]
    blocks = list(stream_batch(random_params(cfg), cfg, mels, prompts, eos_ids=set(), max_text_tokens=4,
                               max_blocks=2))
    assert [len(chunks) for chunks in blocks] == [2, 2] and len(seen) // 2 == 2
    assert set(seen) == {jnp.dtype(jnp.bfloat16)}
    assert {llm_caches[0][name].dtype for name in ("k", "v")} == {jnp.dtype(jnp.bfloat16)}


def test_audio_buckets_stop_at_the_encoders_window():
    cfg = get_config("tiny")  # Whisper: 1500 positions = 3000 mel frames (30 s)
    assert [audio_bucket(n, cfg) for n in (90, 300, 2048, 2049, 3000)] == [128, 512, 2048, 3000, 3000]
    assert audio_bucket(3001, cfg) == 3001  # too long: the encoder says so
    assert [bucket(n, [100, 400]) for n in (50, 101, 401)] == [100, 400, 512]


SMALL = ["llm.num_layers=1", "encoder.num_layers=1", "speech_decoder.num_layers=1", "speech_decoder.mtp_modules=0",
         "sampler.denoise_steps=1"]


@pytest.fixture(scope="module")
def small():
    """One small model for the bucket and batch tests (their programs compile once); LLM weights x3 so that
    random answers vary with the question."""
    cfg = get_config("tiny", SMALL)
    params = random_params(cfg)
    params["llm"] = jax.tree.map(lambda p: p * 3.0 if p.ndim >= 2 else p, params["llm"])
    return cfg, params


def test_questions_of_other_lengths_in_one_bucket_compile_nothing(small):
    """Five questions of different audio and prompt lengths: after the first, none compiles a program
    (audio frames and prompt ids are padded to their bucket); a longer one, in the next bucket, does."""
    cfg, params = small
    compiled = []

    def count(event, *_, **__):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":  # a new program, even one on disk already
            compiled.append(event)

    def ask(frames):
        mel = np.random.default_rng(frames).standard_normal((cfg.encoder.num_mel_bins, frames)).astype(np.float32)
        prompt = [1, 3] + [SPEECH_PLACEHOLDER] * num_speech_frames(frames, cfg.adaptor.downsample) + [4]
        before = len(compiled)
        list(stream(params, cfg, mel, prompt, eos_ids=set(), max_text_tokens=6, max_blocks=2))
        return len(compiled) - before

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        ask(300)
        assert [ask(frames) for frames in (340, 380, 430, 500)] == [0, 0, 0, 0]  # buckets: 512 frames, 64 ids
        assert ask(700) > 0  # 1024 frames, 128 prompt ids: the counter does count
    finally:
        jax.monitoring.unregister_event_duration_listener(count)


def test_batched_questions_stream_what_each_streams_alone(small):
    """Three questions of different audio and prompt lengths in one batch: every row's text, units and
    blocks are what it streams alone (left-padded prompts, masked encoder padding, per-row end of text)."""
    cfg, params = small
    rng = np.random.default_rng(0)
    questions = []
    for frames in (260, 420, 330):
        mel = rng.standard_normal((cfg.encoder.num_mel_bins, frames)).astype(np.float32)
        questions.append((mel, [1, 3] + [SPEECH_PLACEHOLDER] * num_speech_frames(frames, cfg.adaptor.downsample)
                          + [4]))
    steps = [t for t, _ in batch_text_tokens(params, cfg, [m for m, _ in questions], [p for _, p in questions],
                                             max_text_tokens=10)]
    eos = {int(steps[2][0]), int(steps[5][2])}  # row 0 ends after 3 tokens, row 2 after 6, row 1 runs on
    kwargs = dict(eos_ids=eos, max_text_tokens=10, max_blocks=4)
    batched: dict[int, list] = {}
    for chunks in stream_batch(params, cfg, [m for m, _ in questions], [p for _, p in questions], **kwargs):
        for c in chunks:
            batched.setdefault(c.row, []).append(c)
    lengths = set()
    for row, (mel, prompt) in enumerate(questions):
        alone = list(stream(params, cfg, mel, prompt, **kwargs))
        assert [c.text_ids for c in batched[row]] == [c.text_ids for c in alone]
        assert [c.speech.tolist() for c in batched[row]] == [c.speech.tolist() for c in alone]
        assert batched[row][-1].last and not any(c.last for c in batched[row][:-1])
        lengths.add(len(alone[-1].text_ids))
    assert lengths == {3, 6, 10}  # the rows did end at different steps
