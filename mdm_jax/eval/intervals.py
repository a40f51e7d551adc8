"""95 % intervals of the evaluation's figures by the bootstrap over dialogues.

Every quality figure is a ratio of sums over dialogues (exact answers / answers, matching units /
reference units, word errors / reference words), so one dialogue contributes a (numerator,
denominator) pair. Resampling the dialogues with replacement and recomputing the ratio gives the
interval. With several seeds (independent training runs) the bootstrap has two levels: each draw
resamples the seeds and the dialogues, so the interval covers what changes between runs as well as
the test sample (a run of one seed covers only the dialogues: its verdict may flip in a rerun). With
few seeds the percentile bootstrap still understates the run-to-run spread ((S - 1) / S of its
variance). A difference of two decoders resamples both with the same seeds and dialogues (paired),
and is called only when its interval excludes zero.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DRAWS = 2000
LEVEL = 0.95


@dataclasses.dataclass(frozen=True, eq=False)
class Counts:
    """Per-dialogue numerators and denominators of one figure: (seeds, dialogues) float arrays."""

    num: np.ndarray
    den: np.ndarray

    def __post_init__(self):
        if np.shape(self.num) != np.shape(self.den) or np.ndim(self.num) != 2:
            raise ValueError(f"num {np.shape(self.num)} and den {np.shape(self.den)} must both be (seeds, dialogues)")

    @classmethod
    def of(cls, pairs) -> Counts:
        """One seed's [(num, den), ...] per dialogue."""
        num, den = np.asarray(pairs, float).reshape(-1, 2).T
        return cls(num[None], den[None])

    @classmethod
    def pool(cls, seeds: list[Counts]) -> Counts:
        """The same dialogues evaluated under several seeds."""
        return cls(np.concatenate([c.num for c in seeds]), np.concatenate([c.den for c in seeds]))

    @property
    def value(self) -> float:
        return float(self.num.sum() / max(self.den.sum(), 1e-12))

    def resampled(self, draws: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """(seeds (n, S), dialogues (n, D)) indices -> the ratio under each resample (n,)."""
        seeds, dialogues = draws
        at = (seeds[:, :, None], dialogues[:, None, :])
        return self.num[at].sum((1, 2)) / np.maximum(self.den[at].sum((1, 2)), 1e-12)

    def to_json(self) -> dict:
        return {"num": self.num.tolist(), "den": self.den.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Counts:
        return cls(np.asarray(d["num"], float), np.asarray(d["den"], float))


def _draws(counts: Counts, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resampling indices of the seeds and of the dialogues, one row per draw."""
    rng = np.random.default_rng(seed)
    seeds, dialogues = counts.num.shape
    return rng.integers(0, seeds, (DRAWS, seeds)), rng.integers(0, dialogues, (DRAWS, dialogues))


def _summary(value: float, samples: np.ndarray) -> dict:
    lo, hi = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"value": value, "lo": float(lo), "hi": float(hi)}


def interval(counts: Counts, seed: int = 0) -> dict:
    """-> {'value', 'lo', 'hi'}: the figure and its 95 % percentile-bootstrap interval."""
    return _summary(counts.value, counts.resampled(_draws(counts, seed)))


def difference(a: Counts, b: Counts, seed: int = 0) -> dict:
    """a - b over the same dialogues, resampled together -> {'value', 'lo', 'hi'}."""
    if a.num.shape != b.num.shape:
        raise ValueError(f"a paired difference needs the same dialogues and seeds: {a.num.shape} vs {b.num.shape}")
    draws = _draws(a, seed)
    return _summary(a.value - b.value, a.resampled(draws) - b.resampled(draws))


def fmt(figure: dict | None, sign: bool = False) -> str:
    """{'value', 'lo', 'hi'} -> 'value [lo, hi]' (signed for a difference); None -> '-'."""
    if figure is None:
        return "-"
    f = "+.3f" if sign else ".3f"
    return f"{figure['value']:{f}} [{figure['lo']:{f}}, {figure['hi']:{f}}]"


def called(diff: dict) -> int:
    """+1 / -1 where the interval of a difference lies above / below zero, 0 where it holds zero."""
    return 1 if diff["lo"] > 0 else -1 if diff["hi"] < 0 else 0
