"""Best-fit-decreasing packing of tokenized examples into bins of `max_length` tokens."""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into bins whose total length <= capacity (best fit decreasing).

    Each item goes to the fullest bin that still has room; O(n log n) on the number of bins.
    Items longer than `capacity` are a caller error (render truncates or drops them first).
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} item(s) longer than capacity {capacity}, e.g. index {too_long[0]}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            remaining, b = free.pop(k)
        else:
            remaining, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (remaining - n, b))
    return bins


def packing_efficiency(lengths: Sequence[int], capacity: int) -> float:
    """Fraction of bin tokens filled by real tokens after best-fit-decreasing packing."""
    if not lengths:
        return 0.0
    bins = pack_lengths(lengths, capacity)
    return sum(lengths) / (len(bins) * capacity)
