"""Iterative self-distillation through time (SDTT) for the block-diffusion speech decoder.

Round r: the student learns to do in S steps per block what the teacher does in k·S (k = 2).
One training example is one sampler step. Each block of the vectorised `[x_t ; x_0]` layout gets
a state the S-step sampler visits (after step j of S, n^S_j tokens masked, j uniform); from it
the student makes one forward, the teacher runs the k steps of its k·S-step sampler that cover
the same stretch (n^S_j → n^S_{j+1} masked; midpoints from the k·S schedule), committing by
confidence exactly as `block_diffusion.generate` does. The target for each position masked in
x_t is the teacher's distribution at the step that committed it, or at its last step if it is
still masked (left for the student's next step). Loss = reverse KL(student ‖ target), averaged
over those positions, + lam_ce · CE to x_0.

Why this is "teacher k·S steps, student S steps": the S-step sampler is S applications of one
step, each from a state of the schedule. Matching the teacher's k-step transition from every
state the student visits (j uniform, every block at once) makes each student step imitate k
teacher steps, so S student steps imitate the teacher's k·S (SDTT trains exactly on such
per-step targets rather than on whole rollouts; errors compound over S instead of k·S steps).
With k = 1 the target is the teacher's own one-step distribution: a student equal to its teacher
has loss 0. After a round the student becomes the teacher and S halves: 16 → 8 → 4 → 2 → 1.

Everything is a function of plain pytrees (params, a batch dict) and explicit keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import struct
from jax import lax

from mdm_jax.config.model import SpeechDecoderConfig
from mdm_jax.decode.sampling import TokenSampling, confidence, propose, speech_only, take_most_confident
from mdm_jax.diffusion.attention_masks import block_diffusion_mask
from mdm_jax.diffusion.ema import ema_update
from mdm_jax.diffusion.losses import mdm_loss
from mdm_jax.diffusion.masking import MaskConfig, hierarchical_mask
from mdm_jax.diffusion.schedules import step_schedule
from mdm_jax.model.speech_decoder import SpeechDecoder

TEACHERS = ("frozen", "ema")


def halving(start_steps: int) -> tuple[int, ...]:
    """Student steps per round: start, start/2, ..., 1 (16 → (16, 8, 4, 2, 1))."""
    return tuple(start_steps >> i for i in range(start_steps.bit_length()))


@dataclass(frozen=True)
class DistillConfig:
    rounds: tuple[int, ...] = halving(16)  # student steps S per block, one entry per round
    teacher_factor: int = 2  # teacher steps per student step (SDTT: 2)
    steps_per_round: int = 10_000  # optimizer updates per round
    lam_ce: float = 0.0  # weight of the CE to x_0 added to the KL
    teacher: str = "frozen"  # frozen: the params the round started from; ema: an EMA of the student
    ema_decay: float = 0.999
    # The teacher's commit rule, as in BlockDiffusionConfig (threshold decoding has no fixed steps).
    schedule: str = "linear"
    confidence: str = "max_prob"
    sampling: TokenSampling = field(default_factory=TokenSampling)

    def __post_init__(self):
        if self.teacher not in TEACHERS:
            raise ValueError(f"unknown teacher {self.teacher!r}; expected one of {TEACHERS}")


@struct.dataclass
class DistillState:
    """Student and teacher params pytrees; `round` is static, so each round compiles its own step."""

    student: Any
    teacher: Any
    round: int = struct.field(pytree_node=False, default=0)


def start(params) -> DistillState:
    """Round 0: the teacher is a copy of the params (its own buffers, so the student may be donated)."""
    return DistillState(student=params, teacher=jax.tree.map(jnp.copy, params))


def after_update(state: DistillState, student, cfg: DistillConfig) -> DistillState:
    """After an optimizer step: the new student; an EMA teacher follows it, a frozen one stays."""
    teacher = ema_update(state.teacher, student, cfg.ema_decay) if cfg.teacher == "ema" else state.teacher
    return state.replace(student=student, teacher=teacher)


def next_round(state: DistillState) -> DistillState:
    """teacher ← student; the caller's next steps use cfg.rounds[state.round] (S halves)."""
    return state.replace(teacher=jax.tree.map(jnp.copy, state.student), round=state.round + 1)


