"""Template question -> answer dialogues for the embedded corpus, and their train/valid/test split.

Five families a small model can learn: arithmetic, counting, days and months, capitals from a small
table, spelling. The test split holds out (a) whole templates (paraphrases never seen in training)
and (b) values (sums, counting starts, words) never seen in training under any template; every test
dialogue says which in `held_out`. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen seventeen eighteen nineteen twenty").split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = "january february march april may june july august september october november december".split()
CAPITALS = {"france": "paris", "germany": "berlin", "italy": "rome", "spain": "madrid", "japan": "tokyo",
            "china": "beijing", "egypt": "cairo", "canada": "ottawa", "russia": "moscow", "greece": "athens",
            "norway": "oslo", "peru": "lima", "kenya": "nairobi", "poland": "warsaw", "ireland": "dublin"}
WORDS = ("cat dog sun hat red map cup box pen bed fish bird tree milk book cake frog star ship lamp "
         "rain door hand moon king ball boat duck gold wolf").split()

# Paraphrases seen only in the test split.
TEST_TEMPLATES = frozenset({"add_what_do_you_get", "day_which_follows", "capital_which_city", "spell_letters"})
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Dialogue:
    id: str
    family: str
    template: str
    value: str  # the held-out unit for value hold-outs (e.g. "7+5", "cat")
    question: str
    answer: str
    held_out: str | None = None  # "template" or "value" for test dialogues, else None


def _arithmetic() -> Iterator[tuple[str, str, str, str]]:
    for a in range(11):
        for b in range(11):
            n = lambda i: NUMBERS[i]  # noqa: E731
            if a + b <= 20:
                yield ("add", f"{a}+{b}", f"what is {n(a)} plus {n(b)}", f"{n(a)} plus {n(b)} is {n(a + b)}")
                yield ("add_what_do_you_get", f"{a}+{b}", f"what do you get when you add {n(a)} and {n(b)}",
                       f"{n(a)} plus {n(b)} is {n(a + b)}")
            if a >= b:
                yield ("subtract", f"{a}-{b}", f"what is {n(a)} minus {n(b)}", f"{n(a)} minus {n(b)} is {n(a - b)}")


def _counting() -> Iterator[tuple[str, str, str, str]]:
    for start in range(1, 16):
        for length in (3, 4, 5):
            seq = NUMBERS[start : start + length]
            yield "count", f"{start}:{length}", f"count from {seq[0]} to {seq[-1]}", " ".join(seq)


def _calendar() -> Iterator[tuple[str, str, str, str]]:
    for kind, names in (("day", DAYS), ("month", MONTHS)):
        for i, name in enumerate(names):
            after, before = names[(i + 1) % len(names)], names[i - 1]
            yield f"{kind}_after", name, f"what {kind} comes after {name}", f"after {name} comes {after}"
            yield f"{kind}_before", name, f"what {kind} comes before {name}", f"before {name} comes {before}"
            if kind == "day":
                yield "day_which_follows", name, f"which day follows {name}", f"after {name} comes {after}"


def _capitals() -> Iterator[tuple[str, str, str, str]]:
    for country, city in CAPITALS.items():
        answer = f"the capital of {country} is {city}"
        yield "capital", country, f"what is the capital of {country}", answer
        yield "capital_which_city", country, f"which city is the capital of {country}", answer


def _spelling() -> Iterator[tuple[str, str, str, str]]:
    for word in WORDS:
        answer = f"{word} is spelled {' '.join(word)}"
        yield "spell", word, f"how do you spell {word}", answer
        yield "spell_letters", word, f"what are the letters of {word}", answer


FAMILIES = {"arithmetic": _arithmetic, "counting": _counting, "calendar": _calendar, "capitals": _capitals,
            "spelling": _spelling}
# Families whose answers compose from parts, so unseen values can be tested: fraction held out.
VALUE_HOLDOUT = {"arithmetic": 0.1, "counting": 0.15, "spelling": 0.15}


def held_out_values(seed: int) -> dict[str, frozenset[str]]:
    """Per family, the values that appear only in the test split."""
    out = {}
    for i, (family, fraction) in enumerate(sorted(VALUE_HOLDOUT.items())):
        values = sorted({v for _, v, _, _ in FAMILIES[family]()})
        rng = np.random.default_rng([seed, i])
        out[family] = frozenset(rng.choice(values, max(1, round(fraction * len(values))), replace=False).tolist())
    return out


def make_splits(seed: int = 0, valid_fraction: float = 0.08, test_template_fraction: float = 0.3
                ) -> dict[str, list[Dialogue]]:
    """All dialogues, split: test = held-out values, and a `test_template_fraction` sample of the
    held-out paraphrases (so the test split stays small); the rest shuffled into train/valid."""
    values = held_out_values(seed)
    rng = np.random.default_rng([seed, 99])
    splits = {s: [] for s in SPLITS}
    rest = []
    for family, make in FAMILIES.items():
        for template, value, question, answer in make():
            held = "value" if value in values.get(family, ()) else "template" if template in TEST_TEMPLATES else None
            d = Dialogue(f"{template}-{value}", family, template, value, question, answer, held)
            if held is None:
                rest.append(d)
            elif held == "value" or rng.random() < test_template_fraction:
                splits["test"].append(d)
    order = rng.permutation(len(rest))
    num_valid = round(valid_fraction * len(rest))
    splits["valid"] = [rest[i] for i in order[:num_valid]]
    splits["train"] = [rest[i] for i in order[num_valid:]]
    splits["test"] = [splits["test"][i] for i in rng.permutation(len(splits["test"]))]
    return splits
