"""Batches that waste little compute on padding: length bucketing, or packing several examples per row.

Examples are dicts of arrays whose leading axis is the sequence axis. Both modes emit, for each
sequence feature `x` (B, L, ...), `x_segment_ids` (B, L) int32 (1, 2, ... per example in the row,
0 on padding) and `x_positions` (B, L) int32 (0.. within each example). Meta features (e.g. a loss
mask aligned with `text`) are padded like the others but carry no segment ids of their own.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence

import grain
import numpy as np


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_batch(examples: Sequence[dict], batch_size: int, pad_multiple: int = 1, meta: Sequence[str] = ()) -> dict:
    """Stacks examples into `batch_size` rows (missing rows are padding), one example per row.

    Each feature is zero-padded to the longest example rounded up to `pad_multiple`.
    """
    batch = {}
    for key in examples[0]:
        arrays = [e[key] for e in examples]
        length = _round_up(max(len(a) for a in arrays), pad_multiple)
        values = np.zeros((batch_size, length, *arrays[0].shape[1:]), arrays[0].dtype)
        segment_ids = np.zeros((batch_size, length), np.int32)
        for row, a in enumerate(arrays):
            values[row, : len(a)] = a
            segment_ids[row, : len(a)] = 1
        batch[key] = values
        if key not in meta:
            batch[f"{key}_segment_ids"] = segment_ids
            batch[f"{key}_positions"] = np.where(segment_ids > 0, np.arange(length, dtype=np.int32), 0)
    return batch


class BucketIterDataset(grain.IterDataset):
    """Sorts windows of `batch_size * window` examples by the length of `sort_key`, cuts them into
    batches of similar length, shuffles those batches within the window and pads each one.

    `window=1, pad_multiple=1` is naive batching in arrival order. The iterator state is the
    parent's state at the window start plus the batches already emitted from it, so a restore
    re-reads that window and continues exactly.
    """

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        batch_size: int,
        sort_key: str,
        window: int = 32,
        pad_multiple: int = 8,
        meta: Sequence[str] = (),
        seed: int = 0,
    ):
        super().__init__(parent)
        self._make_iterator = functools.partial(
            _BucketIterator,
            batch_size=batch_size,
            sort_key=sort_key,
            window=window,
            pad_multiple=pad_multiple,
            meta=meta,
            seed=seed,
        )

    def __iter__(self) -> grain.DatasetIterator:
        return self._make_iterator(self._parent.__iter__())


class _BucketIterator(grain.DatasetIterator):
    def __init__(self, parent, *, batch_size, sort_key, window, pad_multiple, meta, seed):
        super().__init__(parent)
        self._batch_size, self._sort_key, self._window = batch_size, sort_key, window
        self._pad_multiple, self._meta, self._seed = pad_multiple, meta, seed
        self._window_start = self._parent.get_state()
        self._window_index = 0
        self._emitted = 0  # batches of the current window already returned
        self._batches = None  # the current window's batches; None until (re)read

    def _read_window(self):
        self._window_start = self._parent.get_state()
        examples = list(itertools.islice(self._parent, self._batch_size * self._window))
        if not examples:
            raise StopIteration
        examples.sort(key=lambda e: len(e[self._sort_key]))
        batches = [examples[i : i + self._batch_size] for i in range(0, len(examples), self._batch_size)]
        order = np.random.default_rng([self._seed, self._window_index]).permutation(len(batches))
        self._batches = [batches[i] for i in order]

    def __next__(self) -> dict:
        if self._batches is None:
            self._read_window()
        if self._emitted == len(self._batches):
            self._window_index, self._emitted = self._window_index + 1, 0
            self._read_window()
        batch = self._batches[self._emitted]
        self._emitted += 1
        return pad_batch(batch, self._batch_size, self._pad_multiple, self._meta)

    def get_state(self) -> dict:
        return {"parent": self._window_start, "window_index": self._window_index, "emitted": self._emitted}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._window_start = state["parent"]
        self._window_index, self._emitted = state["window_index"], state["emitted"]
        self._batches = None


def pack(
    parent: grain.IterDataset,
    *,
    batch_size: int,
    lengths: Mapping[str, int],
    meta: Sequence[str] = (),
    alignment: Mapping[str, int] | None = None,
    bins: int | None = None,
    seed: int = 0,
) -> grain.IterDataset:
    """Best-fit packs examples into rows of `lengths[key]` per feature, then batches the rows.

    `alignment[key]` starts every example of that feature at a multiple of it (e.g. so strided
    convolutions or frame grouping never straddle two examples). Packing fills `bins` rows
    (default `4 * batch_size`) at a time: more bins, fuller rows.
    """
    rows = grain.experimental.BestFitPackIterDataset(
        parent,
        length_struct=dict(lengths),
        num_packing_bins=bins or 4 * batch_size,
        seed=seed,
        meta_features=tuple(meta),
        pack_alignment_struct={k: (alignment or {}).get(k, 1) for k in lengths},
    )
    return rows.batch(batch_size, batch_fn=functools.partial(_stack_rows, batch_size=batch_size))


def _stack_rows(rows: Sequence[dict], batch_size: int) -> dict:
    """Stacks packed rows; a short final batch gets empty rows, so every batch has one shape."""
    empty = [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (batch_size - len(rows))
    return {k: np.stack([r[k] for r in [*rows, *empty]]) for k in rows[0]}


def padding_fraction(batches: Iterable[dict], key: str) -> float:
    """Fraction of the (B, L) slots of feature `key` that hold padding, over all `batches`."""
    real = total = 0
    for batch in batches:
        segment_ids = batch[f"{key}_segment_ids"]
        real += int(np.count_nonzero(segment_ids))
        total += segment_ids.size
    return 1.0 - real / total
