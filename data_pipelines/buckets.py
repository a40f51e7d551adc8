"""Inference-time length buckets: an input is padded to its bucket, so inputs of one bucket share one
compiled program (training batches bucket by sorting instead: `batching`)."""

from __future__ import annotations

from collections.abc import Sequence


def bucket(n: int, buckets: Sequence[int] | None = None, minimum: int = 16) -> int:
    """The padded length of an input of length n: the smallest of `buckets` that holds it, else the next
    power of two (at least `minimum`)."""
    fits = [b for b in buckets or () if b >= n]
    return min(fits) if fits else max(minimum, 1 << (n - 1).bit_length())
