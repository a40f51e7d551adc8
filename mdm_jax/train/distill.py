"""Iterative self-distillation through time (SDTT) for the block-diffusion speech decoder: the one
implementation (loss, teacher, rounds) the trainer, the recipe and the sweeps use.

Round r: the student learns to do in S steps per block what the teacher does in k·S (k =
`distill.teacher_factor`, 2). One training example is one sampler step. Each block of the
vectorised `[x_t ; x_0]` layout gets a state the S-step sampler visits (after step j of S, n^S_j
tokens masked, j uniform); from it the student makes one forward, the teacher runs the k steps of
its k·S-step sampler that cover the same stretch (n^S_j → n^S_{j+1} masked; midpoints from the
k·S schedule), committing by the model's own sampler rule (`decode.sampling.commit`). The target
for each position masked in x_t is the teacher's distribution at the step that committed it, or
at its last step if it is still masked (left for the student's next step). Loss = reverse
KL(student ‖ target), averaged over those positions, + lam_ce · CE to x_0.

Why this is "teacher k·S steps, student S steps": the S-step sampler is S applications of one
step, each from a state of the schedule. Matching the teacher's k-step transition from every
state the student visits (j uniform, every block at once) makes each student step imitate k
teacher steps, so S student steps imitate the teacher's k·S (SDTT trains exactly on such
per-step targets rather than on whole rollouts; errors compound over S instead of k·S steps).
With k = 1 the target is the teacher's own one-step distribution: a student equal to its teacher
has loss 0. After a round the student becomes the teacher (`promote`) and S halves: 16 → 8 → 4 →
2 → 1 (`rounds`); a frozen teacher stays put within a round, an EMA teacher follows the student.

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
from mdm_jax.diffusion.masking import sampler_states_mask
from mdm_jax.diffusion.schedules import step_schedule
from mdm_jax.train.denoiser import denoiser

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


def distill_loss(student, teacher, batch, key, *, cfg: ModelConfig, distill: DistillConfig, steps: int,
                 teacher_steps: int | None = None):
    """Reverse KL(student's one step ‖ teacher's k steps) on every block of the batch, k =
    teacher_steps / steps (default distill.teacher_factor). batch: as `denoiser`, speech length L
    a multiple of the block size. Returns (loss, metrics: kl, ce, accuracy, num_targets)."""
    sd = cfg.speech_decoder
    teacher_steps = distill.teacher_factor * steps if teacher_steps is None else teacher_steps
    if teacher_steps % steps:
        raise ValueError(f"teacher steps {teacher_steps} must be a multiple of student steps {steps}")
    if batch["units"].shape[1] % sd.block_size:
        raise ValueError(f"speech length {batch['units'].shape[1]} is not whole blocks of {sd.block_size}")
    k_mask, k_step, k_teacher = jax.random.split(key, 3)
    units, valid = batch["units"], batch["speech_valid"]
    mask_cfg = MaskConfig(elbo=False, schedule=cfg.sampler.schedule, denoise_steps=steps)
    noisy = sampler_states_mask(k_mask, units, valid, mask_cfg, block_size=sd.block_size, mask_id=sd.mask_id)
    counts = teacher_counts(k_step, noisy.is_target, valid, sd.block_size, steps, teacher_steps, cfg.sampler.schedule)
    logits_fn = denoiser(cfg, batch)
    target = lax.stop_gradient(teacher_rollout(lax.stop_gradient(teacher), logits_fn, noisy.tokens, noisy.is_target,
                                               counts, k_teacher, cfg))
    logits = speech_only(logits_fn(student, noisy.tokens), sd)
    on = noisy.is_target.astype(jnp.float32)
    kl = (reverse_kl(logits, target) * on).sum() / jnp.maximum(1.0, on.sum())
    ce, metrics = mdm_loss(logits, units, noisy, valid, elbo=False)  # weight 1: mean CE over targets
    return kl + distill.lam_ce * ce, dict(metrics, kl=kl)


def teacher_rollout(teacher, logits_fn, x_t, masked, counts, key, cfg: ModelConfig):
    """k sampler steps of the teacher from x_t (b, L), every block at once.

    masked: (b, L) positions to fill; counts: (k, b, blocks) masked tokens each block keeps after
    each step. Returns the target logits (b, L, V): each position's at the step that committed it,
    the last step's where it stays masked.
    """
    num_steps, sd = counts.shape[0], cfg.speech_decoder
    sampler = dataclasses.replace(cfg.sampler, threshold=0.0)  # the teacher follows its schedule's counts
    rows = lambda x: x.reshape(-1, sd.block_size, *x.shape[2:])  # noqa: E731  (b, L, ...) -> (b·blocks, B, ...)

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


def reverse_kl(student_logits, teacher_logits):
    """KL(p_student ‖ p_teacher) (...) over the last axis, in float32."""
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(log_s) * (log_s - log_t), axis=-1)


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
    scaled = lambda n, v: -(-n * v // block_size)  # noqa: E731  ceil(n v / B)
    same_count = scaled(coarse[:steps], v[..., None]) == count[..., None]  # (b, blocks, S)
    j = jnp.argmax(jnp.where(same_count, jax.random.uniform(key, same_count.shape), -1.0), axis=-1)
    i = jnp.arange(1, k + 1)[:, None, None]
    n = jnp.where(i == k, coarse[j + 1], jnp.clip(fine[k * j + i], coarse[j + 1], coarse[j]))
    return scaled(n, v)
