"""Dialogue records, read from our JSONL manifest or from the VocalNet release layout.

Our manifest, one dialogue per line (paths relative to the manifest's folder):

    {"id": "q1", "user_audio": "wav/q1.wav", "user_text": "what is two plus two",
     "assistant_text": "four", "assistant_units": "units/q1.npy", "speaker": "joe", "duration": 1.4,
     "assistant_audio": "wav/a1.wav"}

`assistant_units` is a `.npy` path or an inline list of ints. VocalNet's release is a JSON list:

    [{"id": "q1", "speech": "wav/q1.wav", "units": "units/q1.npy",
      "conversations": [{"from": "human", "value": "<speech>\\n..."}, {"from": "gpt", "value": "four"}]}]

An optional `assistant_audio` (the spoken answer) may sit beside `units` in either format: it is what
`mdm_jax.tokenize_speech` turns into the units.

A manifest is often someone else's data: its paths must resolve (symlinks followed) inside the
manifest's folder or the data root the user names (`root`); a record whose path leads elsewhere
(`../..`, an absolute path, a symlink out) is skipped with reason `path_outside_root` (an error in
strict mode), unless `allow_outside_root`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator

import numpy as np

from data_pipelines.validation import BadRecordError, BadRecords, Reason


@dataclasses.dataclass(frozen=True)
class Record:
    """One spoken question and its answer; paths are absolute (or relative to the working directory)."""

    id: str
    user_audio: str
    assistant_text: str
    assistant_units: str | tuple[int, ...]  # .npy path, or the ids themselves
    user_text: str | None = None
    speaker: str | None = None
    duration: float | None = None  # seconds of user audio, if the manifest knows it
    assistant_audio: str | None = None  # the spoken answer the units were taken from, if shipped


def _field(entry: dict, key: str, types: type | tuple[type, ...], name: str) -> object:
    value = entry.get(key)
    if not isinstance(value, types) or isinstance(value, bool):
        raise BadRecordError(name, Reason.MALFORMED, f"field {key!r} is {value!r}")
    return value


Locate = Callable[[str, str], str]  # (record name, path as written) -> the path to open


def _locate(name: str, written: str, *, folder: str, roots: tuple[str, ...] | None) -> str:
    """`written` joined onto the manifest's folder; BadRecordError unless it resolves inside one of `roots`
    (None: anywhere)."""
    path = os.path.join(folder, written)
    if roots is not None:
        real = os.path.realpath(path)
        if not any(os.path.commonpath([real, root]) == root for root in roots):
            raise BadRecordError(name, Reason.PATH_OUTSIDE_ROOT,
                                 f"{written!r} resolves to {real}, outside {' and '.join(roots)}")
    return path


def _make_record(name: str, locate: Locate, id_, audio, text, units, **optional) -> Record:
    if not text.strip():
        raise BadRecordError(name, Reason.EMPTY_TEXT, "assistant text")
    if isinstance(units, list):
        if not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise BadRecordError(name, Reason.MALFORMED, "assistant_units has non-integer ids")
        units = tuple(units)
    else:
        units = locate(name, units)
    return Record(str(id_), locate(name, audio), text, units, **optional)


def _records(path: str, entries: Iterator[tuple[str, object]], parse, bad: BadRecords, root: str | None,
             allow_outside_root: bool) -> list[Record]:
    folder = os.path.dirname(os.path.abspath(path))
    roots = None if allow_outside_root else tuple(os.path.realpath(r) for r in (folder, root) if r)
    locate = functools.partial(_locate, folder=folder, roots=roots)
    records = []
    for name, entry in entries:
        try:
            if not isinstance(entry, dict):
                raise BadRecordError(name, Reason.MALFORMED, f"expected an object, got {type(entry).__name__}")
            records.append(parse(entry, f"{entry.get('id')} ({name})", locate))
        except BadRecordError as e:
            bad.skip(e)
    return records


def _parse_ours(entry: dict, name: str, locate: Locate) -> Record:
    return _make_record(
        name,
        locate,
        _field(entry, "id", (str, int), name),
        _field(entry, "user_audio", str, name),
        _field(entry, "assistant_text", str, name),
        _field(entry, "assistant_units", (str, list), name),
        user_text=_field(entry, "user_text", (str, type(None)), name),
        speaker=_field(entry, "speaker", (str, type(None)), name),
        duration=_field(entry, "duration", (int, float, type(None)), name),
        assistant_audio=_optional_path(entry, "assistant_audio", name, locate),
    )


def _optional_path(entry: dict, key: str, name: str, locate: Locate) -> str | None:
    value = _field(entry, key, (str, type(None)), name)
    return None if value is None else locate(name, value)


def _parse_vocalnet(entry: dict, name: str, locate: Locate) -> Record:
    turns = _field(entry, "conversations", list, name)
    answers = [t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
    if not answers or not isinstance(answers[0], str):
        raise BadRecordError(name, Reason.MALFORMED, "no 'gpt' turn with a text value")
    return _make_record(
        name,
        locate,
        _field(entry, "id", (str, int), name),
        _field(entry, "speech", str, name),
        answers[0],
        _field(entry, "units", (str, list), name),
        assistant_audio=_optional_path(entry, "assistant_audio", name, locate),
    )


def read_manifest(path: str, bad: BadRecords, *, root: str | None = None,
                  allow_outside_root: bool = False) -> list[Record]:
    """Reads our JSONL manifest; bad lines go to `bad` named `path:line`. Paths confined to the manifest's
    folder and `root` unless `allow_outside_root` (see the module's docstring)."""

    def entries():
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{path}:{i}", json.loads(line)
                    except json.JSONDecodeError as e:
                        bad.skip(BadRecordError(f"{path}:{i}", Reason.MALFORMED, f"invalid JSON: {e}"))

    return _records(path, entries(), _parse_ours, bad, root, allow_outside_root)


def read_vocalnet(path: str, bad: BadRecords, *, root: str | None = None,
                  allow_outside_root: bool = False) -> list[Record]:
    """Reads a VocalNet conversation JSON list; bad entries go to `bad` named `path[index]`. Paths
    confined as `read_manifest`'s."""
    with open(path) as f:
        entries = json.load(f)
    return _records(path, ((f"{path}[{i}]", e) for i, e in enumerate(entries)), _parse_vocalnet, bad, root,
                    allow_outside_root)


def load_units(record: Record, vocab_size: int) -> np.ndarray:
    """Speech unit ids of the answer, (U,) int32, each in [0, vocab_size).

    CosyVoice2 token files hold (U,) or (1, U) arrays.
    """
    units = record.assistant_units
    if isinstance(units, str):
        if not os.path.isfile(units):
            raise BadRecordError(record.id, Reason.MISSING_FILE, units)
        try:
            units = np.load(units)
        except (ValueError, OSError) as e:
            raise BadRecordError(record.id, Reason.MALFORMED, f"{record.assistant_units}: {e}") from e
    units = np.asarray(units)
    if units.ndim == 2 and units.shape[0] == 1:
        units = units[0]
    if units.ndim != 1 or units.size == 0 or not np.issubdtype(units.dtype, np.integer):
        raise BadRecordError(record.id, Reason.MALFORMED, f"units of shape {units.shape} and dtype {units.dtype}")
    if units.min() < 0 or units.max() >= vocab_size:
        raise BadRecordError(
            record.id, Reason.UNITS_OUT_OF_RANGE, f"ids in [{units.min()}, {units.max()}], vocabulary {vocab_size}"
        )
    return units.astype(np.int32)
