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

Boilerplate (`EvalIndex(boilerplate=Boilerplate())`; off in `data decontaminate`, on in every data
card, see `instillm.curate.card`): templated data shares text with its eval sets that is no
leakage. Measured on the quickstart's skills suite, whose held-out instances are rendered by the
same phrasings as its 26,837 training rows: the rules above flag 896 rows, every one through
template text ("i need you to tell me if the number is positive or negative", in 240 rows) or
template text and a name ("... how many there are altogether ben has", 58 rows). With the option:
  - a `gram`-token window (default 5, MinHash's shingle) of an eval text that more than
    max(`min_rows`, `share` x training rows) training rows contain (default max(5, 1%)) is
    boilerplate: its tokens are cut out of the eval text, and only the runs left between the
    cuts are indexed (their n-grams, or a run of min_tokens..n-1 tokens whole). Every match is
    then made of text the training data holds rarely. The index is `fit` on the training rows
    before `find`.
  - a training row whose user turns equal a whole eval prompt always counts, boilerplate or not
    ("same prompt"; compared with case and white space folded, punctuation kept: "-459" is not
    "459"). An eval file's prompts are all its strings; canonical examples' are their user turns.
Windows of 5 tokens rather than the n-grams themselves: template phrases are often shorter than
13 tokens, and a 13-gram joining a template to a name or a number is rare (the 58 rows above are
0.2%): counting 13-grams at max(5, 1%) still flags all 896 rows (66 at 5 rows). With 5-token
windows none is flagged; an eval example copied into the training data is found by its prompt,
and a near copy (case, punctuation, a word added) when its text beyond the template runs to
`min_tokens` tokens. Limits: a near copy of an eval example whose own text is shorter ("38 or 79"
after "Pick the larger number.") is not told from a templated row; an eval example copied into
more than max(5, 1%) training rows has made its own text boilerplate (its exact copies still
count by the same-prompt rule).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from instillm.config import Config, check_min_int, check_range
from instillm.curate.common import CurationSummary, curate_file, user_text
from instillm.data.importer import refuse_output_over_inputs
from instillm.data.io import read_rows
from instillm.data.schema import Example
from instillm.errors import ConfigError, DataError, RowError
from instillm.metrics import rouge_tokenize

DEFAULT_N = 13
DEFAULT_MIN_TOKENS = 8
SAME_PROMPT = "same prompt: "  # how a match by the same-prompt rule starts
Gram = tuple[str, ...]


@dataclass(frozen=True)
class Boilerplate(Config):
    """Eval text that is template, not evidence: a `gram`-token window in more than `limit(rows)` training rows."""

    path_prefix = "boilerplate"
    gram: int = 5
    min_rows: int = 5
    share: float = 0.01

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min_int(problems, "gram", v["gram"])
        check_min_int(problems, "min_rows", v["min_rows"], 0)
        check_range(problems, "share", v["share"], 0, 1)
        return problems

    def limit(self, n_rows: int) -> int:
        """The most training rows a window may occur in and still be evidence: max(min_rows, share x rows)."""
        return max(self.min_rows, int(self.share * n_rows))


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


def checked_texts(ex: Example) -> list[str]:
    """The texts of an example that overlap is looked for in: its user and assistant turns."""
    return [m.content for m in ex.messages if m.role != "system"]


def prompt_key(text: str) -> str:
    """A prompt as the same-prompt rule compares it: case folded, white space collapsed, punctuation kept."""
    return " ".join(text.casefold().split())


def windows(toks: Sequence[str], k: int) -> Iterator[Gram]:
    """Every run of `k` consecutive tokens."""
    return (tuple(toks[i : i + k]) for i in range(len(toks) - k + 1))


def rare_runs(toks: Sequence[str], common: set[Gram], k: int) -> list[list[str]]:
    """The runs of `toks` left when the tokens of every `k`-window in `common` are cut out."""
    cut = [False] * len(toks)
    for i, w in enumerate(windows(toks, k)):
        if w in common:
            cut[i : i + k] = [True] * k
    return [[t for t, _ in run] for is_cut, run in groupby(zip(toks, cut), key=lambda p: p[1]) if not is_cut]


class EvalIndex:
    """The n-grams (and whole short texts) of evaluation sets, each mapped to the first set holding it.

    With `boilerplate` (see the module docstring) eval texts wait for `fit` on the training rows,
    which cuts their boilerplate out before they are indexed, and whole prompts match too."""

    def __init__(
        self, n: int = DEFAULT_N, min_tokens: int = DEFAULT_MIN_TOKENS, boilerplate: Boilerplate | None = None
    ) -> None:
        """An empty index for n-grams of `n` tokens; whole texts of min_tokens..n-1 tokens count too."""
        if n < 1 or min_tokens < 1:
            raise ConfigError(f"n and min_tokens must be positive (got n={n}, min_tokens={min_tokens})")
        self.n = n
        self.min_tokens = min_tokens
        self.boilerplate = boilerplate
        self.names: list[str] = []
        self.grams: dict[int, dict[Gram, int]] = {}  # length -> gram -> eval set index
        self.texts_per_set: list[int] = []
        self.prompts: dict[str, int] = {}  # with boilerplate: prompt_key of a whole eval prompt -> eval set index
        self.pending: list[tuple[int, list[str]]] = []  # with boilerplate: (eval set index, tokens) until `fit`
        self.n_common = 0  # with boilerplate: windows found boilerplate by the last `fit`
        self.fit_limit: int | None = None  # with boilerplate: rows a window may occur in (the last `fit`'s)

    def add_set(self, name: str, texts: Iterable[str], prompts: Iterable[str] | None = None) -> int:
        """Index the texts of one eval set; returns how many texts contributed grams. With boilerplate
        the texts wait for `fit`, and `prompts` (default: the texts) are kept for the same-prompt rule."""
        texts = list(texts)
        idx = len(self.names)
        self.names.append(name)
        used = 0
        for text in texts:
            toks = [sys.intern(t) for t in rouge_tokenize(text)]
            if len(toks) < min(self.n, self.min_tokens):
                continue
            used += 1
            if self.boilerplate is None:
                self._index(toks, idx)
            else:
                self.pending.append((idx, toks))
        if self.boilerplate is not None:
            self._add_prompts(texts if prompts is None else prompts, idx)
        self.texts_per_set.append(used)
        return used

    def _index(self, toks: Sequence[str], idx: int) -> None:
        """The n-grams of a run of tokens, or the run whole when it has min_tokens..n-1 tokens."""
        n = self.n
        if len(toks) >= n:
            table = self.grams.setdefault(n, {})
            for gram in windows(toks, n):
                table.setdefault(gram, idx)
        elif len(toks) >= self.min_tokens:
            self.grams.setdefault(len(toks), {}).setdefault(tuple(toks), idx)

    def _add_prompts(self, prompts: Iterable[str], idx: int) -> None:
        for prompt in prompts:
            key = prompt_key(prompt)
            if key:
                self.prompts.setdefault(key, idx)

    def add_file(self, path: str | Path) -> str:
        """Index every string of every row of an eval file; the set is named after the file. DataError when no
        string is long enough to match (with boilerplate: when it holds none, since whole prompts match too)."""
        name = Path(path).name
        if name in self.names:
            name = str(path)
        texts: list[str] = []
        for row in read_rows(path):
            if row.error is not None:
                raise DataError(f"eval set {path}:{row.line}: {row.error}")
            texts.extend(string_values(row.record))
        used = self.add_set(name, texts)
        if not texts or (not used and self.boilerplate is None):  # with boilerplate its prompts still count
            raise DataError(f"eval set {path} holds no text of {self.min_tokens} tokens or more")
        return name

    def add_examples(self, name: str, examples: Iterable[Example]) -> int:
        """Index an eval set of canonical examples: their user and assistant turns; their prompts: their user turns."""
        rows = list(examples)
        return self.add_set(name, [t for ex in rows for t in checked_texts(ex)], [user_text(ex) for ex in rows])

    def fit(self, rows: Iterable[Sequence[str]]) -> int:
        """With boilerplate: find the boilerplate windows of the eval texts in the training rows (each row: its
        texts), cut them out and index the runs left; returns how many windows were boilerplate."""
        if self.boilerplate is None:
            raise ConfigError("fit: this eval index has no boilerplate rule")
        k = self.boilerplate.gram
        common = self._common_windows(rows, k)
        for idx, toks in self.pending:
            for run in rare_runs(toks, common, k):
                self._index(run, idx)
        self.pending = []
        self.n_common = len(common)
        return self.n_common

    def fit_examples(self, examples: Iterable[Example]) -> int:
        """`fit` on training examples (their user and assistant turns, as `find_example` reads them)."""
        return self.fit(checked_texts(ex) for ex in examples)

    def _common_windows(self, rows: Iterable[Sequence[str]], k: int) -> set[Gram]:
        """The `k`-windows of the pending eval texts that more than the rule's limit of training rows contain."""
        assert self.boilerplate is not None
        wanted = {w for _, toks in self.pending for w in windows(toks, k)}
        counts: Counter[Gram] = Counter()
        n_rows = 0
        for texts in rows:
            n_rows += 1
            counts.update({w for text in texts for w in windows(rouge_tokenize(text), k)} & wanted)
        self.fit_limit = self.boilerplate.limit(n_rows)
        return {w for w, c in counts.items() if c > self.fit_limit}

    def find(self, text: str) -> tuple[str, str] | None:
        """(eval set name, matching gram as text) for the first gram of `text` found in the index, else None."""
        if self.pending:
            raise ConfigError("this eval index holds texts not indexed yet: fit it on the training rows first")
        toks = rouge_tokenize(text)
        for length, table in sorted(self.grams.items(), reverse=True):
            for i in range(len(toks) - length + 1):
                hit = table.get(tuple(toks[i : i + length]))
                if hit is not None:
                    return self.names[hit], " ".join(toks[i : i + length])
        return None

    def find_example(self, ex: Example) -> tuple[str, str] | None:
        """The same prompt (with boilerplate), else the first match among the example's user and assistant turns."""
        same = self.same_prompt(ex)
        if same is not None:
            return same
        for text in checked_texts(ex):
            hit = self.find(text)
            if hit is not None:
                return hit
        return None

    def same_prompt(self, ex: Example) -> tuple[str, str] | None:
        """(eval set name, "same prompt: ...") when the example's user turns are a whole eval prompt, else None."""
        key = prompt_key(user_text(ex))
        idx = self.prompts.get(key) if key else None
        return None if idx is None else (self.names[idx], SAME_PROMPT + _short(key))


def _short(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


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
