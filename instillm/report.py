"""The run report: before/after tables and plots, the loss curve, the data card, failures, and what to fix next.

Input is a run's `results.json` dict (keys `before`/`after`: split → exact match, and
`details`: stage → split → per-task/per-category scores with sample predictions; optionally
`suites`: suite (ifeval, zeroshot, mt_bench, judge) → {before, after} → that suite's results,
see `instillm.evaluate.suites`; optionally `data_card`: the training data's card, see
`instillm.data.card`, with near-duplicate clusters and overlap with the run's eval splits as
`instillm.curate.card` computes them) plus the training `metrics.jsonl`. Output: `report.md`, `report.html` and
PNG plots beside them (one per suite: `suite_<name>.png`). A cell without a number (a split
without rows, a stage not run, a metric not computed) reads "—". report.html also holds the data
card's plots (inline) and links each failing task to its failing rows.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from instillm.data.card import card_sections_html

WEAK = 0.8  # a task or category below this "correct" rate is called out in "what to do next"
DASH = "—"  # a cell without a number
CARD_MARKER = "<!-- instillm:data-card -->"  # report.md's placeholder for the card's HTML sections


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


def loss_points(metrics: Sequence[dict[str, Any]], key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) of every metrics row holding `key`, by step: the curve from the first logged step."""
    return sorted((m["step"], m[key]) for m in metrics if m.get(key) is not None and m.get("step") is not None)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def split_score(results: dict[str, Any], stage: str, split: str) -> float | None:
    """A split's exact match at `stage`; None when the stage did not run or the split has no rows."""
    details = results.get("details", {}).get(stage, {}).get(split)
    if details is not None and not details.get("n"):
        return None
    return results.get(stage, {}).get(split)


