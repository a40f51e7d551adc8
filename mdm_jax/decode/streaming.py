"""Streaming speech-to-speech: speech in -> text tokens (LLM, autoregressive) -> a block of speech
tokens every `text_per_block` text tokens, each yielded as soon as it is final, with its audio when a
token2wav is given.

    for chunk in stream(params, cfg, mel, prompt_ids, eos_ids={2}, token2wav=t2w):
        print(chunk.text_ids, chunk.speech, chunk.times)    # chunk.audio: the samples that became final
    for chunks in stream_batch(params, cfg, mels, prompts, eos_ids={2}):   # several questions at once
        ...                                                 # the chunks of the rows still speaking

Block c of the speech decoder reads the first (c + 1)·text_per_block text states under the
streaming mask, so each block is decoded the moment its text exists, by block diffusion, AR or MTP
(`cfg.sampler.method`: the two samplers share one block interface); with a fixed
`speech_position_offset` the result equals decoding after the whole text (tested).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.buckets import bucket
from mdm_jax.config.model import ModelConfig
from mdm_jax.decode import autoregressive, block_diffusion
from mdm_jax.decode.inference import audio_bucket
from mdm_jax.decode.layout import for_decoding
from mdm_jax.model.attention import init_cache
from mdm_jax.model.vocalnet import VocalNet
from mdm_jax.vocoder.base import Token2Wav, block_stream


@dataclass(frozen=True)
class StreamChunk:
    block: int
    text_ids: list[int]  # the whole answer text so far
    speech: np.ndarray  # (<= block_size,) units of this block (EOS and what follows removed)
    elapsed_s: float  # since the call started, i.e. since the end of the input audio
    audio: np.ndarray | None = None  # (samples,) audio that became final with this block (with a token2wav)
    times: dict[str, float] = field(default_factory=dict)  # this block's seconds: encoder, llm, decoder, vocoder
    row: int = 0  # which question of a batch
    last: bool = False  # its answer's last block


@functools.partial(jax.jit, static_argnames=("cfg",))
def encode(params, mel, frames=None, *, cfg: ModelConfig):
    """mel (b, n_mels, F) -> the speech embeddings (b, n, d_llm) the prompt's placeholders take; frames: (b,)
    valid mel frames when rows are zero-padded to a bucket (see `WhisperEncoder`)."""
    cfg, params = for_decoding(cfg, params)
    return VocalNet(cfg).apply({"params": params}, mel, frames, method=VocalNet.encode_speech)


@functools.partial(jax.jit, static_argnames=("cfg", "capacity"))
def _prefill(params, speech, ids, starts, *, cfg: ModelConfig, capacity: int):
    """ids (b, T): row i's prompt left-padded to begin at slot starts[i] (so every row's next token goes to
    slot T) -> (logits after each prompt (b, V), caches (b, capacity))."""
    cfg, params = for_decoding(cfg, params)
    b, t = ids.shape
    caches = init_cache(b, capacity, cfg.llm.num_kv_heads, cfg.llm.head_dim, jnp.dtype(cfg.dtype),
                        layers=cfg.llm.num_layers)
    slots = jnp.arange(capacity)[None, None]
    mask = (slots <= jnp.arange(t)[None, :, None]) & (slots >= starts[:, None, None])  # (b, T, capacity)
    positions = jnp.maximum(jnp.arange(t)[None] - starts[:, None], 0)
    logits, _, caches = VocalNet(cfg).apply({"params": params}, ids, speech, positions, mask, caches, 0,
                                            method=VocalNet.llm_forward)
    return logits[:, -1], caches


@functools.partial(jax.jit, static_argnames=("cfg",))
def _llm_step(params, tokens, index, starts, caches, *, cfg: ModelConfig):
    """Feed each row's next text token (b,) at slot `index` -> (next logits (b, V), their hidden states (b, d),
    caches)."""
    cfg, params = for_decoding(cfg, params)
    slots = jnp.arange(caches["k"].shape[2])[None]
    mask = ((slots <= index) & (slots >= starts[:, None]))[:, None]  # (b, 1, capacity)
    logits, hidden, caches = VocalNet(cfg).apply({"params": params}, tokens[:, None], None,
                                                 (index - starts)[:, None], mask, caches, index,
                                                 method=VocalNet.llm_forward)
    return logits[:, -1], hidden[:, -1], caches


def speech_embeddings(params, cfg: ModelConfig, mels: Sequence[np.ndarray], buckets: Sequence[int] | None = None):
    """mels[i] (n_mels, frames_i) -> (b, n, d_llm), the encoder run on every row zero-padded to one bucket."""
    frames = [m.shape[1] for m in mels]
    padded = np.zeros((len(mels), mels[0].shape[0], audio_bucket(max(frames), cfg, buckets)), np.float32)
    for i, m in enumerate(mels):
        padded[i, :, : m.shape[1]] = m
    return encode(params, jnp.asarray(padded), jnp.asarray(frames), cfg=cfg)


def batch_text_tokens(params, cfg: ModelConfig, mels: Sequence[np.ndarray], prompts: Sequence[Sequence[int]], *,
                      max_text_tokens: int = 64, buckets: Sequence[int] | None = None,
                      speech=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Greedy answer text of several questions in lockstep, one step at a time: (token ids (b,), their LLM
    hidden states (b, d)); a row's answer ends at its first end-of-text id (the caller's to watch). Audio
    frames and prompt ids are padded to `bucket` lengths (prompts on the left): a question of another length
    in the same buckets compiles nothing. speech: `speech_embeddings(mels)` when already computed."""
    cfg, params = for_decoding(cfg, params)  # once: the jitted steps below get per-layer params
    speech = speech_embeddings(params, cfg, mels, buckets) if speech is None else speech
    width = bucket(max(map(len, prompts)), buckets)
    ids = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
    starts = jnp.asarray([width - len(p) for p in prompts], jnp.int32)
    logits, caches = _prefill(params, speech, jnp.asarray(ids), starts, cfg=cfg, capacity=width + max_text_tokens)
    for i in range(max_text_tokens):
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits, h, caches = _llm_step(params, tokens, jnp.int32(width + i), starts, caches, cfg=cfg)
        yield np.asarray(tokens), np.asarray(h)  # the answer's states include its end-of-text token


