"""The run report: before/after tables and plots, the loss curve, failures, and what to fix next.

Input is a run's `results.json` dict (keys `before`/`after`: split → exact match, and
`details`: stage → split → per-task/per-category scores with sample predictions; optionally
`suites`: suite (ifeval, zeroshot, mt_bench, judge) → {before, after} → that suite's results,
see `instillm.evaluate.suites`) plus the training `metrics.jsonl`. Output: `report.md`,
`report.html` and PNG plots beside them (one per suite: `suite_<name>.png`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

WEAK = 0.8  # a task or category below this "correct" rate is called out in "what to do next"


def load_metrics(path: Path | None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file (empty when absent); a torn line (a run killed mid-write) is skipped."""
    if path is None or not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text(errors="replace").split("\n"):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # blank, or torn by a kill mid-write
    return [r for r in rows if isinstance(r, dict)]


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
    if not advice and after:
        advice.append(f"Every task is at or above {weak:.0%}; add harder families or a larger model next.")
    return advice + suite_advice(results.get("suites") or {})


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
    md += _table(
        ["split", "before", "after", "most-frequent-answer baseline"],
        [[s, before.get(s, float("nan")), after[s], baseline.get(s, "—")] for s in after],
    )
    md += ["", f"![before vs after]({plots['before_after'].name})", ""]
    details = results.get("details", {}).get("after", {})
    if details:
        md += ["## After fine-tuning, per category", ""]
        cats = sorted({c for r in details.values() for c in r["per_category"]})
        md += _table(
            ["category", *details],
            [[c, *(details[s]["per_category"].get(c, {}).get("correct", float("nan")) for s in details)] for c in cats],
        )
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
        md += _table(
            ["split", "task", "prompt", "reference", "prediction"],
            [[s, t, _cell(x["prompt"]), _cell(x["reference"]), _cell(x["prediction"])] for s, t, x in fails],
        )
        md += [""]
    md += suites_markdown(results.get("suites") or {}, plots)
    md += ["## What to do next", ""] + [f"- {a}" for a in advice] + [""]
    return "\n".join(md)


def zeroshot_markdown(zeroshot: dict[str, Any]) -> list[str]:
    """The zero-shot T0 section: per cluster, accuracy and ROUGE-L of each stage given.

    `zeroshot` maps a stage ("before", "after") to the results dict of `eval zeroshot`
    (`ZeroShotResult.to_dict()`); absent or empty, the section is left out.
    """
    stages = [s for s in ("before", "after") if zeroshot.get(s)]
    if not stages:
        return []
    clusters = sorted({c for s in stages for c in zeroshot[s]["clusters"]})
    nan = float("nan")

    def cell(stage: str, cluster: str, metric: str) -> Any:
        value = zeroshot[stage]["clusters"].get(cluster, {}).get(metric)
        return nan if value is None else value

    header = ["cluster", *(f"accuracy {s}" for s in stages), *(f"ROUGE-L {s}" for s in stages)]
    rows = [[c, *(cell(s, c, "accuracy") for s in stages), *(cell(s, c, "rouge_l") for s in stages)] for c in clusters]
    md = [
        "## Zero-shot T0 clusters",
        "",
        "Rank-classification accuracy and ROUGE-L: median over templates per dataset, mean over a "
        "cluster's datasets (nan: the cluster has no template of that kind).",
        "",
    ]
    return md + _table(header, rows) + [""]


# --------------------------------------------------------------------------------------------
# evaluation suites (results["suites"][name] = {"before": ..., "after": ...})

STAGE_NAMES = ("before", "after")
NAN = float("nan")


def _stages(entry: dict[str, Any]) -> list[str]:
    """The stages of a suite entry that hold results."""
    return [s for s in STAGE_NAMES if entry.get(s)]


def _num(value: Any) -> Any:
    return NAN if value is None else value


def suite_categories(name: str, res: dict[str, Any]) -> dict[str, float | None]:
    """A suite's score per category: IFEval strict accuracy per instruction group, zero-shot accuracy per
    cluster (ROUGE-L for clusters without a classification template, marked `(R-L)`), MT-Bench score per
    category, judge win rate (%) per dataset."""
    if name == "ifeval":
        return {g: v["strict"] for g, v in res.get("per_group", {}).items()}
    if name == "zeroshot":
        return {
            (c if v.get("accuracy") is not None else f"{c} (R-L)"): (
                v["accuracy"] if v.get("accuracy") is not None else v.get("rouge_l")
            )
            for c, v in res.get("clusters", {}).items()
        }
    if name == "mt_bench":
        return {c: v["score"] for c, v in res.get("per_category", {}).items()}
    if name == "judge":
        return {d: (v.get("win_rate") or {}).get("win_rate") for d, v in res.get("per_dataset", {}).items()}
    return {}