def plot_before_after(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: exact match per split, before vs after training (no bar where a split has no rows)."""
    plt = _plt()
    splits = list(results.get("after", {}))
    labels = [s if split_score(results, "after", s) is not None else f"{s}\n(no rows)" for s in splits]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for offset, stage in ((-0.2, "before"), (0.2, "after")):
        vals = [split_score(results, stage, s) for s in splits]
        ax.bar([x + offset for x in range(len(splits))], [v or 0.0 for v in vals], 0.4, label=stage)
    ax.set_xticks(list(range(len(splits))), labels, rotation=10)
    ax.set_ylim(0, 1)
    ax.set_ylabel("exact match")
    ax.legend()
    ax.set_title("Held-out exact match before and after fine-tuning")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    """Write the figure as a PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
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
    return _save(fig, path)


def plot_loss(metrics: list[dict[str, Any]], path: Path) -> Path | None:
    """Training (and eval) loss against optimizer step, from the first logged step, the x axis from 0."""
    train = loss_points(metrics)
    if not train:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(*zip(*train), marker="." if len(train) <= 60 else None, label="train loss")
    evals = loss_points(metrics, "eval_loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlim(left=0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.set_title("Training loss")
    return _save(fig, path)


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


def failing_tasks(details: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(split, task, its scores) of every task with a wrong answer, worst first within each split."""
    rows = []
    for split, res in details.items():
        ranked = sorted(res.get("per_task", {}).items(), key=lambda kv: (kv[1]["correct"], kv[0]))
        rows += [(split, task, scores) for task, scores in ranked if scores["correct"] < 1]
    return rows


def failing_anchors(keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A unique in-page id per (split, task): `fail-<split>-<task>`, other characters as '-'."""
    anchors: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    for key in keys:
        base = "fail-" + re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(key))
        anchor, k = base, 1
        while anchor in taken:
            k += 1
            anchor = f"{base}-{k}"
        anchors[key] = anchor
        taken.add(anchor)
    return anchors


def _show(value: Any) -> str:
    """A table cell: a float to 3 decimals, None or nan as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_show(v) for v in r) + " |" for r in rows]


def headline_markdown(results: dict[str, Any], plot: Path) -> list[str]:
    """Exact match per split before and after, beside the baseline; a dash where there is no number."""
    splits = list(results.get("after", {}))
    baseline = results.get("baseline", {})
    rows = [[s, split_score(results, "before", s), split_score(results, "after", s), baseline.get(s)] for s in splits]
    md = ["## Held-out exact match", ""]
    md += _table(["split", "before", "after", "most-frequent-answer baseline"], rows) + [""]
    if any(v is None for r in rows for v in r):
        md += [f"{DASH}: the split has no rows, the stage did not run, or there is no baseline for it.", ""]
    return md + [f"![before vs after]({plot.name})", ""]


def categories_markdown(details: dict[str, Any], plot: Path) -> list[str]:
    """The 'correct' rate per category and split after training; a dash where a split has none of it."""
    cats = sorted({c for r in details.values() for c in r["per_category"]})
    cell = lambda s, c: details[s]["per_category"].get(c, {}).get("correct")  # noqa: E731
    md = ["## After fine-tuning, per category", ""]
    md += _table(["category", *details], [[c, *(cell(s, c) for s in details)] for c in cats])
    return md + ["", f"![categories]({plot.name})", ""]


def loss_markdown(metrics: Sequence[dict[str, Any]], plot: Path) -> list[str]:
    """The loss curve with its first and last logged points."""
    train = loss_points(metrics)
    (first, l0), (last, l1) = train[0], train[-1]
    line = f"Train loss logged from step {first} ({l0:.3f}) to step {last} ({l1:.3f}), {len(train)} point(s)."
    return ["## Training loss", "", line, "", f"![loss]({plot.name})", ""]


def card_markdown(card: dict[str, Any] | None) -> list[str]:
    """The training data card: a summary line, then (report.html only) the card's sections with plots."""
    if not card:
        return []
    comp = card["composition"]
    counts = ", ".join(f"{len(comp.get(f, []))} {f}(s)" for f in ("task", "category", "source"))
    return [
        "## Training data card {#data-card}",
        "",
        f"{card['n_examples']} training row(s): {counts}{card_checks_summary(card)}. In report.html, with plots: "
        f"{card_sections_named(card)}.",
        "",
        CARD_MARKER,
        "",
    ]


def card_checks_summary(card: dict[str, Any]) -> str:
    """The near-duplicate and eval-overlap counts, each as "; ...", for the sections the card holds."""
    nd, ov = card.get("near_duplicates"), card.get("eval_overlap")
    parts = [f"{nd['n_clusters']} near-duplicate cluster(s) of {nd['n_rows']} row(s)"] if nd else []
    parts += [f"{ov['n_rows']} row(s) overlap the run's eval splits"] if ov else []
    return "".join(f"; {p}" for p in parts)


def card_sections_named(card: dict[str, Any]) -> str:
    """The sections report.html shows, in words."""
    names = ["composition", "lengths", "languages", "leading verbs"]
    names += ["near-duplicate clusters"] if card.get("near_duplicates") else []
    if card.get("eval_overlap"):
        names.append("overlap with the run's eval splits (template text that many training rows share is no overlap)")
    return "the card's " + ", ".join(names[:-1]) + " and " + names[-1]


def failing_tasks_markdown(fails: list[tuple[str, str, dict[str, Any]]], anchors: dict) -> list[str]:
    """After training, every task with a wrong answer, each linked to its failing rows."""
    if not fails:
        return []
    rows = [
        [_cell(s), f"[{_cell(t)}](#{anchors[(s, t)]})", v["correct"], f"{_wrong(v)} / {v['n']}"] for s, t, v in fails
    ]
    md = ["## Failing tasks {#failing-tasks}", ""]
    md += ["After fine-tuning, every task with a wrong answer, worst first; each links to its failing rows.", ""]
    return md + _table(["split", "task", "correct", "wrong / rows"], rows) + [""]


def _wrong(scores: dict[str, Any]) -> int:
    """How many of a task's rows are wrong (each row is right or wrong)."""
    return round(scores["n"] * (1 - scores["correct"]))


def failing_rows_markdown(details: dict[str, Any], fails: list, anchors: dict) -> list[str]:
    """One subsection per failing task (its anchor): the failing rows results.json keeps for it."""
    if not fails:
        return []
    md = ["## Failing rows", "", "The wrong answers kept in results.json (a task's worst rows), after fine-tuning.", ""]
    for split, task, scores in fails:
        md += _task_rows(split, task, scores, details[split].get("samples", {}).get(task, []), anchors[(split, task)])
    return md


def _task_rows(split: str, task: str, scores: dict[str, Any], samples: list, anchor: str) -> list[str]:
    """A failing task's subsection: heading with its anchor, counts, a link back, its wrong rows."""
    kept = [x for x in samples if x["correct"] < 1]
    counts = f"{_wrong(scores)} of {scores['n']} row(s) wrong, {len(kept)} shown."
    md = [f"### {split} / {task} {{#{anchor}}}", "", f"{counts} [Back to failing tasks](#failing-tasks)", ""]
    if kept:
        md += _table(["prompt", "expected", "got", "verdict"], [_row(x) for x in kept])
    return md + [""]


def _row(sample: dict[str, Any]) -> list[str]:
    """prompt | expected | got | verdict of one scored row."""
    got = _cell(sample["prediction"], 200) or "(empty)"
    return [_cell(sample["prompt"], 200), _cell(sample["reference"], 200), got, _verdict(sample)]


def _verdict(sample: dict[str, Any]) -> str:
    """'wrong' or 'partly right (c)', with the row's exact match and ROUGE-L."""
    c = sample["correct"]
    head = "wrong" if c == 0 else f"partly right ({c:.2f})"
    return f"{head}; exact match {sample.get('exact_match', 0):.0f}, ROUGE-L {sample.get('rouge_l', 0):.2f}"


def _markdown(
    results: dict[str, Any], plots: dict[str, Path], advice: list[str], metrics: Sequence[dict[str, Any]] = ()
) -> str:
    details = results.get("details", {}).get("after", {})
    fails = failing_tasks(details)
    anchors = failing_anchors([(s, t) for s, t, _ in fails])
    md = [f"# instillm run report: {results.get('name', '')}".rstrip(), ""]
    md += headline_markdown(results, plots["before_after"])
    md += categories_markdown(details, plots["categories"]) if details else []
    md += loss_markdown(metrics, plots["loss"]) if "loss" in plots else []
    if results.get("train"):
        md += _table(["training", "value"], [[k, v] for k, v in results["train"].items()]) + [""]
    if results.get("data"):
        md += ["## Data", ""] + _table(["data", "value"], [[k, v] for k, v in results["data"].items()]) + [""]
    md += card_markdown(results.get("data_card"))
    md += failing_tasks_markdown(fails, anchors)
    md += suites_markdown(results.get("suites") or {}, plots)
    md += ["## What to do next", ""] + [f"- {a}" for a in advice] + [""]
    return "\n".join(md + failing_rows_markdown(details, fails, anchors))


def zeroshot_markdown(zeroshot: dict[str, Any]) -> list[str]:
    """The zero-shot T0 section: per cluster, accuracy and ROUGE-L of each stage given.

    `zeroshot` maps a stage ("before", "after") to the results dict of `eval zeroshot`
    (`ZeroShotResult.to_dict()`); absent or empty, the section is left out.
    """
    stages = [s for s in ("before", "after") if zeroshot.get(s)]
    if not stages:
        return []
    clusters = sorted({c for s in stages for c in zeroshot[s]["clusters"]})

    def cell(stage: str, cluster: str, metric: str) -> Any:
        return zeroshot[stage]["clusters"].get(cluster, {}).get(metric)

    header = ["cluster", *(f"accuracy {s}" for s in stages), *(f"ROUGE-L {s}" for s in stages)]
    rows = [[c, *(cell(s, c, "accuracy") for s in stages), *(cell(s, c, "rouge_l") for s in stages)] for c in clusters]
    md = [
        "## Zero-shot T0 clusters",
        "",
        "Rank-classification accuracy and ROUGE-L: median over templates per dataset, mean over a "
        "cluster's datasets (—: the cluster has no template of that kind).",
        "",
    ]
    return md + _table(header, rows) + [""]


# --------------------------------------------------------------------------------------------
# evaluation suites (results["suites"][name] = {"before": ..., "after": ...})

STAGE_NAMES = ("before", "after")


def _stages(entry: dict[str, Any]) -> list[str]:
    """The stages of a suite entry that hold results."""
    return [s for s in STAGE_NAMES if entry.get(s)]


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
        (k.replace("_", " "), lambda r, k=k: r.get(k))
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
    cell = lambda s, g, m: entry[s].get("per_group", {}).get(g, {}).get(m)  # noqa: E731
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
            ("accuracy", lambda r: (r.get("overall") or {}).get("accuracy")),
            ("ROUGE-L", lambda r: (r.get("overall") or {}).get("rouge_l")),
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
            ("score (1-10)", lambda r: r.get("score")),
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
                *(cell(s, part, k, "score") for s in stages),
                *(cell(s, part, k, "n") for s in stages),
                *(cell(s, part, k, "n_failures") for s in stages),
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
    """Text for a markdown table cell: one line, at most `limit` characters, `\\`, `|`, `[` and `]` escaped."""
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return re.sub(r"([\\|\[\]])", r"\\\1", text)


_LINK = re.compile(r"(?<!\\)\[((?:\\.|[^\\\[\]])+)\]\((#[A-Za-z0-9_-]+)\)")  # [label](#in-page-id)
_ANCHOR = re.compile(r"\s*\{#([A-Za-z0-9_-]+)\}$")  # a heading's id: "## text {#id}"


def _inline(text: str) -> str:
    """Escaped HTML of a markdown text: in-page links `[label](#id)` as anchors, backslash escapes undone."""
    linked = _LINK.sub(lambda m: f'<a href="{m[2]}">{m[1]}</a>', html.escape(text))
    return re.sub(r"\\([\\|\[\]])", r"\1", linked)


def _html_table(lines: list[str]) -> str:
    """A markdown table (header, separator, rows) as an HTML table."""
    rows = [[_inline(c.strip()) for c in ln.strip("|").split(" | ")] for ln in lines if not ln.startswith("|---")]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_line(line: str, raw: Mapping[str, str]) -> str:
    """One non-table markdown line as HTML; a `<!-- instillm:NAME -->` line becomes raw[NAME]."""
    if line.startswith("<!-- instillm:"):
        return raw.get(line.removeprefix("<!-- instillm:").removesuffix(" -->"), "")
    if line.startswith("!["):
        alt, src = line[2:].split("](")
        return f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}"></p>'
    if line.startswith("#"):
        return _html_heading(line)
    if line.startswith("- "):
        return f"<li>{_inline(line[2:])}</li>"
    return f"<p>{_inline(line)}</p>" if line.strip() else ""


def _html_heading(line: str) -> str:
    """`## text {#id}` as `<h2 id="id">text</h2>` (the id optional)."""
    level = len(line) - len(line.lstrip("#"))
    text = line[level:].strip()
    anchor = _ANCHOR.search(text)
    ident = f' id="{anchor[1]}"' if anchor else ""
    text = text[: anchor.start()] if anchor else text
    return f"<h{level}{ident}>{html.escape(text)}</h{level}>"


STYLE = (
    "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse;margin:.5em 0 1em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}"
    "td.n{text-align:right}img{max-width:100%}.note{color:#555;font-size:.9em}"
)


def _html(markdown: str, raw: Mapping[str, str] | None = None) -> str:
    """A self-contained HTML page from the report's markdown subset (headings with ids, tables, images, lists,
    in-page links); a placeholder line `<!-- instillm:NAME -->` becomes the HTML raw[NAME]."""
    body: list[str] = []
    table: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            body.append(_html_table(table))
            table = []
        body.append(_html_line(line, raw or {}))
    if table:
        body.append(_html_table(table))
    head = f"<head><meta charset='utf-8'><title>instillm report</title><style>{STYLE}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(body)}</body></html>\n"


def _plots(results: dict[str, Any], out: Path, metrics: list[dict[str, Any]]) -> dict[str, Path]:
    """Every plot the report shows, as PNG files in `out`."""
    plots = {"before_after": plot_before_after(results, out / "before_after.png")}
    details = results.get("details", {}).get("after", {})
    if details:
        plots["categories"] = plot_categories(details, out / "categories.png")
    loss = plot_loss(metrics, out / "loss.png")
    if loss:
        plots["loss"] = loss
    for name, entry in (results.get("suites") or {}).items():
        path = plot_suite(name, entry, out / f"suite_{name}.png")
        if path:
            plots[f"suite_{name}"] = path
    return plots


def write_report(
    results: dict[str, Any], out_dir: str | Path, metrics_path: str | Path | None = None
) -> dict[str, Path]:
    """Write report.md, report.html and PNG plots into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = load_metrics(Path(metrics_path) if metrics_path else None)
    plots = _plots(results, out, metrics)
    md = _markdown(results, plots, next_steps(results), metrics)
    card = results.get("data_card")
    raw = {"data-card": card_sections_html(card, level=3, computed_only=True)} if card else {}
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(_html(md, raw), encoding="utf-8")
    return {"report.md": out / "report.md", "report.html": out / "report.html", **plots}
