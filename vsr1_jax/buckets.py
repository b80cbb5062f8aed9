"""Padded sizes: the few shapes each jitted function is compiled for. A length goes up to the smallest bucket that
holds it (or to a multiple), so batches of different sizes share one compilation."""
from __future__ import annotations

from typing import Sequence


class BucketOverflowError(ValueError):
    """A row is longer than the largest bucket."""


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n. Buckets must be positive and strictly increasing. Raises BucketOverflowError when n
    exceeds the largest bucket (the caller adds which row and which config field)."""
    if not buckets or any(b <= 0 for b in buckets) or any(a >= b for a, b in zip(buckets, buckets[1:])):
        raise ValueError(f"buckets must be positive and strictly increasing, got {tuple(buckets)}")
    for b in buckets:
        if n <= b:
            return int(b)
    raise BucketOverflowError(f"length {n} exceeds the largest bucket {buckets[-1]}")


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-int(n) // int(multiple)) * int(multiple)
