"""What each training stage minimises, as functions of plain pytrees and one shard of the batch.

    batch = prepare(batch, key, cfg)                      # global batch: noise and coin flips
    loss, metrics = loss_fn(trainable, teacher, shard, key, cfg=cfg)   # per shard, under shard_map

Model batch (what `train_data.model_batch` builds), leading axis b:
    mel (b, n_mels, frames) f32; text (b, L) int32 with SPEECH_PLACEHOLDER at the speech slots;
    text_valid, text_loss_mask (b, L) bool; units (b, U) int32 (EOS after the last unit, PAD after,
    U a multiple of the block size); speech_valid (b, U) bool.

Noise is drawn in `prepare`, on the global batch before it is split over 'data', so a sample's
masking never depends on the mesh. `mask.strategy=sampler_states_confidence` (model-in-the-loop)
draws only the levels and a tie-break there; the loss then masks, per block, the tokens the current
decoder is least sure of on the fully masked input: a per-sample function of the params, so it too
is the same on every mesh. Losses are normalised over the global batch: every per-shard
mean goes through `data_mean` inside the differentiated function (a local loss with grads
averaged afterwards gives grads times the 'data' size under shard_map(check_vma=True)). Every
objective reports the global count its loss averages over (`LOSS_TOKENS`) and each metric's own
count (`COUNTS`), so accumulated micro-batches of different lengths weigh as one batch would.
MTP, a sum of per-head means over different counts, rescales each head's term by the whole batch's
per-head counts (`prepare` records them) so that weighting by its first head's count is exact.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from mdm_jax.config.mask import CONFIDENCE_MASKING
from mdm_jax.config.train import TrainConfig
from mdm_jax.decode.sampling import speech_only
from mdm_jax.diffusion.attention_masks import Mask, autoregressive_mask, draw_streaming
from mdm_jax.diffusion.end_of_speech import fill_after_eos
from mdm_jax.diffusion.losses import mdm_loss, mtp_loss, packed_mtp_loss
from mdm_jax.diffusion.masking import Corruption, mask_least_confident, sampler_state_levels
from mdm_jax.diffusion.packing import corrupt_examples, packed_of, per_example
from mdm_jax.model import lora as lora_lib
from mdm_jax.model import vocab_parallel
from mdm_jax.model.denoiser import denoiser
from mdm_jax.model.sharding import BATCH, DATA
from mdm_jax.model.speech_decoder import SpeechDecoder
from mdm_jax.model.vocalnet import VocalNet
from mdm_jax.train import distill
from mdm_jax.train.optimizer import combine

# metric: the tokens (all data shards) the loss is a mean over; gradient accumulation weights micro-batches by it
LOSS_TOKENS = "loss_tokens"
# metric: {metric name: the global count it is a mean over} where that is not LOSS_TOKENS; the step pops it
COUNTS = "counts"
# batch leaf from `prepare` for MTP: (b, 1 + heads), every row the whole batch's target count per head
MTP_COUNTS = "mtp_counts"


def data_sum(x):
    """`x` summed over the batch's shards, 'data' x 'fsdp' (the identity outside shard_map)."""
    try:
        lax.axis_size(DATA)
    except NameError:
        return x
    return lax.psum(x, BATCH)


def data_same(x):
    """`x`, equal on every batch shard, typed as replicated (pmax over 'data' x 'fsdp'; the identity outside
    shard_map): a shard's copy of a whole-batch value, so check_vma lets it into a replicated loss."""
    try:
        lax.axis_size(DATA)
    except NameError:
        return x
    return lax.pmax(x, BATCH)


def data_mean(x, count):
    """Global mean from this shard's mean `x` over `count` items: psum(x·count) / psum(count) over 'data'.

    Exact when shards hold different counts; the identity when 'data' is unbound.
    """
    try:
        lax.axis_size(DATA)
    except NameError:
        return x
    count = count.astype(jnp.float32)
    return lax.psum(x * jnp.maximum(1.0, count), BATCH) / jnp.maximum(1.0, lax.psum(count, BATCH))


