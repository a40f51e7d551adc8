"""Where a Talker's errors are: numbers that explain a gap between Talkers rather than just measure it.

- `accuracy_by_position`: position-aligned agreement with the reference units by position inside the
  block (the anchor Talker's first Q positions carry the text, the rest read it through attention)
  and by block index;
- `loss_by_mask_ratio`: the denoiser's CE and accuracy on blocks with a given fraction masked, down
  to fully masked blocks (the state every block starts from, and all a 1-step sampler ever sees),
  with EOS targets counted apart;
- `length_errors`: how a Talker's lengths miss (too long, too short, never ending within the blocks
  decoded);
- `frequency_bias`: whether the decoded units over-use the corpus's frequent units (the bias of
  parallel commits that prior-calibrated confidence counters);
- `block_mask_shares`: which noise levels a masking strategy trains blocks on (how often a block is
  fully masked, as every block is at a sampler's first step).

Each figure that is a ratio of per-dialogue counts comes as `intervals.Counts`, so it gets a 95 %
interval like every other figure.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.config.mask import MaskConfig
from mdm_jax.config.model import ModelConfig
from mdm_jax.decode.sampling import speech_only
from mdm_jax.diffusion.losses import cross_entropy
from mdm_jax.diffusion.masking import mask_least_confident
from mdm_jax.eval.intervals import Counts
from mdm_jax.model.denoiser import denoiser


def accuracy_by_position(generated: Sequence[np.ndarray], references: Sequence[np.ndarray], *, block_size: int,
                         anchors: int) -> dict:
    """Agreement with the reference units (a missing position counts as wrong, as `unit_accuracy`):
    'position' (per position inside a block: Counts over dialogues), 'anchor' / 'rest' (positions < /
    >= `anchors` inside their block) and 'block' (per block index)."""
    blocks = max(-(-len(r) // block_size) for r in references)
    pos = np.zeros((len(references), block_size, 2))
    blk = np.zeros((len(references), blocks, 2))
    for i, (g, r) in enumerate(zip(generated, references, strict=True)):
        g, r = np.asarray(g), np.asarray(r)
        right = np.zeros(len(r), bool)
        n = min(len(g), len(r))
        right[:n] = g[:n] == r[:n]
        where = np.arange(len(r))
        np.add.at(pos[i], (where % block_size, 0), right)
        np.add.at(pos[i], (where % block_size, 1), 1)
        np.add.at(blk[i], (where // block_size, 0), right)
        np.add.at(blk[i], (where // block_size, 1), 1)
    counts = lambda a: Counts(a[..., 0][None], a[..., 1][None])  # (dialogues, 2) -> Counts
    return {"position": [counts(pos[:, j]) for j in range(block_size)],
            "anchor": counts(pos[:, :anchors].sum(1)), "rest": counts(pos[:, anchors:].sum(1)),
            "block": [counts(blk[:, c]) for c in range(blocks)]}


def length_errors(generated: Sequence[np.ndarray], references: Sequence[np.ndarray], *, max_units: int) -> dict:
    """Per-dialogue length misses: mean generated - reference units, the fractions too long / too
    short / exact, and 'unended' (ran to `max_units`: no EOS in any block decoded)."""
    diff = np.array([len(g) - len(r) for g, r in zip(generated, references, strict=True)])
    unended = np.array([len(g) >= max_units for g in generated])
    return {"mean_excess": float(diff.mean()), "longer": float((diff > 0).mean()), "shorter": float((diff < 0).mean()),
            "exact": float((diff == 0).mean()), "unended": float(unended.mean()),
            "excess_when_longer": float(diff[diff > 0].mean()) if (diff > 0).any() else 0.0}


def frequency_bias(generated: Sequence[np.ndarray], references: Sequence[np.ndarray], *, frequencies: np.ndarray,
                   top: int = 32) -> dict:
    """Use of the `top` most frequent units (by `frequencies`, e.g. training counts) in the decoded
    units against the references: 'generated_share' / 'reference_share' of positions holding one,
    their ratio (> 1: frequent units over-used), the share of wrong positions where a frequent unit
    replaced another, and the share of positions repeating the previous unit in each."""
    frequent = np.zeros(len(frequencies), bool)
    frequent[np.argsort(-frequencies)[:top]] = True
    gen, ref = np.concatenate([np.asarray(g) for g in generated]), np.concatenate([np.asarray(r) for r in references])
    in_range = lambda u: u[(u >= 0) & (u < len(frequencies))]  # EOS/PAD never appear; be safe
    share = lambda u: float(frequent[in_range(u)].mean()) if len(in_range(u)) else 0.0
    wrong, swapped = 0, 0
    for g, r in zip(generated, references, strict=True):
        n = min(len(g), len(r))
        g, r = np.asarray(g[:n]), np.asarray(r[:n])
        miss = (g != r) & (g < len(frequencies)) & (r < len(frequencies))
        wrong += int(miss.sum())
        swapped += int((miss & frequent[np.minimum(g, len(frequencies) - 1)] & ~frequent[r % len(frequencies)]).sum())
    repeats = lambda seqs: float(np.mean(np.concatenate([np.asarray(s)[1:] == np.asarray(s)[:-1]
                                                          for s in seqs if len(s) > 1] or [np.zeros(1, bool)])))
    g_share, r_share = share(gen), share(ref)
    return {"top": top, "generated_share": g_share, "reference_share": r_share,
            "over_use": g_share / r_share if r_share else float("nan"),
            "frequent_for_rare": swapped / wrong if wrong else 0.0,
            "generated_repeats": repeats(generated), "reference_repeats": repeats(references)}


def block_mask_shares(is_target, valid, *, block_size: int, bins: int = 10) -> dict:
    """How a masking strategy noises blocks: is_target, valid (b, L) -> over blocks holding a valid
    token: 'fully_masked' (share of blocks with every valid token masked: the state a sampler's first
    step sees), 'clean' (none masked: no loss from that block), 'mean' masked fraction, and
    'histogram' of the masked fraction in `bins` equal bins of [0, 1] (numpy's; clean blocks left out)."""
    v = np.asarray(valid).reshape(valid.shape[0], -1, block_size).sum(-1)
    m = np.asarray(is_target).reshape(valid.shape[0], -1, block_size).sum(-1)
    fraction = (m / np.maximum(v, 1))[v > 0]
    noised = fraction[fraction > 0]
    histogram = np.histogram(noised, bins=bins, range=(0.0, 1.0))[0] if len(noised) else np.zeros(bins, int)
    return {"fully_masked": float((fraction == 1).mean()), "clean": float((fraction == 0).mean()),
            "mean": float(fraction.mean()), "histogram": (histogram / max(len(fraction), 1)).tolist()}


def loss_by_mask_ratio(params, cfg: ModelConfig, hiddens: Sequence[np.ndarray], units: Sequence[np.ndarray],
                       ratios: Sequence[float], key, *, draws: int = 4) -> dict:
    """The denoiser ([x_t ; x_0], the training forward, streaming mask) on every block of every answer
    with ceil(ratio · v) of its v valid tokens masked (uniformly; EOS is a target like any unit), for
    each ratio; `draws` masks per ratio. -> {ratio: {'ce', 'accuracy', 'eos_accuracy', 'count'}}: mean
    CE and argmax accuracy over the masked tokens, accuracy on masked EOS targets alone."""
    sd = cfg.speech_decoder
    batch = _answers_batch(hiddens, units, sd)
    out = {}
    for ratio in ratios:
        totals = np.zeros(5)  # ce sum, right, count, eos right, eos count
        for d in range(draws):
            totals += np.asarray(_masked_stats(params, batch, jax.random.fold_in(key, d), jnp.float32(ratio), cfg=cfg))
        ce, right, count, eos_right, eos_count = totals
        out[float(ratio)] = {"ce": ce / max(count, 1), "accuracy": right / max(count, 1),
                             "eos_accuracy": eos_right / max(eos_count, 1), "count": int(count)}
    return out


def end_of_speech(params, cfg: ModelConfig, hiddens: Sequence[np.ndarray], units: Sequence[np.ndarray]) -> dict:
    """Where the denoiser says speech ends in a fully masked last block (earlier blocks clean), with two
    views of that block's keys: 'pad' drops those after EOS (what `mask.after_eos=pad` trains on),
    'sampler' keeps every one (what sampling, and `eos` training, see). -> {view: {'eos_accuracy' (EOS
    predicted at the true end), 'early' / 'late' / 'none' (shares of answers whose first EOS predicted
    in that block comes before or after the true end, or nowhere)}}. A Talker right in the 'pad' view
    and wrong in the sampler's reads the length off the keys: a leak sampling does not have."""
    sd = cfg.speech_decoder
    batch = _answers_batch(hiddens, units, sd)
    n = batch["speech_valid"].sum(1)  # units + EOS
    start = (n - 1) // sd.block_size * sd.block_size
    position = jnp.arange(batch["units"].shape[1])[None]
    last = (position >= start[:, None]) & (position < start[:, None] + sd.block_size)
    x_t = jnp.where(last, sd.mask_id, batch["units"])
    end = np.asarray(n - 1)
    out = {}
    for view, valid in (("pad", batch["speech_valid"]), ("sampler", batch["speech_valid"] | last)):
        logits = denoiser(cfg, dict(batch, speech_valid=valid))(params, x_t)
        says = np.asarray((jnp.argmax(speech_only(logits.astype(jnp.float32), sd), -1) == sd.eos_id) & last)
        first = np.where(says.any(1), says.argmax(1), -1)
        out[view] = {"eos_accuracy": float(says[np.arange(len(end)), end].mean()),
                     "early": float(((first >= 0) & (first < end)).mean()), "late": float((first > end).mean()),
                     "none": float((first < 0).mean())}
    return out


def _answers_batch(hiddens, units, sd) -> dict:
    """Reference answers as a speech-objective batch: text states, units + EOS padded to whole blocks."""
    b, t = len(hiddens), max(len(h) for h in hiddens)
    length = -(-(max(len(u) for u in units) + 1) // sd.block_size) * sd.block_size
    batch = {"text_hidden": np.zeros((b, t, hiddens[0].shape[-1]), np.float32), "text_valid": np.zeros((b, t), bool),
             "units": np.full((b, length), sd.pad_id, np.int32), "speech_valid": np.zeros((b, length), bool),
             "streaming": np.ones(b, bool)}
    for i, (h, u) in enumerate(zip(hiddens, units, strict=True)):
        batch["text_hidden"][i, :len(h)], batch["text_valid"][i, :len(h)] = h, True
        batch["units"][i, :len(u)], batch["units"][i, len(u)] = u, sd.eos_id
        batch["speech_valid"][i, :len(u) + 1] = True
    return jax.tree.map(jnp.asarray, batch)


@functools.partial(jax.jit, static_argnames="cfg")
def _masked_stats(params, batch, key, ratio, *, cfg: ModelConfig):
    sd = cfg.speech_decoder
    valid = batch["speech_valid"]
    v = valid.reshape(valid.shape[0], -1, sd.block_size).sum(-1)
    count = jnp.where(v > 0, jnp.maximum(1, jnp.ceil(ratio * v)), 0).astype(jnp.int32)
    tiebreak = jax.random.uniform(key, valid.shape)
    noisy = mask_least_confident(batch["units"], valid, count, tiebreak, tiebreak, MaskConfig(elbo=False),
                                 block_size=sd.block_size, mask_id=sd.mask_id)
    logits = speech_only(denoiser(cfg, batch)(params, noisy.tokens).astype(jnp.float32), sd)
    target, units = noisy.is_target, batch["units"]
    right = (jnp.argmax(logits, -1) == units) & target
    eos = target & (units == sd.eos_id)
    return jnp.stack([(cross_entropy(logits, units) * target).sum(), right.sum(), target.sum(),
                      (right & eos).sum(), eos.sum()]).astype(jnp.float32)
