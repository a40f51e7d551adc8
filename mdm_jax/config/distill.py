"""Iterative self-distillation (`TrainConfig.distill`): rounds in which a student learns to do in S
denoising steps per block what the teacher does in teacher_factor·S; S halves every round.

The round arithmetic lives in `train.distill` (`rounds`, `round_at`), the teacher's commit rule is
the model's own sampler (`ModelConfig.sampler`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdm_jax.config.overrides import check

TEACHERS = ("frozen", "ema")


@dataclass(frozen=True)
class DistillConfig:
    start_denoise_steps: int = 16  # the student's steps per block in round 0; rounds halve it down to 1
    round_updates: int = 1000  # optimizer updates per round (the last round lasts to the end of training)
    teacher_factor: int = 2  # teacher steps per student step (SDTT: 2)
    teacher: str = "frozen"  # frozen: the params the round started from; ema: an EMA of the student
    ema_decay: float = 0.999
    lam_ce: float = 0.0  # weight of the CE to x_0 added to the KL

    def __post_init__(self):
        check(self.teacher in TEACHERS, f"distill.teacher={self.teacher!r}; expected one of {TEACHERS}")
        check(self.start_denoise_steps >= 1 and self.round_updates >= 1 and self.teacher_factor >= 1,
              "distill.start_denoise_steps, round_updates and teacher_factor must be >= 1")
