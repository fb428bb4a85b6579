"""The data card's curation sections, computed one way for `instillm data card`, `instillm run`'s report and
the UI's Card sub-tab (`instillm.data.card` cannot import this package, which imports it; so it takes them as
callables and this module wires them).

- Near-duplicate clusters: MinHash-LSH (`curate.dedup`) at `data card`'s defaults, Jaccard 0.8 over the
  user turns and final response (`data dedup --minhash 0.8`).
- Overlap with eval sets: `data decontaminate`'s n-gram index (13-grams; whole eval texts of 8-12 tokens)
  with its boilerplate rule on (`Boilerplate()`: 5-token windows in more than max(5, 1%) of the training
  rows are template text, not evidence; the same prompt always counts), fit on the card's own rows. See
  `instillm.curate.decontaminate` for the rule and why; `data decontaminate` itself keeps plain n-grams.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from instillm.curate.common import conversation_parts, user_text
from instillm.curate.decontaminate import DEFAULT_N, Boilerplate, EvalIndex
from instillm.curate.dedup import DEFAULT_JACCARD, MinHashDedup
from instillm.data.card import NearDup, data_card
from instillm.data.schema import Example
from instillm.errors import ConfigError

NEAR_DUP_ON = ("conversation", "instruction")


def near_dup_matcher(threshold: float = DEFAULT_JACCARD, on: str = "conversation") -> NearDup:
    """The card's near-duplicate matcher: (row, index) -> index of the earlier row it repeats, or None."""
    if on not in NEAR_DUP_ON:
        raise ConfigError(f"--on must be 'conversation' or 'instruction', got {on!r}")
    mh = MinHashDedup(threshold)
    text = _conversation if on == "conversation" else user_text
    return lambda ex, i: mh.offer(text(ex), i)


def _conversation(ex: Example) -> str:
    return "\n".join(conversation_parts(ex))


def overlap_index(
    rows: Sequence[Example],
    eval_files: Iterable[str | Path] = (),
    eval_sets: Mapping[str, Sequence[Example]] | None = None,
    n: int = DEFAULT_N,
    boilerplate: Boilerplate | None = None,
) -> EvalIndex | None:
    """The card's eval index over named example sets and eval files (any format), fit on `rows`; None without any."""
    index = EvalIndex(n, boilerplate=boilerplate or Boilerplate())
    for name, examples in (eval_sets or {}).items():
        index.add_examples(name, examples)
    for path in eval_files:
        index.add_file(path)
    if not index.names:
        return None
    index.fit_examples(rows)
    return index


def overlap_rule(index: EvalIndex, n_rows: int) -> str:
    """One sentence: how the card's eval overlap was measured."""
    b = index.boilerplate or Boilerplate()
    return (
        f"{index.n}-grams of the eval texts (whole texts of {index.min_tokens}-{index.n - 1} tokens) found in a "
        f"row's user or assistant turns, leaving out template text: a {b.gram}-token window found in more than "
        f"{index.fit_limit} of the {n_rows} rows (max({b.min_rows}, {b.share * 100:g}% of the rows)); a row whose "
        "prompt is an eval prompt (case and white space aside) always counts."
    )


def card_with_checks(
    examples: Iterable[Example],
    eval_files: Iterable[str | Path] = (),
    eval_sets: Mapping[str, Sequence[Example]] | None = None,
    *,
    n: int = DEFAULT_N,
    minhash: float = DEFAULT_JACCARD,
    on: str = "conversation",
) -> dict[str, Any]:
    """`data_card` with near-duplicate clusters and, when eval files or sets are given, eval overlap (its
    section also names the sets checked, `eval_sets`: [name, texts long enough for n-grams], and the `rule`)."""
    rows = list(examples)
    near_dup = near_dup_matcher(minhash, on)
    index = overlap_index(rows, eval_files, eval_sets, n)
    card = data_card(rows, near_dup=near_dup, eval_overlap=index.find_example if index is not None else None)
    if index is not None:
        sets = [[name, k] for name, k in zip(index.names, index.texts_per_set)]
        card["eval_overlap"].update(eval_sets=sets, rule=overlap_rule(index, len(rows)))
    return card