def suite_headline(name: str, res: dict[str, Any]) -> tuple[str, float | None]:
    """(metric, value) a suite is summed up by: IFEval prompt-level strict, zero-shot mean accuracy over
    clusters, MT-Bench mean score, judge win rate (%)."""
    if name == "ifeval":
        return "prompt-level strict accuracy", res.get("prompt_level_strict")
    if name == "zeroshot":
        return "accuracy (mean over clusters)", (res.get("overall") or {}).get("accuracy")
    if name == "mt_bench":
        return "score (1-10)", res.get("score")
    return "win rate (%)", (res.get("win_rate") or {}).get("win_rate")


_SCALE = {
    "ifeval": (1.0, "accuracy (strict)"),
    "zeroshot": (1.0, "accuracy / ROUGE-L"),
    "mt_bench": (10.0, "score (1-10)"),
    "judge": (100.0, "win rate (%)"),
}
_TITLES = {"ifeval": "IFEval", "zeroshot": "Zero-shot T0", "mt_bench": "MT-Bench", "judge": "Pairwise judge"}


def plot_suite(name: str, entry: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars, before vs after: the suite's headline ("overall") and its score per category."""
    stages = _stages(entry)
    if not stages or name not in _SCALE:
        return None
    cats = sorted({c for s in stages for c in suite_categories(name, entry[s])})
    labels = ["overall", *cats]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, len(labels) * 0.8), 3.8))
    width = 0.8 / len(stages)
    for k, stage in enumerate(stages):
        per = suite_categories(name, entry[stage])
        vals = [suite_headline(name, entry[stage])[1], *(per.get(c) for c in cats)]
        xs = [i + k * width - 0.4 + width / 2 for i in range(len(labels))]
        ax.bar(xs, [0.0 if v is None else v for v in vals], width, label=stage)
    ymax, ylabel = _SCALE[name]
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylim(0, ymax)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(f"{_TITLES[name]} before and after fine-tuning")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _stage_table(entry: dict[str, Any], rows: list[tuple[str, Any]]) -> list[str]:
    """metric | before | after, each row a (label, function of a stage's results)."""
    stages = _stages(entry)
    return _table(["metric", *stages], [[label, *(fn(entry[s]) for s in stages)] for label, fn in rows])


def ifeval_markdown(entry: dict[str, Any]) -> list[str]:
    """IFEval: the four accuracies, then strict / loose accuracy per instruction group."""
    stages = _stages(entry)
    metrics = [
        (k.replace("_", " "), lambda r, k=k: _num(r.get(k)))
        for k in ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose", "instruction_level_loose")
    ]
    md = [
        "## IFEval",
        "",
        "Verifiable instruction following (Zhou et al., 2023): greedy answers, strict and loose checks.",
        "",
    ]
    md += _stage_table(entry, [*metrics, ("prompts", lambda r: r.get("num_prompts", 0))]) + [""]
    groups = sorted({g for s in stages for g in entry[s].get("per_group", {})})
    cell = lambda s, g, m: _num(entry[s].get("per_group", {}).get(g, {}).get(m))  # noqa: E731
    md += ["Per instruction group (the instruction id's prefix; n: instructions checked):", ""]
    md += _table(
        ["group", "n", *(f"strict {s}" for s in stages), *(f"loose {s}" for s in stages)],
        [
            [
                g,
                entry[stages[-1]].get("per_group", {}).get(g, {}).get("n", 0),
                *(cell(s, g, "strict") for s in stages),
                *(cell(s, g, "loose") for s in stages),
            ]
            for g in groups
        ],
    )
    return md + [""]


def zeroshot_suite_markdown(entry: dict[str, Any]) -> list[str]:
    """Zero-shot T0: the per-cluster section (`zeroshot_markdown`), then the overall means and counts."""
    md = zeroshot_markdown(entry)
    md += ["Overall (mean over clusters):", ""]
    md += _stage_table(
        entry,
        [
            ("accuracy", lambda r: _num((r.get("overall") or {}).get("accuracy"))),
            ("ROUGE-L", lambda r: _num((r.get("overall") or {}).get("rouge_l"))),
            ("templates scored", lambda r: len(r.get("templates", {}))),
            ("templates skipped", lambda r: len(r.get("skipped", {}))),
        ],
    )
    return md + [""]