def denoiser(model_cfg: SpeechDecoderConfig, batch, dtype=jnp.float32):
    """The decoder over the vectorised layout `[BOS][text][SOS][x_t][x_0]` with x_0 = batch units:
    returns f(params, x_t (b, L)) -> logits (b, L, V) at the x_t positions (no MTP modules).

    batch: text_hidden (b, T, d), text_valid (b, T), streaming (b,), units, speech_valid (b, L).
    """
    units = batch["units"]
    b, length = units.shape
    mask, positions = block_diffusion_mask(batch["text_valid"], batch["speech_valid"], batch["streaming"],
                                           block_size=model_cfg.block_size, text_per_block=model_cfg.text_per_block,
                                           speech_offset=model_cfg.speech_position_offset)
    sos = jnp.full((b, 1), model_cfg.sos_id, units.dtype)

    def run(module: SpeechDecoder, x_t):
        speech = module.embed_tokens(jnp.concatenate([sos, x_t, units], axis=1))
        h, _ = module.backbone(jnp.concatenate([module.prefix(batch["text_hidden"]), speech], axis=1), positions, mask)
        return module.logits(h[:, -2 * length : -length])

    return lambda params, x_t: SpeechDecoder(model_cfg, dtype).apply({"params": params}, x_t, method=run)


def distill_loss(student, teacher, batch, key, *, model_cfg: SpeechDecoderConfig, cfg: DistillConfig, steps: int,
                 teacher_steps: int | None = None, dtype=jnp.float32):
    """Reverse KL(student's one step ‖ teacher's k steps) on every block of the batch, k =
    teacher_steps / steps (default cfg.teacher_factor). batch: as `denoiser`, speech length L a
    multiple of the block size. Returns (loss, metrics: kl, ce, accuracy, num_targets)."""
    teacher_steps = cfg.teacher_factor * steps if teacher_steps is None else teacher_steps
    if teacher_steps % steps:
        raise ValueError(f"teacher steps {teacher_steps} must be a multiple of student steps {steps}")
    if batch["units"].shape[1] % model_cfg.block_size:
        raise ValueError(f"speech length {batch['units'].shape[1]} is not whole blocks of {model_cfg.block_size}")
    k_mask, k_step, k_teacher = jax.random.split(key, 3)
    units, valid = batch["units"], batch["speech_valid"]
    mask_cfg = MaskConfig(model_cfg.mask_id, block_size=model_cfg.block_size, elbo=False, schedule=cfg.schedule,
                          num_steps=steps)
    noisy = hierarchical_mask(k_mask, units, valid, mask_cfg)
    counts = teacher_counts(k_step, noisy.is_target, valid, model_cfg.block_size, steps, teacher_steps, cfg.schedule)
    logits_fn = denoiser(model_cfg, batch, dtype)
    target = lax.stop_gradient(teacher_rollout(lax.stop_gradient(teacher), logits_fn, noisy.tokens, noisy.is_target,
                                               counts, k_teacher, model_cfg, cfg))
    logits = speech_only(logits_fn(student, noisy.tokens), model_cfg)
    on = noisy.is_target.astype(jnp.float32)
    kl = (reverse_kl(logits, target) * on).sum() / jnp.maximum(1.0, on.sum())
    ce, metrics = mdm_loss(logits, units, noisy, valid, elbo=False)  # weight 1: mean CE over targets
    return kl + cfg.lam_ce * ce, dict(metrics, kl=kl)


def teacher_rollout(teacher, logits_fn, x_t, masked, counts, key, model_cfg: SpeechDecoderConfig,
                    cfg: DistillConfig):
    """k sampler steps of the teacher from x_t (b, L), every block at once.

    masked: (b, L) positions to fill; counts: (k, b, blocks) masked tokens each block keeps after
    each step. Returns the target logits (b, L, V): each position's at the step that committed it,
    the last step's where it stays masked.
    """
    num_steps, bs = counts.shape[0], model_cfg.block_size
    rows = lambda x: rearrange(x, "b (n k) -> (b n) k", k=bs)  # noqa: E731  (one row per block)

    def step(i, carry):
        tokens, masked, target = carry
        logits = speech_only(logits_fn(teacher, tokens), model_cfg)
        k_propose, k_conf = jax.random.split(jax.random.fold_in(key, i))
        proposal, probs = propose(logits, k_propose, cfg.sampling)
        score = confidence(probs, proposal, cfg.confidence, k_conf)
        commit = rows(masked).sum(-1) - counts[i].reshape(-1)
        take = take_most_confident(rows(score), rows(masked), commit).reshape(masked.shape)
        settled = take | (masked & (i == num_steps - 1))
        return jnp.where(take, proposal, tokens), masked & ~take, jnp.where(settled[..., None], logits, target)

    # built from x_t so that under shard_map the carry is varying over 'data' like the loop's output
    target = jnp.zeros_like(x_t, jnp.float32)[..., None].repeat(model_cfg.output_vocab, -1)
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
    keeps ceil(n v / B), as in `hierarchical_mask`.
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
