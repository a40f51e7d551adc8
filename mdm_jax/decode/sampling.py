"""Choosing tokens from logits, shared by every sampler and the distillation teacher: greedy or
temperature / top-k / top-p with float32 Gumbel noise, an optional repetition penalty, confidence
scores, the one rule for which masked tokens a denoising step commits (`commit`) and the one rule
for how a row ends at EOS (`end_at_eos`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.config.overrides import registry
from mdm_jax.config.sampler import CONFIDENCES, SamplerConfig, TokenSampling

NEG_INF = -1e30  # finite, so a fully filtered row never turns into NaN


def speech_only(logits, cfg):
    """Keep the logits of the ids a speech sampler may emit (units and EOS; `cfg`: SpeechDecoderConfig)."""
    ids = jnp.arange(cfg.output_vocab)
    return jnp.where((ids < cfg.num_units) | (ids == cfg.eos_id), logits, NEG_INF)


def repetition_penalty(logits, history, penalty: float):
    """logits: (b, n, V); history: (b, W) recent ids, < 0 where empty. Divides positive and
    multiplies negative logits of every id in the history (the Hugging Face rule)."""
    if penalty == 1.0:
        return logits
    seen = jnp.zeros(logits.shape[::2], bool).at[jnp.arange(logits.shape[0])[:, None], history].set(
        history >= 0, mode="drop")
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen[:, None, :], penalised, logits)


def filter_logits(logits, top_k: int, top_p: float):
    """Keep the top-k ids and the smallest set whose probability reaches top_p; others -> NEG_INF."""
    if top_k:
        kth = lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        cutoff_rank = jnp.sum(cum < top_p, axis=-1, keepdims=True)  # ids up to and incl. this rank stay
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_rank, axis=-1)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return logits


def propose(logits, key, cfg: TokenSampling):
    """logits: (b, n, V) float32 -> (tokens (b, n), probs (b, n, V) of the distribution sampled from)."""
    logits = logits.astype(jnp.float32)
    if cfg.temperature == 0.0:
        return jnp.argmax(logits, axis=-1), jax.nn.softmax(logits, axis=-1)
    logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
    return jnp.argmax(logits + gumbel, axis=-1), jax.nn.softmax(logits, axis=-1)


def block_prior(probs, candidates):
    """probs (b, n, V), candidates (b, n) bool -> (b, V): the mean distribution over a block's candidate
    positions, the block's marginal that prior-calibrated confidence divides by."""
    weight = candidates.astype(probs.dtype)
    return jnp.einsum("bn,bnv->bv", weight, probs) / jnp.maximum(weight.sum(-1), 1.0)[:, None]


def _picked(probs, tokens):
    return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]


def _calibrated(probs, tokens, key, prior):
    log = lambda p: jnp.log(jnp.maximum(p, jnp.finfo(probs.dtype).tiny))
    return log(_picked(probs, tokens)) - log(_picked(prior[:, None], tokens))


def _margin(probs, tokens, key, prior):
    top2 = lax.top_k(probs, 2)[0]
    return top2[..., 0] - top2[..., 1]


CONFIDENCE = registry(CONFIDENCES, {  # (probs (b, n, V), tokens (b, n), key, prior (b, V)) -> (b, n)
    "max_prob": lambda probs, tokens, key, prior: _picked(probs, tokens),
    "calibrated": _calibrated,
    "margin": _margin,
    "neg_entropy": lambda probs, tokens, key, prior: jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1),
    "random": lambda probs, tokens, key, prior: jax.random.uniform(key, tokens.shape),
}, "sampler.confidence")


def confidence(probs, tokens, kind: str, key=None, prior=None):
    """(b, n) score per position: higher = commit sooner. `calibrated` (Chatterbox-Flash's prior-calibrated
    score) is log p_i(x_i) - log prior(x_i), prior (b, V) the block's marginal (`block_prior`), so a token
    the whole block leans to ranks below an equally likely rarer one."""
    return CONFIDENCE[kind](probs, tokens, key, prior)


def take_most_confident(score, candidates, count):
    """Boolean (b, n): the `count` (b,) highest-scoring candidates per row. `count` may be traced:
    a rank mask does what a static `lax.top_k` cannot."""
    score = jnp.where(candidates, score, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-score, axis=-1), axis=-1)
    return candidates & (rank < count[:, None])


def commit(logits, tokens, masked, count, key, sampler: SamplerConfig, history=None, prior=None):
    """One denoising step: propose a token at every position and unmask the `count` (b,) most
    confident masked ones, or with `sampler.threshold` > 0 every masked one at least that confident
    (the most confident one at least). With `sampler.early_exit` > 0 a row whose masked positions left
    after that all propose a token of at least that probability commits them too (its block ends).
    logits: (b, n, V); tokens, masked: (b, n); history: (b, W) recent ids for the repetition penalty,
    or None; prior: (b, V) the block's marginal for calibrated confidence (default: `block_prior` of
    this step's masked positions). -> (tokens, masked, take (b, n) just committed)."""
    k_propose, k_conf = jax.random.split(key)
    if history is not None:
        logits = repetition_penalty(logits, history, sampler.token.repetition_penalty)
    proposal, probs = propose(logits, k_propose, sampler.token)
    if sampler.confidence == "calibrated" and prior is None:
        prior = block_prior(probs, masked)
    score = confidence(probs, proposal, sampler.confidence, k_conf, prior)
    if sampler.threshold > 0:
        best = take_most_confident(score, masked, jnp.ones(masked.shape[:1], jnp.int32))
        take = (masked & (score >= sampler.threshold)) | best
    else:
        take = take_most_confident(score, masked, count)
    if sampler.early_exit > 0:
        rest = masked & ~take
        sure = jnp.all(~rest | (confidence(probs, proposal, "max_prob") >= sampler.early_exit), axis=-1)  # (b,)
        take = take | (rest & sure[:, None])
    return jnp.where(take, proposal, tokens), masked & ~take, take


def end_at_eos(new, done, eos_id: int, pad_id: int):
    """new: (b, n) tokens just chosen, done: (b,) rows that ended earlier -> (tokens with PAD after
    the first EOS and everywhere in ended rows, units before EOS (b,) (0 in ended rows), done)."""
    is_eos = new == eos_id
    after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
    tokens = jnp.where(done[:, None] | after_eos, pad_id, new)
    units = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), new.shape[1])
    return tokens, jnp.where(done, 0, units), done | jnp.any(is_eos, axis=1)
