"""Best-fit-decreasing packing."""

from __future__ import annotations

import random

import pytest

from instillm.data.pack import pack_lengths, packing_efficiency


def test_every_item_once_and_bins_fit():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = pack_lengths(lengths, 128)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)


def test_small_bfd_example():
    # Decreasing order: 6 opens A, 5 opens B, 4 fills A exactly, 3 goes to B.
    assert sorted(map(sorted, pack_lengths([6, 5, 4, 3], 10))) == [[0, 2], [1, 3]]


def test_perfect_packing_and_efficiency():
    assert packing_efficiency([5, 5, 5, 5], 10) == 1.0
    assert packing_efficiency([6, 6], 10) == pytest.approx(0.6)
    assert packing_efficiency([], 10) == 0.0


def test_too_long_is_an_error():
    with pytest.raises(ValueError, match="longer than capacity"):
        pack_lengths([11], 10)
