"""Shared plumbing of the curation steps: stream canonical JSONL through checks, account for every row.

A curation step is a callable `step(example, line) -> RowError | None`: None keeps the row
(and lets the step remember it, e.g. as the first occurrence of a duplicate group), a RowError
rejects it with `reason`/`detail`. `curate_file` runs the steps in order on every row, like a
pipeline of separate passes (a step only sees the rows every earlier step kept), writes kept rows
to OUT and each rejected row to OUT.rejects.jsonl in the importer's format
`{file, line, reason, detail, raw}` (`line` = 1-based line of the row in the input file), and
returns a `CurationSummary` with `n_kept + sum(rejected_by_reason.values()) == n_in`.

Input must be canonical JSONL (what `instillm data import` writes); a row that is not raises
DataError naming file:line, as `read_examples` does. Output and rejects are written to temp
files and renamed into place at the end, so a failed run leaves no half-written output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from instillm.data.importer import refuse_output_over_inputs, rejects_path_for
from instillm.data.io import RawRow, read_rows, temp_beside
from instillm.data.schema import Example
from instillm.errors import DataError, RowError

Step = Callable[[Example, int], "RowError | None"]
PROGRESS_EVERY = 10_000


@dataclass
class CurationSummary:
    """What a curation step did: rows in, rows kept, rejects per reason, and where it wrote them.

    `matched_eval_sets` (decontamination only) counts removed rows per eval file name.
    """

    output: Path
    rejects_path: Path
    n_in: int = 0
    n_kept: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    matched_eval_sets: dict[str, int] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        """Rows written to the rejects file (n_in - n_kept)."""
        return sum(self.rejected_by_reason.values())


def user_text(ex: Example) -> str:
    """The instruction as Self-Instruct compares it: the user turns joined with a newline."""
    return "\n".join(m.content for m in ex.messages if m.role == "user")


def conversation_parts(ex: Example) -> tuple[str, str]:
    """(user turns joined with a newline, final response): what dedup hashes by default."""
    return user_text(ex), ex.messages[-1].content


def iter_canonical(path: str | Path) -> Iterator[tuple[RawRow, Example]]:
    """(raw row, Example) for each row of a canonical JSONL file; DataError names file:line of a bad row."""
    hint = "curation reads canonical JSONL; convert the data with `instillm data import` first"
    for row in read_rows(path):
        if row.error is not None:
            raise DataError(f"{path}:{row.line}: {row.error} ({hint})")
        try:
            yield row, Example.from_dict(row.record)
        except RowError as e:
            raise DataError(f"{path}:{row.line}: {e} ({hint})") from e


def curate_file(
    inp: str | Path,
    out: str | Path,
    steps: Sequence[Step],
    progress: Callable[[int], None] | None = None,
) -> CurationSummary:
    """Stream `inp` through `steps`; kept rows go to `out`, rejected ones to its rejects file.

    `progress(n)` is told how many more rows were processed, every PROGRESS_EVERY rows.
    """
    output = Path(out)
    summary = CurationSummary(output=output, rejects_path=rejects_path_for(output))
    refuse_output_over_inputs([inp], output)
    output.parent.mkdir(parents=True, exist_ok=True)
    out_tmp, rej_tmp = temp_beside(output), temp_beside(summary.rejects_path)
    by_reason = summary.rejected_by_reason
    try:
        with open(out_tmp, "wb") as fout, open(rej_tmp, "wb") as frej:
            for row, ex in iter_canonical(inp):
                summary.n_in += 1
                error = None
                for step in steps:
                    error = step(ex, row.line)
                    if error is not None:
                        break
                data = b""
                if error is None:
                    try:
                        data = (ex.to_json() + "\n").encode("utf-8")
                    except UnicodeEncodeError as e:
                        error = RowError("invalid_unicode", f"text holds a lone surrogate at position {e.start}")
                if error is None:
                    fout.write(data)
                    summary.n_kept += 1
                else:
                    by_reason[error.reason] = by_reason.get(error.reason, 0) + 1
                    entry = {
                        "file": str(inp),
                        "line": row.line,
                        "reason": error.reason,
                        "detail": error.detail,
                        "raw": row.raw,
                    }
                    frej.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace"))
                if progress and summary.n_in % PROGRESS_EVERY == 0:
                    progress(PROGRESS_EVERY)
        if progress and summary.n_in % PROGRESS_EVERY:
            progress(summary.n_in % PROGRESS_EVERY)
        os.replace(rej_tmp, summary.rejects_path)
        os.replace(out_tmp, output)
    finally:
        out_tmp.unlink(missing_ok=True)
        rej_tmp.unlink(missing_ok=True)
    return summary
