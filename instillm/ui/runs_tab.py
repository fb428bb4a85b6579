"""The Runs tab's logic: find a run's files, its config and plan, the curves of metrics.jsonl (re-read while
it trains), before/after tables per split, category, task and suite, and the failure browser and its export.

A run folder is an `instillm run` output_dir (config.yaml, results.json, train/metrics.jsonl,
train/run.json) or an `instillm train` output_dir (run.json, metrics.jsonl). Failures come from the
`samples` results.json keeps per split and task (up to 5 per task, failures first). The eval splits of
an `instillm run` folder (`eval_sets`) are what the data card measures eval overlap against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from instillm.data.importer import read_examples, refuse_overwrite, write_examples
from instillm.data.schema import Example, from_prompt_completion
from instillm.data.skills import EVAL_SPLITS
from instillm.errors import DataError
from instillm.report import load_metrics, suite_headline

ANY = "(any)"
SPLIT_HEADERS = ["split", "before", "after", "change", "baseline"]
GROUP_HEADERS = ["split", "group", "n", "before", "after", "change"]
SUITE_HEADERS = ["suite", "metric", "before", "after"]
FAILURE_HEADERS = ["split", "task", "task score", "id", "prompt", "expected", "got", "verdict"]
CURVES = {"loss": ("loss", "eval_loss"), "lr": ("lr",), "tokens_per_s": ("tokens_per_s",)}


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder that the tab reads; None where absent."""

    root: Path
    config: Path | None
    run_json: Path | None
    metrics: Path | None
    results: Path | None


def find_run(path: str | Path) -> RunFiles:
    """The files of an `instillm run` or `instillm train` output folder; DataError when it holds none."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a run folder")
    files = RunFiles(
        root,
        _first(root, "config.yaml"),
        _first(root, "run.json", "train/run.json"),
        _first(root, "metrics.jsonl", "train/metrics.jsonl"),
        _first(root, "results.json"),
    )
    if not any((files.config, files.run_json, files.metrics, files.results)):
        raise DataError(f"{root} holds no run: no config.yaml, run.json, metrics.jsonl or results.json")
    return files


def _first(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a folder `find_run` accepts."""
    try:
        find_run(path)
    except DataError:
        return False
    return True


def read_json(path: Path | None) -> dict[str, Any]:
    """A JSON object file; {} when absent or caught half-written (a running job rewrites it)."""
    if path is None or not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _run_json(files: RunFiles) -> dict[str, Any]:
    return read_json(files.run_json)


def config_text(files: RunFiles) -> str:
    """The run's config as YAML: config.yaml of `instillm run`, else the training config of run.json."""
    if files.config is not None:
        return files.config.read_text()
    config = _run_json(files).get("config")
    return yaml.safe_dump(config, sort_keys=False) if config else "# no config.yaml or run.json here"


def plan_text(files: RunFiles) -> str:
    """The resolved plan of the training run (run.json: plan, template, examples, render counts) as YAML."""
    run = _run_json(files)
    keys = ("plan", "template", "n_train_examples", "n_eval_examples", "render", "resumed_from", "started_at")
    shown = {k: run[k] for k in keys if k in run}
    return yaml.safe_dump(shown, sort_keys=False) if shown else "# no run.json yet (training has not started)"


# ------------------------------------------------------------------------------ eval splits (for the data card)


def eval_sets(files: RunFiles) -> dict[str, list[Example]]:
    """The eval splits an `instillm run` evaluates on, as `instillm run` reads them: its config's `data.eval`
    files (each named by its stem) or the skills suite's held-out splits in <run>/data, each cut to the
    config's `eval.max_examples_per_split`; {} for an `instillm train` folder (no config.yaml)."""
    config = _config(files)
    paths = eval_paths(files, config)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"the run's eval file(s) not found: {', '.join(missing)} (config.yaml's paths are relative to "
            "where the run was started)"
        )
    limit = (config.get("eval") or {}).get("max_examples_per_split")
    return {name: list(read_examples(p))[: limit or None] for name, p in paths.items()}


