"""Multi-task mixing: how many examples of each task go into one epoch.

Examples-proportional mixing with a cap (T5, FLAN): task t gets a rate proportional to
`weight_t · min(n_t, cap)`, so a huge task cannot drown the small ones. Temperature sampling
flattens it further: rate ∝ `(weight_t · min(n_t, cap)) ** (1 / T)` (T=1: proportional, T→∞:
uniform over tasks). The rates are turned into integer counts that sum to `total` (largest
remainder). A task asked for more examples than it has is repeated whole, then topped up with a
seeded sample; otherwise a seeded sample without replacement is taken. Everything is a
function of `seed`, so the same inputs give the same mixture.

The items only need a `task` attribute: `Example`s, or `Rendered` examples (the training loop
mixes after rendering, so counts refer to examples that fit `max_length`).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from instillm.data.schema import Example
from instillm.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class MixResult:
    """The mixed, shuffled examples and, per task, how many were available and taken."""

    examples: list[Any]  # the items given (Example or Rendered), mixed and shuffled
    counts: dict[str, int]  # examples of each task in the mixture
    available: dict[str, int]  # examples of each task before mixing
    rates: dict[str, float] = field(default_factory=dict)  # sampling rate of each task (sums to 1)

    def table(self) -> list[tuple[str, int, int, float]]:
        """Rows (task, available, taken, rate) sorted by task name, for printing."""
        return [(t, self.available[t], self.counts[t], self.rates[t]) for t in sorted(self.counts)]


def group_by_task(examples: Sequence[T], default: str = "default") -> dict[str, list[T]]:
    """Items grouped by their `.task` (an empty task is named `default`), in input order."""
    groups: dict[str, list[T]] = {}
    for ex in examples:
        groups.setdefault(getattr(ex, "task", "") or default, []).append(ex)
    return groups


def mixing_rates(
    sizes: Mapping[str, int],
    cap: int | None = None,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Rate of each task ∝ (weight · min(n, cap)) ** (1/temperature), normalised to sum to 1."""
    if temperature <= 0:
        raise ConfigError(f"mixing.temperature: must be > 0, got {temperature}")
    if cap is not None and cap < 1:
        raise ConfigError(f"mixing.cap: must be >= 1, got {cap}")
    weights = weights or {}
    raw = {}
    for task, n in sizes.items():
        size = min(n, cap) if cap is not None else n
        raw[task] = (weights.get(task, 1.0) * size) ** (1.0 / temperature) if size > 0 else 0.0
    total = sum(raw.values())
    if total <= 0:
        raise ConfigError("mixing: every task is empty; nothing to mix")
    return {t: r / total for t, r in raw.items()}


def allocate(rates: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to `total`, proportional to `rates` (largest remainder, ties by name)."""
    exact = {t: r * total for t, r in rates.items()}
    counts = {t: math.floor(x) for t, x in exact.items()}
    left = total - sum(counts.values())
    by_remainder = sorted(exact, key=lambda t: (-(exact[t] - counts[t]), t))
    for t in by_remainder[:left]:
        counts[t] += 1
    return counts


def take(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """`k` items: whole copies of `items` while k exceeds its size, then a sample without replacement."""
    out: list[T] = []
    full, rest = divmod(k, len(items)) if items else (0, 0)
    for _ in range(full):
        out.extend(items)
    out.extend(rng.sample(list(items), rest))
    return out


def mix_tasks(
    groups: Mapping[str, Sequence[Any]],
    total: int | None = None,
    cap: int | None = None,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
    seed: int = 0,
) -> MixResult:
    """Mix task groups into one shuffled list of `total` examples (default: sum of capped sizes)."""
    sizes = {t: len(g) for t, g in groups.items()}
    rates = mixing_rates(sizes, cap=cap, temperature=temperature, weights=weights)
    if total is None:
        total = sum(min(n, cap) if cap is not None else n for n in sizes.values())
    counts = allocate(rates, total)
    rng = random.Random(seed)
    mixed: list[Any] = []
    for task in sorted(groups):  # sorted: the result must not depend on dict order
        mixed.extend(take(groups[task], counts[task], rng))
    rng.shuffle(mixed)
    return MixResult(mixed, counts=counts, available=sizes, rates=rates)


def is_cot(example: Example) -> bool:
    """Chain-of-thought example: category `cot` or `meta["cot"]` true."""
    return example.category.lower() == "cot" or bool(example.meta.get("cot"))


def mix_cot(examples: Sequence[Example], ratio: float, seed: int = 0) -> list[Example]:
    """Keep CoT and direct-answer examples at `ratio` CoT : (1-ratio) direct by subsampling one side.

    Nothing is repeated: the side with more than its share is sampled down (seeded); the result
    keeps the input order. With no CoT (or no direct) examples the input is returned unchanged.
    """
    if not 0 <= ratio <= 1:
        raise ConfigError(f"mixing.cot_ratio: must be in [0, 1], got {ratio}")
    cot = [i for i, ex in enumerate(examples) if is_cot(ex)]
    direct = [i for i, ex in enumerate(examples) if not is_cot(ex)]
    if not cot or not direct:
        return list(examples)
    rng = random.Random(seed)
    if ratio == 0:
        keep = direct
    elif ratio == 1:
        keep = cot
    elif len(cot) / ratio <= len(direct) / (1 - ratio):  # CoT is the limiting side
        keep = cot + rng.sample(direct, min(len(direct), round(len(cot) * (1 - ratio) / ratio)))
    else:
        keep = direct + rng.sample(cot, min(len(cot), round(len(direct) * ratio / (1 - ratio))))
    return [examples[i] for i in sorted(keep)]


def count_tasks(examples: Sequence[Any], default: str = "default") -> dict[str, int]:
    """Items per task."""
    return dict(Counter(getattr(ex, "task", "") or default for ex in examples))
