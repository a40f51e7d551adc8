"""Bad records: one error type, and a report that counts and lists every skipped record.

Strict mode raises `BadRecordError` at the first bad record; the default skips it, logs it, counts
it by reason and can write the list next to the run. Nothing is dropped without a trace.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import logging
import os
import threading

log = logging.getLogger(__name__)


class Reason(str, enum.Enum):
    MALFORMED = "malformed_record"  # JSON that does not parse, or a field missing or of the wrong type
    MISSING_FILE = "missing_file"
    PATH_OUTSIDE_ROOT = "path_outside_root"  # a manifest path leading outside its folder and the data root
    CORRUPT_AUDIO = "corrupt_audio"
    TRUNCATED_AUDIO = "truncated_audio"  # the header promises more audio than the file holds (a cut-off copy)
    EMPTY_AUDIO = "empty_audio"  # shorter than one 25 ms analysis window
    NON_FINITE = "non_finite_audio"
    SAMPLE_RATE = "wrong_sample_rate"
    STEREO = "stereo"
    TOO_LONG = "too_long"
    TOO_BIG = "too_big"  # an upload over the server's byte limit
    EMPTY_TEXT = "empty_text"
    UNITS_OUT_OF_RANGE = "units_out_of_range"


class Note(str, enum.Enum):
    """Fixes applied to a record that is kept: counted, not skipped."""

    STEREO_TO_MONO = "stereo_to_mono"
    RESAMPLED = "resampled"


class BadRecordError(ValueError):
    """A record that cannot be used; `record` names it (id, or manifest path and line)."""

    def __init__(self, record: str, reason: Reason, detail: str = ""):
        super().__init__(f"bad record {record}: {reason.value}" + (f" ({detail})" if detail else ""))
        self.record, self.reason, self.detail = record, reason, detail

    def __reduce__(self):  # Keeps the fields when the error crosses a process boundary.
        return type(self), (self.record, self.reason, self.detail)


@dataclasses.dataclass
class BadRecords:
    """Report of skipped records and applied notes, keyed by record so re-reads count once.

    Iterator restores replay a few records; keying by record keeps the counts exact.
    """

    strict: bool = False
    skipped: dict[str, BadRecordError] = dataclasses.field(default_factory=dict)
    notes: dict[str, frozenset[Note]] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def skip(self, error: BadRecordError) -> None:
        """Raises `error` in strict mode, else records and logs it."""
        if self.strict:
            raise error
        with self._lock:
            if error.record not in self.skipped:
                log.warning("skipping %s", error)
            self.skipped[error.record] = error

    def note(self, record: str, notes: frozenset[Note]) -> None:
        if notes:
            with self._lock:
                self.notes[record] = notes

    def counts(self) -> dict[str, int]:
        """Skipped records per reason and kept records per note, e.g. {'missing_file': 2, 'stereo_to_mono': 1}."""
        with self._lock:
            counter = collections.Counter(e.reason.value for e in self.skipped.values())
            counter.update(n.value for ns in self.notes.values() for n in ns)
        return dict(counter)

    def write(self, path: str | os.PathLike) -> None:
        """Writes one JSON line per skipped record: {"record", "reason", "detail"}."""
        with self._lock:
            errors = list(self.skipped.values())
        with open(path, "w") as f:
            f.writelines(
                json.dumps({"record": e.record, "reason": e.reason.value, "detail": e.detail}) + "\n" for e in errors
            )
