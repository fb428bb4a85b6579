"""Decontamination: drop training rows that share an n-gram with any evaluation text.

Tokens are ROUGE tokens (lowercase runs of [a-z0-9]; punctuation and case never hide a match).
Eval texts: every string value of every row of each eval file (read with the importer's readers,
so JSONL/JSON/CSV/parquet/gz all work), each string on its own — an IFEval `prompt`, an
AlpacaEval `instruction` and `output`, each MT-Bench turn, each canonical message. Training
text: each user and assistant message of an example on its own (system prompts are not
checked); n-grams never span two messages or two fields.

A row is contaminated when one of its messages contains, as consecutive tokens,
  - any n-gram (default n = 13) of an eval text, or
  - a whole eval text shorter than n tokens but at least `min_tokens` long (default 8): short
    eval items (a one-line question) cannot be matched by n-grams, and below 8 tokens a
    verbatim hit is too often a stock phrase ("write a short poem about the sea").
Training messages shorter than n tokens can only match through the second rule.

The rejects file names, for each removed row, the eval set (the eval file's name) and the
matching n-gram; `CurationSummary.matched_eval_sets` counts removed rows per eval set (a row is
counted once, for the first match found in message order).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from instillm.curate.common import CurationSummary, curate_file
from instillm.data.importer import refuse_output_over_inputs
from instillm.data.io import read_rows
from instillm.data.schema import Example
from instillm.errors import ConfigError, DataError, RowError
from instillm.metrics import rouge_tokenize

DEFAULT_N = 13
DEFAULT_MIN_TOKENS = 8


def string_values(record: Any) -> Iterator[str]:
    """Every string inside a parsed record (dict values and list items, recursively)."""
    if isinstance(record, str):
        yield record
    elif isinstance(record, dict):
        for v in record.values():
            yield from string_values(v)
    elif isinstance(record, list):
        for v in record:
            yield from string_values(v)


class EvalIndex:
    """The n-grams (and whole short texts) of evaluation sets, each mapped to the first set holding it."""

    def __init__(self, n: int = DEFAULT_N, min_tokens: int = DEFAULT_MIN_TOKENS) -> None:
        """An empty index for n-grams of `n` tokens; whole texts of min_tokens..n-1 tokens count too."""
        if n < 1 or min_tokens < 1:
            raise ConfigError(f"n and min_tokens must be positive (got n={n}, min_tokens={min_tokens})")
        self.n = n
        self.min_tokens = min_tokens
        self.names: list[str] = []
        self.grams: dict[int, dict[tuple[str, ...], int]] = {}  # length -> gram -> eval set index
        self.texts_per_set: list[int] = []

    def add_set(self, name: str, texts: Iterator[str] | Sequence[str]) -> int:
        """Index the texts of one eval set; returns how many texts contributed grams."""
        idx = len(self.names)
        self.names.append(name)
        used = 0
        n = self.n
        for text in texts:
            toks = [sys.intern(t) for t in rouge_tokenize(text)]
            if len(toks) >= n:
                table = self.grams.setdefault(n, {})
                for i in range(len(toks) - n + 1):
                    table.setdefault(tuple(toks[i : i + n]), idx)
            elif len(toks) >= self.min_tokens:
                self.grams.setdefault(len(toks), {}).setdefault(tuple(toks), idx)
            else:
                continue
            used += 1
        self.texts_per_set.append(used)
        return used

    def add_file(self, path: str | Path) -> str:
        """Index every string of every row of an eval file; the set is named after the file."""
        name = Path(path).name
        if name in self.names:
            name = str(path)
        texts: list[str] = []
        for row in read_rows(path):
            if row.error is not None:
                raise DataError(f"eval set {path}:{row.line}: {row.error}")
            texts.extend(string_values(row.record))
        if not self.add_set(name, texts):
            raise DataError(f"eval set {path} holds no text of {self.min_tokens} tokens or more")
        return name

    def find(self, text: str) -> tuple[str, str] | None:
        """(eval set name, matching gram as text) for the first gram of `text` found in the index, else None."""
        toks = rouge_tokenize(text)
        for length, table in sorted(self.grams.items(), reverse=True):
            for i in range(len(toks) - length + 1):
                hit = table.get(tuple(toks[i : i + length]))
                if hit is not None:
                    return self.names[hit], " ".join(toks[i : i + length])
        return None

    def find_example(self, ex: Example) -> tuple[str, str] | None:
        """The first match among the example's user and assistant messages."""
        for m in ex.messages:
            if m.role != "system":
                hit = self.find(m.content)
                if hit is not None:
                    return hit
        return None


def decontaminate_file(
    inp: str | Path,
    out: str | Path,
    eval_paths: Sequence[str | Path],
    n: int = DEFAULT_N,
    *,
    min_tokens: int = DEFAULT_MIN_TOKENS,
    progress: Callable[[int], None] | None = None,
) -> CurationSummary:
    """Copy canonical JSONL `inp` to `out` without rows that overlap an eval set (reason `contaminated`)."""
    if not eval_paths:
        raise ConfigError("decontaminate needs at least one eval set")
    refuse_output_over_inputs([inp, *eval_paths], out)
    index = EvalIndex(n, min_tokens)
    for p in eval_paths:
        index.add_file(p)
    matched: dict[str, int] = {}

    def step(ex: Example, line: int) -> RowError | None:
        hit = index.find_example(ex)
        if hit is None:
            return None
        name, gram = hit
        matched[name] = matched.get(name, 0) + 1
        what = f"{n}-gram" if len(gram.split()) == n else f"whole eval text ({len(gram.split())} tokens)"
        return RowError("contaminated", f"eval set {name}: {what} {gram!r}")

    summary = curate_file(inp, out, [step], progress)
    summary.matched_eval_sets = matched
    return summary