def prepare(batch: dict, key, cfg: TrainConfig) -> dict:
    """Adds the random inputs of the global batch: `streaming` (b,) (packed rows: (b, U / block), one per
    example); for MDM, the corruption (packed: each example its own draws); for MTP, the whole batch's
    counts per head (`MTP_COUNTS`). Block diffusion (MDM, distillation) with `mask.after_eos=eos` also
    fills the last block with EOS."""
    k_stream, k_mask = jax.random.split(key)
    sd, packed = cfg.model.speech_decoder, packed_of(batch)
    b = batch["units" if "units" in batch else "text"].shape[0]
    examples = 1 if packed is None else batch["units"].shape[1] // sd.block_size  # per row
    streaming = draw_streaming(k_stream, b * examples, cfg.stage.streaming_prob)
    batch = dict(batch, streaming=streaming if packed is None else streaming.reshape(b, examples))
    if cfg.stage.name == "speech" and cfg.stage.objective == "mtp":  # head k predicts units from index k on
        index = jnp.arange(batch["units"].shape[1]) if packed is None else packed.speech_index
        counts = jnp.stack([(batch["speech_valid"] & (index >= k)).sum() for k in range(1 + sd.mtp_modules)])
        batch[MTP_COUNTS] = jnp.broadcast_to(counts, (b, *counts.shape))
    mdm = cfg.stage.name == "speech" and cfg.stage.objective == "mdm"
    if (mdm or cfg.stage.name == "distill") and cfg.mask.after_eos == "eos":
        fill = functools.partial(fill_after_eos, block_size=sd.block_size, eos_id=sd.eos_id)
        fill = fill if packed is None else per_example(fill, packed, sd.block_size)
        units, valid = fill(batch["units"], batch["speech_valid"])
        batch.update(units=units, speech_valid=valid)
    if not mdm:
        return batch
    if cfg.mask.strategy == CONFIDENCE_MASKING:  # the tokens are chosen in the loss, from the decoder's scores
        count, tiebreak = sampler_state_levels(k_mask, batch["speech_valid"], cfg.mask, block_size=sd.block_size)
        batch.update(noisy_count=count, noisy_tiebreak=tiebreak)  # (b, blocks) int32, (b, U) float32: per block
    else:
        noisy = corrupt_examples(k_mask, batch, cfg.mask, block_size=sd.block_size, mask_id=sd.mask_id)
        batch.update(noisy_tokens=noisy.tokens, noisy_target=noisy.is_target, noisy_weight=noisy.weight)
    return batch


def loss_fn(trained, frozen, teacher, batch, key, *, cfg: TrainConfig, distill_steps: int = 0):
    """trained, frozen: the two parts of {'params', 'lora'} (`optimizer.partition`); teacher:
    speech-decoder params (distill) or {} -> (loss, metrics)."""
    trainable = combine(trained, frozen)
    params = lora_lib.merge(trainable["params"], trainable["lora"], cfg.stage.lora_alpha / cfg.stage.lora_rank)
    if cfg.stage.name == "text":
        return text_objective(params, batch, cfg)
    speech_batch = batch if "text_hidden" in batch else speech_inputs(params, batch, cfg)  # cached LLM states
    if cfg.stage.name == "distill":
        return distill_objective(params["speech_decoder"], teacher, speech_batch, key, cfg, distill_steps)
    return speech_objective(params["speech_decoder"], speech_batch, cfg)


def llm_states(params, batch, cfg: TrainConfig):
    """LLM over the prompt with the speech spliced in -> (logits (b, L, V / tp), hidden (b, L, d))."""
    model = VocalNet(cfg.model)
    if "encoded" in batch:  # the frozen encoder's frames, cached (`mdm_jax.train.encoder_cache`)
        speech = model.apply({"params": params}, batch["encoded"], method=VocalNet.adapt)
    else:
        speech = model.apply({"params": params}, batch["mel"], method=VocalNet.encode_speech)
    packed = {}
    if "text_segments" in batch:  # packed dialogues: positions and causality within each
        segments = batch["text_segments"]
        packed = dict(positions=batch["text_index"], mask=Mask.causal(*segments.shape, segments))
    logits, hidden, _ = model.apply({"params": params}, batch["text"], speech, method=VocalNet.llm_forward, **packed)
    return logits, hidden