def _config(files: RunFiles) -> dict[str, Any]:
    """config.yaml of an `instillm run` as a mapping; {} without one."""
    if files.config is None:
        return {}
    config = yaml.safe_load(files.config.read_text())
    return config if isinstance(config, dict) else {}


def eval_paths(files: RunFiles, config: dict[str, Any]) -> dict[str, Path]:
    """Split name -> eval file of an `instillm run` (its `data.eval` files, else the suite's held-out splits)."""
    if not config:
        return {}
    data = config.get("data")
    if isinstance(data, dict):
        return {Path(p).stem: Path(p) for p in data.get("eval") or []}
    held = {s: files.root / "data" / f"{s}.jsonl" for s in EVAL_SPLITS}
    return {s: p for s, p in held.items() if p.is_file()}


# ------------------------------------------------------------------------------ curves


def read_metrics(files: RunFiles) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl (a torn last line of a running job skipped)."""
    return load_metrics(files.metrics)


def metrics_stamp(files: RunFiles) -> tuple[int, int]:
    """(size, mtime_ns) of metrics.jsonl, (0, 0) when absent: whether the curves changed since last read."""
    if files.metrics is None or not files.metrics.exists():
        return 0, 0
    st = files.metrics.stat()
    return st.st_size, st.st_mtime_ns


def curve_points(metrics: Iterable[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Long-form points {step, value, metric} of the given metrics (rows without them are skipped)."""
    return [
        {"step": row["step"], "value": float(row[k]), "metric": k}
        for row in metrics
        for k in keys
        if isinstance(row.get(k), (int, float)) and isinstance(row.get("step"), (int, float))
    ]


def progress_text(metrics: Sequence[dict[str, Any]], files: RunFiles) -> str:
    """One line: the last step logged (of the planned total), its loss, eval loss and speed."""
    train = [r for r in metrics if "loss" in r]
    if not train:
        return "no training step logged yet"
    last, total = train[-1], _run_json(files).get("plan", {}).get("total_steps")
    parts = [f"step {last.get('step')}" + (f" of {total}" if total else ""), f"loss {last['loss']:.4f}"]
    evals = [r for r in metrics if "eval_loss" in r]
    if evals:
        parts.append(f"eval_loss {evals[-1]['eval_loss']:.4f}")
    if "tokens_per_s" in last:
        parts.append(f"{last['tokens_per_s']:.0f} tokens/s")
    return " · ".join(parts)


# ------------------------------------------------------------------------------ results


def load_results(files: RunFiles) -> dict[str, Any]:
    """results.json of the run; {} before the run has finished."""
    return read_json(files.results)


def _change(before: Any, after: Any) -> Any:
    return round(after - before, 4) if isinstance(before, (int, float)) and isinstance(after, (int, float)) else ""


def _num(value: Any) -> Any:
    return round(value, 4) if isinstance(value, (int, float)) else ""


def split_rows(results: dict[str, Any]) -> list[list[Any]]:
    """Headline exact match per split (SPLIT_HEADERS)."""
    before, after, base = results.get("before", {}), results.get("after", {}), results.get("baseline", {})
    splits = list(dict.fromkeys([*after, *before]))
    return [
        [s, _num(before.get(s)), _num(after.get(s)), _change(before.get(s), after.get(s)), _num(base.get(s))]
        for s in splits
    ]


def group_rows(results: dict[str, Any], group: str = "per_category", metric: str = "exact_match") -> list[list[Any]]:
    """Before/after of `metric` per category or task (`group`: per_category | per_task) of every split."""
    details = results.get("details", {})
    before, after = details.get("before", {}), details.get("after", {})
    rows = []
    for split in dict.fromkeys([*after, *before]):
        b, a = before.get(split, {}).get(group, {}), after.get(split, {}).get(group, {})
        for name in sorted({*a, *b}):
            n = (a.get(name) or b.get(name) or {}).get("n", "")
            vb, va = b.get(name, {}).get(metric), a.get(name, {}).get(metric)
            rows.append([split, name, n, _num(vb), _num(va), _change(vb, va)])
    return rows


