"""Build the skills suite: deterministic splits of canonical Examples, writing, checking, baselines.

Splits (all a function of `SuiteConfig`):

- ``train``: trained families × trained phrasings.
- ``heldout_instances``: trained families and phrasings, inputs never used by that family in train.
- ``heldout_phrasings``: trained families, phrasings never trained (`heldout_phrasings_per_family`
  per family), inputs never used by that family in train.
- ``heldout_families``: families never trained (zero-shot), all their phrasings.

Each family draws from its own `random.Random` seeded by (seed, family name), so a family's
data do not depend on which other families are selected.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instillm.config import Config, check_min
from instillm.data.importer import write_examples
from instillm.data.schema import Example, Message
from instillm.data.skills.families import DEFAULT_HELDOUT_FAMILIES, FAMILIES, FRAMES, Family, render
from instillm.errors import ConfigError, DataError

SPLITS = ("train", "heldout_instances", "heldout_phrasings", "heldout_families")
EVAL_SPLITS = SPLITS[1:]
SOURCE = "instillm-skills"


@dataclass(frozen=True)
class SuiteConfig(Config):
    """Sizes and held-out choices. `heldout_families`: names, a count (seeded pick among
    compositions/relatives of selected families), or None for the default names that are selected.
    It is the `skills:` section of a run config; problems are named `skills.<field>`."""

    path_prefix = "skills"
    seed: int = 0
    n_train_per_family: int = 400
    n_eval_per_family: int = 40
    heldout_phrasings_per_family: int = 2
    heldout_families: tuple[str, ...] | int | None = None
    families: tuple[str, ...] | None = None  # None: all of FAMILIES
    # True: a family with fewer distinct inputs than n_train_per_family + 2 * n_eval_per_family
    # trains on all it has left after its eval inputs (at least one) instead of failing.
    cap_to_input_space: bool = False

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min(problems, "n_train_per_family", v["n_train_per_family"], 1)
        check_min(problems, "n_eval_per_family", v["n_eval_per_family"], 0)
        return problems + _family_problems(v) + _heldout_problems(v)

    def selected(self) -> tuple[str, ...]:
        """Names of the families in the suite, in FAMILIES order."""
        if self.families is None:
            return tuple(FAMILIES)
        return tuple(n for n in FAMILIES if n in set(self.families))


def _family_problems(v: Mapping[str, Any]) -> list[str]:
    """`families` names known families; `heldout_phrasings_per_family` leaves each a trained phrasing."""
    families = v["families"]
    if families is not None and not families:
        return ["families: give a non-empty tuple of family names (or None for all)"]
    unknown = sorted(set(families or ()) - set(FAMILIES))
    if unknown:
        return [f"families: unknown family {unknown}; see list_families()"]
    fewest = min(len(FAMILIES[n].phrasings) for n in (families or FAMILIES))
    if not 0 <= v["heldout_phrasings_per_family"] < fewest:
        return [f"heldout_phrasings_per_family: must be in 0..{fewest - 1}, got {v['heldout_phrasings_per_family']}"]
    return []


def _heldout_problems(v: Mapping[str, Any]) -> list[str]:
    held = v["heldout_families"]
    if isinstance(held, int) and held < 0:
        return [f"heldout_families: a count must be >= 0, got {held}"]
    if isinstance(held, tuple) and set(held) - set(FAMILIES):
        return [f"heldout_families: unknown family {sorted(set(held) - set(FAMILIES))}"]
    return []


def heldout_family_names(config: SuiteConfig) -> tuple[str, ...]:
    """The families held out entirely (zero-shot), validated against the selection."""
    selected = config.selected()
    held = config.heldout_families
    if held is None:
        names = tuple(n for n in DEFAULT_HELDOUT_FAMILIES if n in selected)
    elif isinstance(held, int):
        names = _pick_heldout(selected, held, config.seed)
    else:
        names = tuple(held)
        missing = sorted(set(names) - set(selected))
        if missing:
            raise ConfigError(f"skills.heldout_families: {missing} not among the selected families")
    if len(set(names)) >= len(selected):
        raise ConfigError("skills.heldout_families: holds out every family; nothing would be trained")
    return names


def _pick_heldout(selected: tuple[str, ...], count: int, seed: int) -> tuple[str, ...]:
    """`count` families (seeded) that build on trained families and are not built on by another pick."""
    candidates = [n for n in selected if FAMILIES[n].builds_on and set(FAMILIES[n].builds_on) <= set(selected)]
    random.Random(f"{SOURCE}:{seed}:heldout-families").shuffle(candidates)
    picked: list[str] = []
    for name in candidates:
        deps = set(FAMILIES[name].builds_on)
        if len(picked) < count and not deps & set(picked) and not any(name in FAMILIES[p].builds_on for p in picked):
            picked.append(name)
    if len(picked) < count:
        raise ConfigError(f"skills.heldout_families: only {len(picked)} families can be held out, asked for {count}")
    return tuple(sorted(picked, key=list(FAMILIES).index))


def build_suite(config: SuiteConfig = SuiteConfig()) -> dict[str, list[Example]]:
    """All four splits as canonical Examples (train shuffled with the seed; eval in family order)."""
    held_families = set(heldout_family_names(config))
    suite: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for name in config.selected():
        parts = _family_splits(FAMILIES[name], config, name in held_families)
        for split, examples in parts.items():
            suite[split] += examples
    random.Random(f"{SOURCE}:{config.seed}:train-order").shuffle(suite["train"])
    return suite


def _family_splits(family: Family, config: SuiteConfig, held_out: bool) -> dict[str, list[Example]]:
    """One family's examples per split, with disjoint inputs between train and evaluation."""
    rng = random.Random(f"{SOURCE}:{config.seed}:{family.name}")
    n_eval = config.n_eval_per_family
    every = list(range(len(family.phrasings)))
    if held_out:
        return {"heldout_families": _examples(family, "heldout_families", _inputs(family, rng, n_eval), every)}
    held = _pick_heldout_phrasings(family, rng, config.heldout_phrasings_per_family)
    trained = [i for i in every if i not in held]
    minimum = 2 * n_eval + 1 if config.cap_to_input_space else None
    inputs = _inputs(family, rng, config.n_train_per_family + 2 * n_eval, minimum)
    return {
        "heldout_instances": _examples(family, "heldout_instances", inputs[:n_eval], trained),
        "heldout_phrasings": _examples(family, "heldout_phrasings", inputs[n_eval : 2 * n_eval], held),
        "train": _examples(family, "train", inputs[2 * n_eval :], trained),
    }


