"""Streaming speech-to-speech: speech in -> text tokens (LLM, autoregressive) -> a block of speech
tokens every `text_per_block` text tokens, each yielded as soon as it is final, with its audio when a
token2wav is given.

    for chunk in stream(params, cfg, mel, prompt_ids, eos_ids={2}, token2wav=t2w):
        print(chunk.text_ids, chunk.speech, chunk.times)    # chunk.audio: the samples that became final

Block c of the speech decoder reads the first (c + 1)·text_per_block text states under the
streaming mask, so each block is decoded the moment its text exists; with a fixed
`speech_position_offset` the result equals decoding after the whole text (tested).
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.config.model import ModelConfig
from mdm_jax.decode import block_diffusion
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


MIN_BUCKET = 16


def bucket(n: int, buckets: Sequence[int] | None = None) -> int:
    """The padded length of an input of length n: the smallest of `buckets` that holds it, else the next
    power of two (at least MIN_BUCKET). Inputs in one bucket share one compiled program."""
    fits = [b for b in buckets or () if b >= n]
    return min(fits) if fits else max(MIN_BUCKET, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("cfg",))
def encode(params, mel, frames=None, *, cfg: ModelConfig):
    """mel (b, n_mels, F) -> the speech embeddings (b, n, d_llm) the prompt's placeholders take; frames: (b,)
    valid mel frames when rows are zero-padded to a bucket (see `WhisperEncoder`)."""
    cfg, params = for_decoding(cfg, params)
    return VocalNet(cfg).apply({"params": params}, mel, frames, method=VocalNet.encode_speech)


@functools.partial(jax.jit, static_argnames=("cfg", "capacity"))
def _prefill(params, speech, ids, length, *, cfg: ModelConfig, capacity: int):
    """Run the prompt (1, T) with its speech embeddings, valid up to `length` (the rest is bucket padding,
    which later steps overwrite slot by slot before reading) -> (logits after the prompt (V,), caches)."""
    cfg, params = for_decoding(cfg, params)
    model = VocalNet(cfg)
    t = ids.shape[1]
    caches = init_cache(1, capacity, cfg.llm.num_kv_heads, cfg.llm.head_dim, jnp.dtype(cfg.dtype),
                        layers=cfg.llm.num_layers)
    mask = (jnp.arange(capacity)[None] <= jnp.arange(t)[:, None])[None]
    logits, _, caches = model.apply({"params": params}, ids, speech, jnp.arange(t)[None], mask, caches, 0,
                                    method=VocalNet.llm_forward)
    return logits[0, length - 1], caches


@functools.partial(jax.jit, static_argnames=("cfg",))
def _llm_step(params, token, index, caches, *, cfg: ModelConfig):
    """Feed one text token at position `index` -> (next logits (V,), its hidden state (d,), caches)."""
    cfg, params = for_decoding(cfg, params)
    capacity = caches["k"].shape[2]
    mask = (jnp.arange(capacity) <= index)[None, None]
    logits, hidden, caches = VocalNet(cfg).apply({"params": params}, token.reshape(1, 1), None,
                                                 index.reshape(1, 1), mask, caches, index,
                                                 method=VocalNet.llm_forward)
    return logits[0, -1], hidden[0, -1], caches


def speech_embeddings(params, cfg: ModelConfig, mel, buckets: Sequence[int] | None = None):
    """mel (n_mels, frames) -> (1, n, d_llm), the encoder run on the frames zero-padded to their bucket."""
    padded = np.zeros((1, mel.shape[0], bucket(mel.shape[1], buckets)), np.float32)
    padded[0, :, : mel.shape[1]] = mel
    return encode(params, jnp.asarray(padded), jnp.asarray([mel.shape[1]]), cfg=cfg)


def text_tokens(params, cfg: ModelConfig, mel, prompt_ids: Sequence[int], *, eos_ids: set[int],
                max_text_tokens: int = 64, buckets: Sequence[int] | None = None,
                speech=None) -> Iterator[tuple[int, np.ndarray]]:
    """Greedy answer text, one (token id, its LLM hidden state (d,)) at a time, up to and including
    an id of `eos_ids`. mel: (n_mels, frames); prompt_ids with SPEECH_PLACEHOLDER once per adaptor frame.
    Audio frames and prompt ids are padded to `bucket` lengths: a question of another length in the same
    buckets compiles nothing. speech: `speech_embeddings` of mel when already computed."""
    cfg, params = for_decoding(cfg, params)  # once: the jitted steps below get per-layer params
    speech = speech_embeddings(params, cfg, mel, buckets) if speech is None else speech
    n = len(prompt_ids)
    ids = np.zeros((1, bucket(n, buckets)), np.int32)
    ids[0, :n] = prompt_ids
    logits, caches = _prefill(params, speech, jnp.asarray(ids), jnp.int32(n), cfg=cfg,
                              capacity=ids.shape[1] + max_text_tokens)
    for i in range(max_text_tokens):
        token = int(jnp.argmax(logits))
        logits, h, caches = _llm_step(params, jnp.int32(token), jnp.int32(n + i), caches, cfg=cfg)
        yield token, np.asarray(h)  # the answer's states include its end-of-text token
        if token in eos_ids:
            return


def stream(params, cfg: ModelConfig, mel, prompt_ids: Sequence[int], *, eos_ids: set[int],
           max_text_tokens: int = 64, max_blocks: int = 16, key=None, token2wav: Token2Wav | None = None,
           buckets: Sequence[int] | None = None) -> Iterator[StreamChunk]:
    """mel: (n_mels, frames) of one utterance; prompt_ids with SPEECH_PLACEHOLDER once per adaptor
    frame. Greedy text; speech by block diffusion as `cfg.sampler` says, in `cfg.dtype`. Yields one
    StreamChunk per speech block; with `token2wav`, each carries the audio that became final with it
    (`vocoder.base.block_stream`) and the last one the rest."""
    start = time.perf_counter()
    cfg, params = for_decoding(cfg, params)  # once: every jitted step below gets per-layer params
    sd, tpb = cfg.speech_decoder, cfg.speech_decoder.text_per_block
    key = jax.random.key(0) if key is None else key
    dec_params = params["speech_decoder"]
    speech_in = jax.block_until_ready(speech_embeddings(params, cfg, mel, buckets))
    encoder_s = time.perf_counter() - start
    text = text_tokens(params, cfg, mel, prompt_ids, eos_ids=eos_ids, max_text_tokens=max_text_tokens,
                       buckets=buckets, speech=speech_in)
    state = block_diffusion.begin(dec_params, jnp.ones((1,), bool), key, cfg=cfg, num_blocks=max_blocks,
                                  text_capacity=max_text_tokens)
    audio = None if token2wav is None else block_stream(token2wav, sd.block_size)
    text_ids: list[int] = []
    hidden = np.zeros((1, max_text_tokens, cfg.llm.d_model), np.float32)
    written = 0
    for block in range(max_blocks):
        times, t0 = {"encoder": encoder_s if block == 0 else 0.0}, time.perf_counter()
        for token, h in itertools.islice(text, max(0, min((block + 1) * tpb, max_text_tokens) - len(text_ids))):
            hidden[0, len(text_ids)] = h
            text_ids.append(token)
        t1 = time.perf_counter()
        if written < len(text_ids):
            valid = jnp.asarray(np.arange(max_text_tokens)[None] < len(text_ids))
            count = min(tpb * -(-(len(text_ids) - written) // tpb), max_text_tokens - written)
            state = block_diffusion.add_text(dec_params, state, jnp.asarray(hidden), valid, start=written,
                                             count=count, cfg=cfg)
            written = len(text_ids)
        step = block_diffusion.first_block if block == 0 else block_diffusion.next_block
        state = step(dec_params, state, cfg=cfg)
        tokens = np.asarray(state.tokens[0, block * sd.block_size:(block + 1) * sd.block_size])
        speech = tokens[: int(np.argmax(tokens >= sd.num_units)) if (tokens >= sd.num_units).any() else len(tokens)]
        last = bool(state.done[0]) or block == max_blocks - 1
        t2 = time.perf_counter()
        wave = None if audio is None else audio.push(speech, final=last)
        times.update(llm=t1 - t0, decoder=t2 - t1, vocoder=time.perf_counter() - t2)
        yield StreamChunk(block, list(text_ids), speech, time.perf_counter() - start, wave, times)
        if last:
            return
