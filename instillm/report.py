"""The run report: before/after tables and plots, the loss curve, failures, and what to fix next.

Input is a run's `results.json` dict (keys `before`/`after`: split → exact match, and
`details`: stage → split → per-task/per-category scores with sample predictions) plus the
training `metrics.jsonl`. Output: `report.md`, `report.html` and PNG plots beside them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

WEAK = 0.8  # a task or category below this "correct" rate is called out in "what to do next"


def load_metrics(path: Path | None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file (empty when absent)."""
    if path is None or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_before_after(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: exact match per split, before vs after training."""
    plt = _plt()
    splits = list(results.get("after", {}))
    before = [results.get("before", {}).get(s, 0.0) for s in splits]
    after = [results["after"][s] for s in splits]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(splits))
    ax.bar([x - 0.2 for x in xs], before, 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], after, 0.4, label="after")
    ax.set_xticks(list(xs), splits, rotation=10)
    ax.set_ylim(0, 1)
    ax.set_ylabel("exact match")
    ax.legend()
    ax.set_title("Held-out exact match before and after fine-tuning")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_categories(details: dict[str, Any], path: Path) -> Path:
    """Bars of the 'correct' rate per category, one group per split (after training)."""
    plt = _plt()
    splits = list(details)
    cats = sorted({c for s in splits for c in details[s]["per_category"]})
    fig, ax = plt.subplots(figsize=(max(7, len(cats) * 0.9), 3.8))
    width = 0.8 / max(1, len(splits))
    for k, split in enumerate(splits):
        vals = [details[split]["per_category"].get(c, {}).get("correct", 0.0) for c in cats]
        ax.bar([i + k * width - 0.4 + width / 2 for i in range(len(cats))], vals, width, label=split)
    ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("correct")
    ax.legend(fontsize=8)
    ax.set_title("After fine-tuning, per category")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss(metrics: list[dict[str, Any]], path: Path) -> Path | None:
    """Training (and eval) loss against optimizer step."""
    train = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    if not train:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(*zip(*train), label="train loss")
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.set_title("Training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def next_steps(results: dict[str, Any], weak: float = WEAK) -> list[str]:
    """Plain-language advice from the after-training scores: which tasks and splits fail."""
    after = results.get("details", {}).get("after", {})
    advice = []
    for split, res in after.items():
        bad = sorted((v["correct"], t) for t, v in res["per_task"].items() if v["correct"] < weak)
        if not bad:
            continue
        names = ", ".join(f"{t} ({c:.0%})" for c, t in bad[:8])
        advice.append(f"{split}: {len(bad)} task(s) below {weak:.0%}: {names}. " + _hint(split))
    if not advice:
        advice.append(f"Every task is at or above {weak:.0%}; add harder families or a larger model next.")
    return advice


def _hint(split: str) -> str:
    return {
        "heldout_instances": "Train longer or add more examples of these tasks.",
        "heldout_phrasings": "Add more instruction phrasings of these families to the training data.",
        "heldout_families": "Zero-shot tasks: add related families or compositions to the training mix.",
    }.get(split, "Add training data resembling these tasks.")


def _failures(details: dict[str, Any], k: int = 2) -> list[tuple[str, str, dict[str, Any]]]:
    """The worst sample predictions per task (failures only), per split."""
    rows = []
    for split, res in details.items():
        for task, samples in sorted(res.get("samples", {}).items()):
            rows += [(split, task, s) for s in samples if s["correct"] < 1][:k]
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]


def _markdown(results: dict[str, Any], plots: dict[str, Path], advice: list[str]) -> str:
    before, after = results.get("before", {}), results.get("after", {})
    baseline = results.get("baseline", {})
    md = [f"# instillm run report: {results.get('name', '')}".rstrip(), ""]
    md += ["## Held-out exact match", ""]
    md += _table(["split", "before", "after", "most-frequent-answer baseline"],
                 [[s, before.get(s, float("nan")), after[s], baseline.get(s, "—")] for s in after])
    md += ["", f"![before vs after]({plots['before_after'].name})", ""]
    details = results.get("details", {}).get("after", {})
    if details:
        md += ["## After fine-tuning, per category", ""]
        cats = sorted({c for r in details.values() for c in r["per_category"]})
        md += _table(["category", *details], [[c, *(details[s]["per_category"].get(c, {}).get("correct", float("nan"))
                                                      for s in details)] for c in cats])
        md += ["", f"![categories]({plots['categories'].name})", ""]
    if "loss" in plots:
        md += ["## Training loss", "", f"![loss]({plots['loss'].name})", ""]
    if results.get("train"):
        md += _table(["training", "value"], [[k, v] for k, v in results["train"].items()]) + [""]
    if results.get("data"):
        md += ["## Data", ""] + _table(["data", "value"], [[k, v] for k, v in results["data"].items()]) + [""]
    fails = _failures(details)
    if fails:
        md += ["## Worst failures per task", ""]
        md += _table(["split", "task", "prompt", "reference", "prediction"],
                     [[s, t, _cell(x["prompt"]), _cell(x["reference"]), _cell(x["prediction"])] for s, t, x in fails])
        md += [""]
    md += ["## What to do next", ""] + [f"- {a}" for a in advice] + [""]
    return "\n".join(md)


def _cell(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _html(markdown: str) -> str:
    """A self-contained HTML page from the report's markdown subset (headings, tables, images, lists)."""
    body, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [html.escape(c.strip()).replace("\\|", "|") for c in line.strip("|").split(" | ")]
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if line.startswith("|---"):
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>instillm report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def write_report(results: dict[str, Any], out_dir: str | Path, metrics_path: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html and PNG plots into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"before_after": plot_before_after(results, out / "before_after.png")}
    details = results.get("details", {}).get("after", {})
    if details:
        plots["categories"] = plot_categories(details, out / "categories.png")
    loss = plot_loss(load_metrics(Path(metrics_path) if metrics_path else None), out / "loss.png")
    if loss:
        plots["loss"] = loss
    md = _markdown(results, plots, next_steps(results))
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(_html(md), encoding="utf-8")
    return {"report.md": out / "report.md", "report.html": out / "report.html", **plots}
