"""Self-distillation (`TrainConfig.distill`): a student learns to decode a block in few steps from
a teacher's multi-step targets.

allocation=even (the paper, default): a frozen teacher reveals each masked block in K =
`teacher_steps` iterations (n_j = ceil(R_j / (K - j + 1))) from the state the run's `mask` drew; one
stage. allocation=schedule (ours, SDTT): rounds in which the student learns to do in S steps per
block what the teacher does in teacher_factor·S from the states of the S-step sampler; S halves
every round. Loss = alpha · reverse KL at `temperature` + (1 - alpha) · CE to x_0.

The round arithmetic lives in `train.distill` (`rounds`, `round_at`), the teacher's commit rule is
the model's own sampler (`ModelConfig.sampler`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdm_jax.config.overrides import check

TEACHERS = ("frozen", "ema")
ALLOCATIONS = ("even", "schedule")


@dataclass(frozen=True)
class DistillConfig:
    allocation: str = "even"  # even: the paper's K iterations from the drawn mask; schedule: SDTT rounds (ours)
    start_denoise_steps: int = 1  # schedule: the student's steps per block in round 0, halved down to 1; even: 1
    round_updates: int = 1000  # optimizer updates per round (the last round lasts to the end of training)
    teacher_steps: int = 4  # even: the teacher's iterations K per block
    teacher_factor: int = 2  # schedule: teacher steps per student step (SDTT: 2)
    teacher: str = "frozen"  # frozen: the params the round started from; ema: an EMA of the student
    ema_decay: float = 0.999
    alpha: float = 0.7  # loss = alpha · KL + (1 - alpha) · CE to x_0
    temperature: float = 2.0  # tau of the KL: both distributions are softmax(logits / tau)

    def __post_init__(self):
        check(self.allocation in ALLOCATIONS, f"distill.allocation={self.allocation!r}; expected one of {ALLOCATIONS}")
        check(self.teacher in TEACHERS, f"distill.teacher={self.teacher!r}; expected one of {TEACHERS}")
        check(self.start_denoise_steps >= 1 and self.round_updates >= 1 and self.teacher_factor >= 1
              and self.teacher_steps >= 1,
              "distill.start_denoise_steps, round_updates, teacher_steps and teacher_factor must be >= 1")
        check(self.allocation == "schedule" or self.start_denoise_steps == 1,
              f"distill.start_denoise_steps={self.start_denoise_steps} needs distill.allocation=schedule: the "
              "student's steps do not enter the even allocation's loss, so it is one stage (start_denoise_steps=1)")
        check(0.0 <= self.alpha <= 1.0, f"distill.alpha={self.alpha} must be in [0, 1]")
        check(self.temperature > 0.0, f"distill.temperature={self.temperature} must be > 0")
