"""Self-distillation of the block-diffusion speech decoder: the one implementation (loss, teacher,
rounds) the trainer, the recipe and the sweeps use. One training example is one student forward
from a masked state of every block of the vectorised `[x_t ; x_0]` layout; the teacher goes on
from the same state, committing by the model's own sampler rule (`decode.sampling.commit`), and
the target for each position masked in x_t is the teacher's distribution at the step that
committed it. Loss = α · KL_τ(student ‖ target), averaged over those positions, + (1 − α) · CE to
x_0 over the same positions (`distill.alpha`, `distill.temperature`). Two allocations of the
teacher's steps (`distill.allocation`):

even (the paper, default): the state is whatever the run's masking (`TrainConfig.mask`, e.g.
hierarchical) drew; a frozen teacher reveals each block's R_1 masked tokens in K =
`distill.teacher_steps` iterations, n_j = ceil(R_j / (K − j + 1)) most confident at iteration j
(`even_counts`), so every target is set after K. One stage: the student, trained on the teacher's
K-iteration targets, decodes in 1–2 steps per block.

schedule (ours, SDTT): round r trains the student to do in S steps per block what the teacher
does in k·S (k = `distill.teacher_factor`, 2). Each block gets a state the S-step sampler visits
(after step j of S, n^S_j tokens masked, j uniform); the teacher runs the k steps of its k·S-step
sampler that cover the same stretch (n^S_j → n^S_{j+1}, `teacher_counts`); a position still masked
after them takes the last step's distribution (left for the student's next step). Matching the
teacher's k-step transition from every state the student visits makes each student step imitate
k teacher steps, so S student steps imitate the teacher's k·S (SDTT trains on such per-step
targets rather than whole rollouts; errors compound over S instead of k·S steps). With k = 1 the
target is the teacher's own one-step distribution: a student equal to its teacher has loss 0.
After a round the student becomes the teacher (`promote`) and S halves: 16 → 8 → 4 → 2 → 1
(`rounds`); a frozen teacher stays put within a round, an EMA teacher follows the student.

Everything is a function of plain pytrees (params, a batch dict) and explicit keys.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax

from mdm_jax.config.distill import DistillConfig
from mdm_jax.config.mask import MaskConfig
from mdm_jax.config.model import ModelConfig
from mdm_jax.decode.sampling import commit, speech_only
from mdm_jax.diffusion.ema import ema_update
from mdm_jax.diffusion.losses import mdm_loss
from mdm_jax.diffusion.packing import corrupt_examples
from mdm_jax.diffusion.schedules import step_schedule
from mdm_jax.model.denoiser import denoiser

# --- rounds ------------------------------------------------------------------------------------


def rounds(cfg: DistillConfig) -> tuple[int, ...]:
    """Student steps per block of each round: start, start/2, ..., 1 (16 → (16, 8, 4, 2, 1))."""
    start = cfg.start_denoise_steps
    return tuple(start >> i for i in range(start.bit_length()))


def start_for_rounds(n: int) -> int:
    """`start_denoise_steps` that gives `n` rounds ending at one step: 2^(n-1)."""
    return 2 ** (n - 1)


def round_at(cfg: DistillConfig, update: int) -> int:
    """The round optimizer update `update` belongs to; the last round (one step) lasts."""
    return min(update // cfg.round_updates, len(rounds(cfg)) - 1)


def student_steps(cfg: DistillConfig, round_: int) -> int:
    return rounds(cfg)[round_]


# --- the teacher -------------------------------------------------------------------------------


def promote(student):
    """The next round's teacher: a copy of the student (its own buffers, so the state may be donated)."""
    return jax.tree.map(jnp.copy, student)


def follow(teacher, student, cfg: DistillConfig):
    """The teacher after an optimizer update: an EMA teacher moves toward the student, a frozen one stays."""
    return ema_update(teacher, student, cfg.ema_decay) if cfg.teacher == "ema" else teacher


# --- the loss ----------------------------------------------------------------------------------


def distill_loss(student, teacher, batch, key, *, cfg: ModelConfig, distill: DistillConfig, mask: MaskConfig,
                 steps: int = 1):
    """α · KL_τ(student's one step ‖ teacher's targets) + (1 − α) · CE on every block of the batch.

    batch: as `denoiser`, speech length L a multiple of the block size. mask: the run's masking
    (even), or sampler_states whose S is set here to `steps`, the round's student steps (schedule).
    Returns (loss, metrics: kl, ce, accuracy, num_targets).
    """
    sd = cfg.speech_decoder
    if batch["units"].shape[1] % sd.block_size:
        raise ValueError(f"speech length {batch['units'].shape[1]} is not whole blocks of {sd.block_size}")
    schedule = distill.allocation == "schedule"
    if schedule and mask.strategy != "sampler_states":
        raise ValueError(f"distill.allocation=schedule needs mask.strategy=sampler_states, not {mask.strategy!r}")
    k_mask, k_step, k_teacher = jax.random.split(key, 3)
    units, valid = batch["units"], batch["speech_valid"]
    if schedule:  # the states the student's S-step sampler visits
        mask = dataclasses.replace(mask, schedule=cfg.sampler.schedule, denoise_steps=steps)
    noisy = corrupt_examples(k_mask, batch, mask, block_size=sd.block_size, mask_id=sd.mask_id)
    counts = (teacher_counts(k_step, noisy.is_target, valid, sd.block_size, steps, distill.teacher_factor * steps,
                             cfg.sampler.schedule) if schedule
              else even_counts(noisy.is_target, sd.block_size, distill.teacher_steps))
    logits_fn = denoiser(cfg, batch)
    target = lax.stop_gradient(teacher_rollout(lax.stop_gradient(teacher), logits_fn, noisy.tokens, noisy.is_target,
                                               counts, k_teacher, cfg))
    logits = speech_only(logits_fn(student, noisy.tokens), sd)
    on = noisy.is_target.astype(jnp.float32)
    kl = (reverse_kl(logits, target, distill.temperature) * on).sum() / jnp.maximum(1.0, on.sum())
    _, metrics = mdm_loss(logits, units, noisy, valid, elbo=False)  # ce: mean over the KL's positions, weight 1
    return distill.alpha * kl + (1.0 - distill.alpha) * metrics["ce"], dict(metrics, kl=kl)