def text_objective(params, batch, cfg: TrainConfig):
    """Stage I: next-token CE on the answer (vocab-parallel), mean over the global answer tokens."""
    logits, _ = llm_states(params, batch, cfg)
    labels = jnp.maximum(batch["text"][:, 1:], 0)  # placeholders are never targets
    weight = (batch["text_loss_mask"] & batch["text_valid"])[:, 1:]
    if "text_segments" in batch:  # packed: never predict the next dialogue's first token
        weight = weight & (batch["text_segments"][:, 1:] == batch["text_segments"][:, :-1])
    weight = weight.astype(jnp.float32)
    ce, correct = vocab_parallel.cross_entropy(logits[:, :-1], labels)
    n = weight.sum()
    mean = lambda x: data_mean((x * weight).sum() / jnp.maximum(1.0, n), n)
    loss = mean(ce)
    return loss, {"text/ce": loss, "text/accuracy": mean(correct.astype(jnp.float32)), LOSS_TOKENS: data_sum(n)}


def speech_inputs(params, batch, cfg: TrainConfig) -> dict:
    """The speech decoder's inputs: the LLM's answer states (no gradient), left-aligned, and the units."""
    _, hidden = llm_states(params, batch, cfg)
    answer = batch["text_loss_mask"] & batch["text_valid"]
    order = jnp.argsort(~answer, axis=1, stable=True)  # answer positions first, in order
    return {
        "text_hidden": lax.stop_gradient(jnp.take_along_axis(hidden, order[..., None], axis=1)),
        "text_valid": jnp.take_along_axis(answer, order, axis=1),
        "streaming": batch["streaming"],
        "units": batch["units"],
        "speech_valid": batch["speech_valid"],
        **{k: v for k, v in batch.items() if k.startswith("noisy_") or k == MTP_COUNTS},
    }