def text_tokens(params, cfg: ModelConfig, mel, prompt_ids: Sequence[int], *, eos_ids: set[int],
                max_text_tokens: int = 64, buckets: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """One question's greedy answer, one (token id, its LLM hidden state (d,)) at a time, up to and
    including an id of `eos_ids`. mel: (n_mels, frames); prompt_ids with SPEECH_PLACEHOLDER once per
    adaptor frame."""
    for tokens, hidden in batch_text_tokens(params, cfg, [mel], [prompt_ids], max_text_tokens=max_text_tokens,
                                            buckets=buckets):
        yield int(tokens[0]), hidden[0]
        if tokens[0] in eos_ids:
            return


def stream_batch(params, cfg: ModelConfig, mels: Sequence[np.ndarray], prompts: Sequence[Sequence[int]], *,
                 eos_ids: set[int], max_text_tokens: int = 64, max_blocks: int = 16, key=None,
                 token2wav: Token2Wav | None = None,
                 buckets: Sequence[int] | None = None) -> Iterator[list[StreamChunk]]:
    """Several questions at once (ragged lengths): mels[i] (n_mels, frames_i), prompts[i] with
    SPEECH_PLACEHOLDER once per adaptor frame. Greedy text in lockstep, each row ending at its own
    end-of-text; speech by the method `cfg.sampler` names (block diffusion, AR or MTP: the checkpoint's own
    unless overridden), one block of `speech_decoder.block_size` units at a time, in `cfg.dtype`. Yields, per speech
    block, the StreamChunk of every row still speaking (`row` says whose); with `token2wav` each carries
    the audio that became final with it (`vocoder.base.block_stream`), a row's last one the rest."""
    start = time.perf_counter()
    cfg, params = for_decoding(cfg, params)  # once: every jitted step below gets per-layer params
    sd, tpb, b = cfg.speech_decoder, cfg.speech_decoder.text_per_block, len(mels)
    key = jax.random.key(0) if key is None else key
    dec_params = params["speech_decoder"]
    speech_in = jax.block_until_ready(speech_embeddings(params, cfg, mels, buckets))
    encoder_s = time.perf_counter() - start
    text = batch_text_tokens(params, cfg, mels, prompts, max_text_tokens=max_text_tokens, buckets=buckets,
                             speech=speech_in)
    talker = block_diffusion if cfg.sampler.method == "mdm" else autoregressive  # one block interface
    state = talker.begin(dec_params, jnp.ones((b,), bool), key, cfg=cfg, num_blocks=max_blocks,
                         text_capacity=max_text_tokens)
    audio = [None if token2wav is None else block_stream(token2wav, sd.block_size) for _ in range(b)]
    texts: list[list[int]] = [[] for _ in range(b)]
    ended = np.zeros(b, bool)
    hidden = np.zeros((b, max_text_tokens, cfg.llm.d_model), np.float32)
    generated = written = 0
    speaking = list(range(b))
    for block in range(max_blocks):
        times, t0 = {"encoder": encoder_s if block == 0 else 0.0}, time.perf_counter()
        while generated < min((block + 1) * tpb, max_text_tokens) and not ended.all():
            tokens, h = next(text)
            for i in np.flatnonzero(~ended):
                hidden[i, generated] = h[i]
                texts[i].append(int(tokens[i]))
                ended[i] = tokens[i] in eos_ids
            generated += 1
        t1 = time.perf_counter()
        if written < generated:
            valid = jnp.asarray(np.arange(max_text_tokens)[None] < np.array([len(t) for t in texts])[:, None])
            count = min(tpb * -(-(generated - written) // tpb), max_text_tokens - written)
            state = talker.add_text(dec_params, state, jnp.asarray(hidden), valid, start=written, count=count,
                                    cfg=cfg)
            written = generated
        step = talker.first_block if block == 0 else talker.next_block
        state = step(dec_params, state, cfg=cfg)
        units = np.asarray(state.tokens[:, block * sd.block_size:(block + 1) * sd.block_size])
        done = np.asarray(state.done)
        decoder_s = time.perf_counter() - t1
        chunks = []
        for i in speaking:
            row = units[i]
            speech = row[: int(np.argmax(row >= sd.num_units)) if (row >= sd.num_units).any() else len(row)]
            last = bool(done[i]) or block == max_blocks - 1
            t2 = time.perf_counter()
            wave = None if audio[i] is None else audio[i].push(speech, final=last)
            chunks.append(StreamChunk(block, list(texts[i]), speech, time.perf_counter() - start, wave,
                                      {**times, "llm": t1 - t0, "decoder": decoder_s,
                                       "vocoder": time.perf_counter() - t2}, i, last))
        speaking = [c.row for c in chunks if not c.last]
        yield chunks
        if not speaking:
            return


def stream(params, cfg: ModelConfig, mel, prompt_ids: Sequence[int], **kwargs) -> Iterator[StreamChunk]:
    """One question: mel (n_mels, frames), prompt_ids; `stream_batch`'s keywords. Yields one StreamChunk
    per speech block."""
    for chunks in stream_batch(params, cfg, [mel], [prompt_ids], **kwargs):
        yield from chunks