def teacher_rollout(teacher, logits_fn, x_t, masked, counts, key, cfg: ModelConfig):
    """k sampler steps of the teacher from x_t (b, L), every block at once.

    masked: (b, L) positions to fill; counts: (k, b, blocks) masked tokens each block keeps after
    each step. Returns the target logits (b, L, V): each position's at the step that committed it,
    the last step's where it stays masked.
    """
    num_steps, sd = counts.shape[0], cfg.speech_decoder
    sampler = dataclasses.replace(cfg.sampler, threshold=0.0, early_exit=0.0)  # the teacher keeps its schedule's counts
    rows = lambda x: x.reshape(-1, sd.block_size, *x.shape[2:])  # b, L, ...) -> (b·blocks, B, ...

    def step(i, carry):
        tokens, masked, target = carry
        logits = speech_only(logits_fn(teacher, tokens), sd)
        count = rows(masked).sum(-1) - counts[i].reshape(-1)
        new, _, take = commit(rows(logits), rows(tokens), rows(masked), count, jax.random.fold_in(key, i), sampler)
        new, take = new.reshape(tokens.shape), take.reshape(tokens.shape)
        settled = take | (masked & (i == num_steps - 1))
        return new, masked & ~take, jnp.where(settled[..., None], logits, target)

    # built from x_t so that under shard_map the carry is varying over 'data' like the loop's output
    target = jnp.zeros_like(x_t, jnp.float32)[..., None].repeat(sd.output_vocab, -1)
    return lax.fori_loop(0, num_steps, step, (x_t, masked, target))[2]


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0):
    """KL(softmax(s / τ) ‖ softmax(t / τ)) (...) over the last axis, in float32."""
    # no τ² (Hinton): the paper's loss is α · KL_τ + (1 − α) · L_MDM as written, so α alone sets the balance
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_s) * (log_s - log_t), axis=-1)


def even_counts(masked, block_size: int, teacher_steps: int):
    """masked (b, L) -> (K, b, blocks) tokens each block keeps masked after each of K iterations.

    The paper's even allocation: from R_1 masked tokens, iteration j = 1..K reveals
    n_j = ceil(R_j / (K − j + 1)) and R_{j+1} = R_j − n_j, so R_{K+1} = 0.
    """
    left = rearrange(masked, "b (n s) -> b n s", s=block_size).sum(-1)
    after = []
    for j in range(teacher_steps):
        left = left - -(-left // (teacher_steps - j))  # minus ceil(R_j / (K − j + 1)), j 0-based here
        after.append(left)
    return jnp.stack(after)


def teacher_counts(key, masked, valid, block_size: int, steps: int, teacher_steps: int, schedule: str):
    """(k, b, blocks) tokens each block keeps masked after each teacher step.

    The student state of a block is step j of `steps` (its masked count says which, up to steps
    with equal counts: j given the count is uniform over them, drawn here). The teacher goes from
    n^S_j to n^S_{j+1} through the k·S schedule's n_{kj+1..kj+k-1}, clipped into that range
    (equal to them when the schedules nest, as linear ones do). A block with v < B valid tokens
    keeps ceil(n v / B), as in `sampler_states_mask`.
    """
    k = teacher_steps // steps
    coarse = jnp.asarray(step_schedule(block_size, steps, schedule))
    fine = jnp.asarray(step_schedule(block_size, teacher_steps, schedule))
    count = rearrange(masked, "b (n s) -> b n s", s=block_size).sum(-1)
    v = rearrange(valid, "b (n s) -> b n s", s=block_size).sum(-1)
    scaled = lambda n, v: -(-n * v // block_size)  # ceil(n v / B)
    same_count = scaled(coarse[:steps], v[..., None]) == count[..., None]  # (b, blocks, S)
    j = jnp.argmax(jnp.where(same_count, jax.random.uniform(key, same_count.shape), -1.0), axis=-1)
    i = jnp.arange(1, k + 1)[:, None, None]
    n = jnp.where(i == k, coarse[j + 1], jnp.clip(fine[k * j + i], coarse[j + 1], coarse[j]))
    return scaled(n, v)