def _pick_heldout_phrasings(family: Family, rng: random.Random, k: int) -> list[int]:
    """`k` seeded phrasing indexes to hold out, preferring ones whose every word (case kept) also
    occurs in a trained phrasing of the family or in the shared frames: no unseen word at eval."""
    order = list(range(len(family.phrasings)))
    rng.shuffle(order)
    held: list[int] = []
    for i in order:
        cand = held + [i]
        seen = _words(*(family.phrasings[j] for j in order if j not in cand)) | FRAME_WORDS
        if len(held) < k and all(_words(family.phrasings[h]) <= seen for h in cand):
            held.append(i)
    held += [i for i in order if i not in held][: k - len(held)]  # fall back to the seeded order
    return sorted(held)


def _words(*texts: str) -> set[str]:
    return {w for t in texts for w in re.findall(r"\w+", t.replace("{input}", " "))}


FRAME_WORDS = _words(*(f.replace("{Core}", " ").replace("{core}", " ") for f in FRAMES))


def _inputs(family: Family, rng: random.Random, n: int, minimum: int | None = None) -> list[str]:
    """`n` distinct inputs (or as many as the family yields, if at least `minimum`); ConfigError
    when the family's input space is too small."""
    seen: dict[str, None] = {}
    for _ in range(20 * n + 1000):
        if len(seen) == n:
            break
        seen.setdefault(family.gen(rng), None)
    if len(seen) < (n if minimum is None else minimum):
        hint = "" if minimum is not None else " or set cap_to_input_space"
        raise ConfigError(
            f"skills: family {family.name!r} yields only {len(seen)} distinct inputs, "
            f"{n if minimum is None else minimum} needed; lower n_train_per_family or "
            f"n_eval_per_family{hint}"
        )
    return list(seen)