def suite_rows(results: dict[str, Any]) -> list[list[Any]]:
    """The headline of each evaluation suite before and after (SUITE_HEADERS)."""
    rows = []
    for name, entry in (results.get("suites") or {}).items():
        metric, after = suite_headline(name, entry.get("after") or {})
        _, before = suite_headline(name, entry.get("before") or {})
        rows.append([name, metric, _num(before), _num(after)])
    return rows


# ------------------------------------------------------------------------------ failures


def failures(results: dict[str, Any], stage: str = "after") -> list[dict[str, Any]]:
    """Sample answers scored wrong (correct < 1) at `stage`, worst tasks first (by the task's score)."""
    found = []
    for split, res in results.get("details", {}).get(stage, {}).items():
        per_task = res.get("per_task", {})
        for task, samples in res.get("samples", {}).items():
            score = per_task.get(task, {}).get("correct")
            found += [{**s, "split": split, "task_score": score} for s in samples if s.get("correct", 0) < 1]
    return sorted(found, key=lambda f: (_score(f["task_score"]), f["task"], f["split"]))


def _score(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def failure_tasks(found: Iterable[dict[str, Any]]) -> list[str]:
    """ANY, then the tasks with failures, worst first."""
    return [ANY, *dict.fromkeys(f["task"] for f in found)]


def failure_splits(found: Iterable[dict[str, Any]]) -> list[str]:
    """ANY, then the splits with failures."""
    return [ANY, *sorted({f["split"] for f in found})]


def select_failures(found: Iterable[dict[str, Any]], task: str = ANY, split: str = ANY) -> list[dict[str, Any]]:
    """The failures of one task and/or split."""
    return [f for f in found if task in (ANY, f["task"]) and split in (ANY, f["split"])]


def verdict(f: dict[str, Any]) -> str:
    """The checker's verdict in words: correct (the family checker where there is one, else exact match)."""
    return (
        f"correct {f.get('correct', 0):g} · exact match {f.get('exact_match', 0):g} · ROUGE-L {f.get('rouge_l', 0):.2f}"
    )


def failure_rows(found: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """Rows for the failure table (FAILURE_HEADERS)."""
    return [
        [f["split"], f["task"], _num(f["task_score"]), f.get("id", ""), f.get("prompt", ""), f.get("reference", "")]
        + [f.get("prediction", ""), verdict(f)]
        for f in found
    ]


def failure_example(f: dict[str, Any], source: str) -> Example:
    """A failure as a canonical example (prompt → expected answer), the wrong answer and scores in meta."""
    meta = {"failure": {k: f.get(k) for k in ("split", "prediction", "correct", "exact_match", "rouge_l")}}
    meta["failure"]["id"] = f.get("id")
    return from_prompt_completion(
        f.get("prompt", ""),
        f.get("reference", ""),
        id=f"failure-{f['split']}-{f.get('id', '')}",
        source=source,
        task=f.get("task", ""),
        category=f.get("category", "") if f.get("category") != "(none)" else "",
        meta=meta,
    )


def export_failures(files: RunFiles, found: Iterable[dict[str, Any]], output: str | Path) -> tuple[Path, int]:
    """Write failures as canonical JSONL (to seed the next data round), never over a file of the run."""
    out = Path(output)
    protected = [p for p in (files.results, files.metrics, files.config, files.run_json) if p is not None]
    refuse_overwrite(protected, {f"output {out}": out})
    examples = [failure_example(f, str(files.results or files.root)) for f in found]
    if not examples:
        raise DataError("no failures to export (none shown with this filter)")
    return write_examples(examples, out), len(examples)