def mt_bench_markdown(entry: dict[str, Any]) -> list[str]:
    """MT-Bench: mean score, judgments and failures; then score per turn and per category."""
    stages = _stages(entry)
    md = [
        "## MT-Bench",
        "",
        "Single-answer grading 1-10 by the judge (FastChat's prompts); judgments without a "
        "rating are failures, left out of the means.",
        "",
    ]
    md += _stage_table(
        entry,
        [
            ("score (1-10)", lambda r: _num(r.get("score"))),
            ("judgments", lambda r: r.get("n_judgments", 0)),
            ("failures", lambda r: r.get("n_failures", 0)),
            ("judge", lambda r: r.get("judge", "")),
        ],
    ) + [""]
    keys = [("per_turn", f"turn {t}", t) for t in sorted({t for s in stages for t in entry[s].get("per_turn", {})})]
    keys += [("per_category", c, c) for c in sorted({c for s in stages for c in entry[s].get("per_category", {})})]
    cell = lambda s, part, k, m: entry[s].get(part, {}).get(k, {}).get(m)  # noqa: E731
    md += _table(
        ["", *(f"score {s}" for s in stages), *(f"n {s}" for s in stages), *(f"failures {s}" for s in stages)],
        [
            [
                label,
                *(_num(cell(s, part, k, "score")) for s in stages),
                *(_num(cell(s, part, k, "n")) for s in stages),
                *(_num(cell(s, part, k, "n_failures")) for s in stages),
            ]
            for part, label, k in keys
        ],
    )
    return md + [""]


def _win(res: dict[str, Any], key: str) -> str:
    value = (res.get("win_rate") or {}).get(key)
    return "—" if value is None else f"{value:.2f}"


def _win_se(res: dict[str, Any]) -> str:
    wr = res.get("win_rate")
    return "—" if not wr else f"{wr['win_rate']:.2f} ± {wr['standard_error']:.2f}"


def _share(res: dict[str, Any], k: str, n: str) -> str:
    """Counts `k` of `n` in a results dict as "12.5% (5 / 40)"; "—" when absent or n is 0."""
    num, den = res.get(k), res.get(n)
    return f"{num / den:.1%} ({num} / {den})" if isinstance(num, int) and isinstance(den, int) and den else "—"


def _agreement_rows() -> list[tuple[str, Any]]:
    """Rows of a judge's agreement with reference annotations (`instillm.evaluate.judge.agreement`)."""
    get = lambda r: r.get("agreement") or {}  # noqa: E731
    return [
        ("agreement with reference annotations (decided pairs)", lambda r: _share(get(r), "n_agree", "n_decided")),
        ("Cohen's kappa", lambda r: "—" if get(r).get("kappa") is None else f"{get(r)['kappa']:.3f}"),
        ("pairs matched to the annotations", lambda r: _share(get(r), "n_matched", "n_rows")),
        (
            "ties (ours; reference)",
            lambda r: f"{get(r)['n_ties_ours']}; {get(r)['n_ties_reference']}" if get(r) else "—",
        ),
    ]


def judge_markdown(entry: dict[str, Any]) -> list[str]:
    """Pairwise judge: win rate ± se, LC win rate, n and failures, the judge's failure modes (parse
    failures, position flips, first-position picks) and agreement with reference annotations when
    there; then win rate per dataset."""
    stages = _stages(entry)
    last = entry[stages[-1]]
    md = [
        "## Pairwise judge",
        "",
        f"{last.get('model', 'model')} vs {last.get('reference', 'reference')}, judged by {last.get('judge', '?')} "
        "in both orders (AlpacaEval conventions; a pair without both verdicts is a failure).",
        "",
        "The judge's failure modes: parse failures are the replies it gave that could not be read; a position "
        "flip is a pair (both replies read) whose preferred output changed when the two outputs swapped places, "
        "so the judge followed the position, not the content (0% is consistent); first-position picks are the "
        "verdicts naming whichever output was shown first (50% is unbiased, 100% always the first).",
        "",
    ]
    agreement = any(entry[s].get("agreement") for s in stages)
    md += _stage_table(
        entry,
        [
            ("win rate (%) ± se", _win_se),
            ("LC win rate (%)", lambda r: _win(r, "lc_win_rate")),
            ("discrete win rate (%)", lambda r: _win(r, "discrete_win_rate")),
            ("pairs judged / total", lambda r: f"{r.get('n_judged', 0)} / {r.get('n_pairs', 0)}"),
            ("failures (pairs; orders)", lambda r: f"{r.get('n_failures', 0)}; {r.get('n_failed_orders', 0)}"),
            ("parse failure rate (replies)", lambda r: _share(r, "n_failed_orders", "n_replies")),
            ("position flip rate (pairs, both read)", lambda r: _share(r, "n_flips", "n_both_read")),
            ("first-position rate (verdicts)", lambda r: _share(r, "n_first_position", "n_decided_verdicts")),
            *(_agreement_rows() if agreement else []),
        ],
    ) + [""]
    datasets = sorted({d for s in stages for d in entry[s].get("per_dataset", {})})
    per = lambda s, d: entry[s].get("per_dataset", {}).get(d, {})  # noqa: E731
    md += _table(
        ["dataset", *(f"win rate {s}" for s in stages), *(f"judged / pairs {s}" for s in stages)],
        [
            [
                d,
                *(_win_se(per(s, d)) for s in stages),
                *(f"{per(s, d).get('n_judged', 0)} / {per(s, d).get('n_pairs', 0)}" for s in stages),
            ]
            for d in datasets
        ],
    )
    return md + [""]