def _examples(family: Family, split: str, inputs: list[str], phrasings: list[int]) -> list[Example]:
    """Inputs paired with phrasings in turn (empty when there are no phrasings)."""
    if not phrasings:
        return []
    return [make_example(family, split, i, inp, phrasings[i % len(phrasings)]) for i, inp in enumerate(inputs)]


def make_example(family: Family, split: str, index: int, inp: str, phrasing: int) -> Example:
    """One canonical Example: user = phrasing with input, assistant = solve(input)."""
    answer = family.solve(inp)
    return Example(
        messages=(Message("user", render(family.phrasings[phrasing], inp)), Message("assistant", answer)),
        id=f"skills-{family.name}-{split}-{index:05d}",
        source=SOURCE,
        task=family.name,
        category=family.category,
        meta={"family": family.name, "phrasing": phrasing, "split": split, "input": inp, "answer": answer},
    )


def write_suite(suite: dict[str, list[Example]], out_dir: str | Path) -> dict[str, Path]:
    """Write `out_dir/<split>.jsonl` (canonical JSONL) for every split; returns the paths."""
    out = Path(out_dir)
    return {split: write_examples(examples, out / f"{split}.jsonl") for split, examples in suite.items()}


def family_of(example: Example) -> Family:
    """The skills family of an example (meta `family`, else its task); DataError when it has none."""
    name = (example.meta or {}).get("family") or example.task
    if name not in FAMILIES:
        raise DataError(f"example {example.id!r} is not from the skills suite (family {name!r} is unknown)")
    return FAMILIES[name]


def check(example: Example, prediction: str) -> bool:
    """Whether `prediction` answers `example` correctly, by its family's checker."""
    return family_of(example).check(prediction, example)


def baseline_exact_match(examples: Iterable[Example], train: Iterable[Example] | None = None) -> dict[str, float]:
    """Per family: the share of `examples` answered correctly by always giving one answer.

    The answer is the family's most frequent answer in `train` (ties: the smallest string); for
    families absent from `train`, or without `train`, the most frequent answer in `examples` itself
    (an upper bound of any constant answer).
    """
    guesses = _most_frequent(train) if train is not None else {}
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(family_of(ex).name, []).append(ex)
    out = {}
    for name, group in sorted(groups.items()):
        guess = guesses.get(name) or _most_frequent(group)[name]
        out[name] = sum(check(ex, guess) for ex in group) / len(group)
    return out


def _most_frequent(examples: Iterable[Example]) -> dict[str, str]:
    counts: dict[str, Counter[str]] = {}
    for ex in examples:
        counts.setdefault(family_of(ex).name, Counter())[ex.reference] += 1
    return {name: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for name, c in counts.items()}


def list_families() -> list[dict[str, Any]]:
    """One row per family for docs: name, category, doc, phrasings, keywords, builds_on, sample."""
    rows = []
    for fam in FAMILIES.values():
        inp = fam.gen(random.Random(f"{SOURCE}:doc:{fam.name}"))
        rows.append(
            {
                "name": fam.name,
                "category": fam.category,
                "doc": fam.doc,
                "phrasings": list(fam.phrasings),
                "keywords": list(fam.keywords),
                "builds_on": list(fam.builds_on),
                "default_heldout": fam.name in DEFAULT_HELDOUT_FAMILIES,
                "sample": {"user": render(fam.phrasings[0], inp), "assistant": fam.solve(inp)},
            }
        )
    return rows