def speech_objective(params, batch, cfg: TrainConfig):
    """Stage II on the speech decoder: MDM ([x_t ; x_0] in one pass), AR or MTP."""
    sd, objective = cfg.model.speech_decoder, cfg.stage.objective
    units, valid = batch["units"], batch["speech_valid"]
    if objective == "mdm":
        denoise = denoiser(cfg.model, batch)
        noisy = (confidence_corruption(params, denoise, batch, cfg) if "noisy_count" in batch
                 else Corruption(batch["noisy_tokens"], batch["noisy_target"], batch["noisy_weight"]))
        logits = denoise(params, noisy.tokens)
        loss, m = mdm_loss(logits, units, noisy, valid, elbo=cfg.mask.elbo)
        n = valid.sum() if cfg.mask.elbo else m["num_targets"]
        loss = data_mean(loss, n)
        targets = data_sum(m["num_targets"])
        return loss, {"mdm/loss": loss, "mdm/accuracy": data_mean(m["accuracy"], m["num_targets"]),
                      "mdm/ce": data_mean(m["ce"], m["num_targets"]), LOSS_TOKENS: data_sum(n),
                      COUNTS: {"mdm/accuracy": targets, "mdm/ce": targets}}

    b, packed = units.shape[0], packed_of(batch)
    sos = 1 if packed is None else units.shape[1] // sd.block_size  # SOS slots: one per possible example
    tokens = jnp.concatenate([jnp.full((b, sos), sd.sos_id, units.dtype), units], axis=1)
    index = jnp.arange(units.shape[1]) if packed is None else packed.speech_index  # each unit's within its example
    text_slots = sd.prefix_text(batch["text_valid"]).shape[1]
    mask, positions = autoregressive_mask(sd.prefix_text(batch["text_valid"]), valid, batch["streaming"],
                                          chunk_size=sd.block_size, text_per_chunk=sd.text_per_block,
                                          speech_offset=sd.speech_position_offset,
                                          packed=None if packed is None else packed.prefix(text_slots))
    heads = sd.mtp_modules if objective == "mtp" else 0
    decoder = SpeechDecoder(dataclasses.replace(sd, mtp_modules=heads), jnp.dtype(cfg.model.dtype), cfg.model.execution)
    anchor_slots = None if packed is None else (  # the unit each token predicts: SOS unit 0, unit j unit j + 1
        jnp.concatenate([jnp.broadcast_to(jnp.arange(1, sos + 1), (b, sos)), packed.speech_segments], axis=1),
        jnp.concatenate([jnp.zeros((b, sos), jnp.int32), packed.speech_index + 1], axis=1))
    logits, mtp_logits, _ = decoder.apply({"params": params}, batch["text_hidden"], tokens, mask, positions,
                                          batch["text_valid"], packed, anchor_slots)
    if packed is None:
        tokens_valid = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
        _, m = mtp_loss([logits, *mtp_logits], tokens, tokens_valid, decay=cfg.stage.mtp_decay)
    else:
        _, m = packed_mtp_loss([logits, *mtp_logits], units, valid, packed.speech_segments, index,
                               decay=cfg.stage.mtp_decay)
    if objective == "ar":
        n = valid.sum()
        loss = data_mean(m["ce_0"], n)
        return loss, {"ar/loss": loss, "ar/accuracy": data_mean(m["accuracy_0"], n), LOSS_TOKENS: data_sum(n)}
    whole = data_same(batch[MTP_COUNTS][0]).astype(jnp.float32)  # (1 + heads,) every micro-batch and shard
    first = data_sum(valid.sum()).astype(jnp.float32)
    metrics, counts, loss = {}, {}, 0.0
    for k in range(1 + heads):  # each head is a mean over its own targets: combine shards per head
        n = (valid & (index >= k)).sum()
        metrics[f"mtp/ce_{k}"] = data_mean(m[f"ce_{k}"], n)
        metrics[f"mtp/accuracy_{k}"] = data_mean(m[f"accuracy_{k}"], n)
        counts[f"mtp/ce_{k}"] = counts[f"mtp/accuracy_{k}"] = n = data_sum(n)
        # head k's share of the whole batch's head-k mean, over the step's weight first / whole[0]
        share = (n / jnp.maximum(1.0, whole[k])) * (whole[0] / jnp.maximum(1.0, first))
        loss = loss + cfg.stage.mtp_decay**k * share * metrics[f"mtp/ce_{k}"]
    return loss, {"mtp/loss": loss, **metrics, LOSS_TOKENS: first, COUNTS: counts}


def confidence_corruption(params, denoise, batch, cfg: TrainConfig) -> Corruption:
    """`sampler_states_confidence`: each block keeps its drawn count masked, the tokens with the lowest
    max speech probability of the decoder (no gradient) with every valid token masked: the order in
    which the sampler would leave them masked from a block's first step."""
    units, valid, sd = batch["units"], batch["speech_valid"], cfg.model.speech_decoder
    logits = denoise(lax.stop_gradient(params), jnp.where(valid, sd.mask_id, units))  # (b, U, V)
    scores = jax.nn.softmax(speech_only(logits.astype(jnp.float32), sd), axis=-1).max(-1)  # (b, U)
    return mask_least_confident(units, valid, batch["noisy_count"], scores, batch["noisy_tiebreak"], cfg.mask,
                                block_size=sd.block_size, mask_id=sd.mask_id)


def distill_objective(student, teacher, batch, key, cfg: TrainConfig, steps: int):
    """The self-distillation loss (`cfg.distill`: even allocation from `cfg.mask`'s states, or the
    schedule round's `steps`), noise drawn per data shard."""
    try:
        key = jax.random.fold_in(key, lax.axis_index(BATCH))
    except NameError:
        pass
    loss, m = distill.distill_loss(student, teacher, batch, key, cfg=cfg.model, distill=cfg.distill, mask=cfg.mask,
                                   steps=steps)
    n = m["num_targets"]
    loss = data_mean(loss, n)
    return loss, {"distill/loss": loss, "distill/kl": data_mean(m["kl"], n), "distill/ce": data_mean(m["ce"], n),
                  "distill/accuracy": data_mean(m["accuracy"], n), "distill/steps": jnp.float32(steps),
                  LOSS_TOKENS: data_sum(n)}