_SECTIONS = {
    "ifeval": ifeval_markdown,
    "zeroshot": zeroshot_suite_markdown,
    "mt_bench": mt_bench_markdown,
    "judge": judge_markdown,
}


def suites_markdown(suites: dict[str, Any], plots: dict[str, Path]) -> list[str]:
    """One section per suite with results, each followed by its plot."""
    md: list[str] = []
    for name, entry in suites.items():
        if name not in _SECTIONS or not _stages(entry or {}):
            continue
        md += _SECTIONS[name](entry)
        if f"suite_{name}" in plots:
            md += [f"![{_TITLES[name]} before vs after]({plots[f'suite_{name}'].name})", ""]
    return md


_ADVICE = {
    "ifeval": (
        "IFEval: weakest instruction groups (strict accuracy)",
        "Add training examples whose instructions carry these verifiable constraints (formats, lengths, keywords).",
    ),
    "zeroshot": (
        "Zero-shot T0: weakest clusters",
        "Add training tasks related to these clusters, or more prompt templates of the trained ones.",
    ),
    "mt_bench": ("MT-Bench: weakest categories (1-10)", "Add multi-turn conversations of these categories."),
    "judge": (
        "Pairwise judge: datasets losing to the reference (win rate %)",
        "Add instructions resembling these datasets.",
    ),
}


def _fmt(name: str, value: float) -> str:
    return f"{value:.0%}" if name in ("ifeval", "zeroshot") else f"{value:.1f}" if name == "judge" else f"{value:.2f}"


def suite_advice(suites: dict[str, Any], k: int = 3, weak: float = WEAK) -> list[str]:
    """Per suite: its `k` weakest categories below `weak` of the scale (judge: below a 50% win rate), after
    training (else before), a headline that fell with fine-tuning, and judge failures."""
    advice = []
    for name, entry in suites.items():
        stages = _stages(entry or {})
        if name not in _ADVICE or not stages:
            continue
        res = entry[stages[-1]]
        below = weak * _SCALE[name][0] if name != "judge" else 50.0  # judge: losing to the reference
        scored = [(v, c) for c, v in suite_categories(name, res).items() if v is not None]
        cats = sorted((v, c) for v, c in scored if v < below)
        title, hint = _ADVICE[name]
        if scored and not cats:
            advice.append(f"{title}, {stages[-1]}: every category at or above {_fmt(name, below)}.")
        if cats:
            line = f"{title}, {stages[-1]}: " + ", ".join(f"{c} ({_fmt(name, v)})" for v, c in cats[:k])
            metric, now = suite_headline(name, res)
            was = suite_headline(name, entry["before"])[1] if len(stages) == 2 else None
            if now is not None and was is not None and now < was:
                line += f". Its {metric} fell from {_fmt(name, was)} to {_fmt(name, now)} with fine-tuning"
            advice.append(f"{line}. {hint}")
        if name in ("judge", "mt_bench") and res.get("n_failures"):
            total, unit = (res["n_pairs"], "pairs") if name == "judge" else (res.get("n_judgments"), "judgments")
            advice.append(
                f"{_TITLES[name]}, {stages[-1]}: {res['n_failures']} of {total} {unit} have no readable "
                "verdict; check the judge model and its prompt (the raw judge texts are in "
                f"{name}_{stages[-1]}/)."
            )
    return advice


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
            body.append(
                ("<table>" if not in_table else "") + "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"
            )
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
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
    )
    head = f"<head><meta charset='utf-8'><title>instillm report</title><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(body)}</body></html>\n"


def write_report(
    results: dict[str, Any], out_dir: str | Path, metrics_path: str | Path | None = None
) -> dict[str, Path]:
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
    for name, entry in (results.get("suites") or {}).items():
        path = plot_suite(name, entry, out / f"suite_{name}.png")
        if path:
            plots[f"suite_{name}"] = path
    md = _markdown(results, plots, next_steps(results))
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(_html(md), encoding="utf-8")
    return {"report.md": out / "report.md", "report.html": out / "report.html", **plots}
