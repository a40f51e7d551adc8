"""Template question -> answer dialogues for the embedded corpus, and their splits.

Five families a small model can learn: arithmetic, counting, days and months, capitals from a small
table, spelling. Each family asks about its values (a sum, a counting start, a word...) under two or
more templates. Two held-out splits:

  test   the main split: held-out *combinations*: a template asking about a value, where the
         template is seen in training with other values and the value with other templates
         (`held_out="combination"`). What a model that learned the training data answers.
  novel  held-out templates (paraphrases never seen in training) and values (sums, counting starts,
         words never seen in training under any template): `held_out="template"` or `"value"`.

Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
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

# Paraphrases seen only in the novel split.
NOVEL_TEMPLATES = frozenset({"add_sum_of", "month_which_follows", "capital_name", "spell_how_is", "count_list"})
SPLITS = ("train", "valid", "test", "novel")


@dataclasses.dataclass(frozen=True)
class Dialogue:
    id: str
    family: str
    template: str
    value: str  # what the question asks about (e.g. "7+5", "cat"); the unit of value hold-outs
    question: str
    answer: str
    held_out: str | None = None  # "combination" (test), "template" or "value" (novel); None in train/valid


def _arithmetic() -> Iterator[tuple[str, str, str, str]]:
    n = NUMBERS.__getitem__
    for a in range(11):
        for b in range(11):
            if a + b <= 20:
                answer = f"{n(a)} plus {n(b)} is {n(a + b)}"
                yield "add", f"{a}+{b}", f"what is {n(a)} plus {n(b)}", answer
                yield "add_what_do_you_get", f"{a}+{b}", f"what do you get when you add {n(a)} and {n(b)}", answer
                yield "add_sum_of", f"{a}+{b}", f"what is the sum of {n(a)} and {n(b)}", answer
            if a >= b:
                answer = f"{n(a)} minus {n(b)} is {n(a - b)}"
                yield "subtract", f"{a}-{b}", f"what is {n(a)} minus {n(b)}", answer
                yield "subtract_take_away", f"{a}-{b}", f"what is {n(a)} take away {n(b)}", answer


def _counting() -> Iterator[tuple[str, str, str, str]]:
    for start in range(1, 16):
        for length in (3, 4, 5):
            seq = NUMBERS[start : start + length]
            answer = " ".join(seq)
            yield "count", f"{start}:{length}", f"count from {seq[0]} to {seq[-1]}", answer
            yield "count_say", f"{start}:{length}", f"say the numbers from {seq[0]} to {seq[-1]}", answer
            yield "count_list", f"{start}:{length}", f"list the numbers from {seq[0]} to {seq[-1]}", answer


def _calendar() -> Iterator[tuple[str, str, str, str]]:
    for kind, names in (("day", DAYS), ("month", MONTHS)):
        for i, name in enumerate(names):
            after, before = names[(i + 1) % len(names)], names[i - 1]
            yield f"{kind}_after", name, f"what {kind} comes after {name}", f"after {name} comes {after}"
            yield f"{kind}_before", name, f"what {kind} comes before {name}", f"before {name} comes {before}"
            yield f"{kind}_which_follows", name, f"which {kind} follows {name}", f"after {name} comes {after}"


def _capitals() -> Iterator[tuple[str, str, str, str]]:
    for country, city in CAPITALS.items():
        answer = f"the capital of {country} is {city}"
        yield "capital", country, f"what is the capital of {country}", answer
        yield "capital_which_city", country, f"which city is the capital of {country}", answer
        yield "capital_name", country, f"name the capital of {country}", answer


def _spelling() -> Iterator[tuple[str, str, str, str]]:
    for word in WORDS:
        answer = f"{word} is spelled {' '.join(word)}"
        yield "spell", word, f"how do you spell {word}", answer
        yield "spell_letters", word, f"what are the letters of {word}", answer
        yield "spell_how_is", word, f"how is {word} spelled", answer


FAMILIES = {"arithmetic": _arithmetic, "counting": _counting, "calendar": _calendar, "capitals": _capitals,
            "spelling": _spelling}
# Families whose answers compose from parts, so unseen values can be tested: fraction held out.
VALUE_HOLDOUT = {"arithmetic": 0.1, "counting": 0.15, "spelling": 0.15}


def held_out_values(seed: int) -> dict[str, frozenset[str]]:
    """Per family, the values that appear only in the novel split."""
    out = {}
    for i, (family, fraction) in enumerate(sorted(VALUE_HOLDOUT.items())):
        values = sorted({v for _, v, _, _ in FAMILIES[family]()})
        rng = np.random.default_rng([seed, i])
        out[family] = frozenset(rng.choice(values, max(1, round(fraction * len(values))), replace=False).tolist())
    return out


def make_splits(seed: int = 0, valid_fraction: float = 0.08, test_fraction: float = 0.32,
                novel_template_fraction: float = 0.25) -> dict[str, list[Dialogue]]:
    """All dialogues, split. test: for a `test_fraction` sample of the trainable values, one of the
    value's trained templates held out (the value keeps the others, the template keeps other values).
    novel: every held-out value, and a `novel_template_fraction` sample of the held-out paraphrases
    (so the split stays small). The rest is shuffled into train/valid."""
    values = held_out_values(seed)
    rng = np.random.default_rng([seed, 99])
    splits = {s: [] for s in SPLITS}
    by_value = defaultdict(list)  # (family, value) -> its dialogues under trainable templates
    for family, make in FAMILIES.items():
        for template, value, question, answer in make():
            d = Dialogue(f"{template}-{value}", family, template, value, question, answer)
            if value in values.get(family, ()):
                splits["novel"].append(dataclasses.replace(d, held_out="value"))
            elif template in NOVEL_TEMPLATES:
                if rng.random() < novel_template_fraction:
                    splits["novel"].append(dataclasses.replace(d, held_out="template"))
            else:
                by_value[family, value].append(d)
    rest, kept = [], []  # kept: the trained templates of a held-out combination's value stay in train
    for dialogues in by_value.values():
        if len(dialogues) < 2 or rng.random() >= test_fraction:
            rest += dialogues
            continue
        held = rng.integers(len(dialogues))
        splits["test"].append(dataclasses.replace(dialogues[held], held_out="combination"))
        kept += [d for i, d in enumerate(dialogues) if i != held]
    order = rng.permutation(len(rest))
    num_valid = round(valid_fraction * len(rest))
    splits["valid"] = [rest[i] for i in order[:num_valid]]
    splits["train"] = [rest[i] for i in order[num_valid:]] + kept
    for s in ("train", "test", "novel"):
        splits[s] = [splits[s][i] for i in rng.permutation(len(splits[s]))]
    return splits
