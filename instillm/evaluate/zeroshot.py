"""Zero-shot evaluation on held-out T0 task clusters: rank classification and ROUGE-L, medians per dataset.

Per template file (`<dataset>_<template>.jsonl`, {prompt, completion}; see `t0_clusters`):

- **Kind and options.** The data does not carry a template's answer options, so they are
  inferred from the whole file: a template is a *classification* template when it has between 2
  and `max_options` (10) distinct completions and every one of them occurs in ≥2 rows; its
  options are those distinct completions (sorted). Anything else is a *generation* template.
  Limits of the rule: an option that no row of the sample uses is missing (the shared sample of
  ag_news shows 2 of its 4 topics, so those templates are scored as 2-way choices); a template
  with a single distinct completion (the shared imdb, rotten_tomatoes and dbpedia_14 samples hold
  one label each) cannot be ranked and is scored as generation, with the reason in the results;
  multiple-choice templates whose choices change per row (quarel, sciq, dream...) have many
  distinct completions and are scored as generation, not by ranking the choices in their prompts.
- **Classification** (rank classification, as T0): each option is scored by the summed log-prob
  of its tokens given the prompt, the prediction is the best option, the metric is accuracy.
  T0 ranks by this unnormalized sum; `length_normalize=True` divides by the option's token count.
  The prompt and option are rendered exactly as training renders them (`Renderer.render` of a
  user turn and an assistant turn holding the option), and the scored tokens are the trained
  tokens: the option and the template's end-of-turn token, so an option that is a prefix of
  another ("no" / "not equivalent") is not favoured for its brevity alone. Where a token would
  straddle the prompt/option boundary the Renderer tokenizes the two apart, as inference does.
- **Generation**: greedy answers scored by ROUGE-L F (stemmed, SuperNI's metric) and exact match.

Aggregation, as T0 reports: a template's score is its mean over rows; a dataset's score is the
MEDIAN over its templates (accuracy over classification templates, ROUGE-L over generation
templates, kept apart); a cluster's score is the mean of its datasets' medians. Templates with
no valid row (the empty `trec_*` files) are listed under `skipped` with the reject reasons. Rows
that do not fit the model (prompt + option, or the prompt alone for generation, longer than
`max_length`) are left out of the score and counted in `n_too_long`; nothing is truncated.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from instillm.config import Config, check_min, check_min_int
from instillm.data.schema import Example, Message
from instillm.errors import DataError, RenderError
from instillm.evaluate.t0_clusters import TemplateFile, parse_clusters, template_files
from instillm.llm.loglikelihood import ScoreRequest, TokenScore, score_requests
from instillm.metrics import exact_match, max_rouge_l

CLASSIFICATION = "classification"
GENERATION = "generation"
MIN_ROWS_PER_OPTION = 2  # an option seen once is as likely a free-text answer as a label
N_SAMPLES = 3  # predictions kept per template in the results


@dataclass(frozen=True)
class ZeroShotConfig(Config):
    """How to evaluate: rows per template (`limit`, None: all), option scoring, generation budget."""

    limit: int | None = None
    length_normalize: bool = False
    max_options: int = 10
    max_new_tokens: int = 64
    batch_size: int = 16
    max_length: int | None = None  # tokens per row (prompt + option); None: the model's max positions

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        for name in ("limit", "max_length"):
            check_min(problems, name, v[name], 1, note=" or None")
        for name, low in (("max_options", 2), ("max_new_tokens", 1), ("batch_size", 1)):
            check_min_int(problems, name, v[name], minimum=low)
        return problems


@dataclass(frozen=True)
class Template:
    """One template file read: its valid rows, reject counts, kind, options and why."""

    file: TemplateFile
    examples: tuple[Example, ...]
    rejected: dict[str, int]
    kind: str
    options: tuple[str, ...] | None
    why: str

    @property
    def ranked_options(self) -> tuple[str, ...]:
        """The options of a classification template (ValueError for a generation template, which has none)."""
        if self.options is None:
            raise ValueError(f"{self.file.path}: a generation template has no options to rank")
        return self.options


def infer_options(completions: Sequence[str], max_options: int = 10) -> tuple[tuple[str, ...] | None, str]:
    """(options, why): the distinct completions when the template looks like classification, else None."""
    counts = Counter(completions)
    k = len(counts)
    if k < 2:
        return None, f"{k} distinct completion(s): no alternative to rank, scored as generation"
    if k > max_options:
        return None, f"{k} distinct completions > {max_options}: generation"
    rare = min(counts.values())
    if rare < MIN_ROWS_PER_OPTION:
        return None, f"{k} distinct completions but one occurs in {rare} row(s) only: generation"
    return tuple(sorted(counts)), f"{k} distinct completions, each in ≥{MIN_ROWS_PER_OPTION} rows: classification"


def read_template(file: TemplateFile, max_options: int = 10) -> Template:
    """Read one template file through the prompt/completion importer and infer its kind."""
    from instillm.data.formats import RowContext, prompt_completion
    from instillm.data.io import read_rows
    from instillm.errors import RowError

    ctx = RowContext.for_file(str(file.path))
    examples: list[Example] = []
    rejected: Counter[str] = Counter()
    for row in read_rows(file.path):
        if row.error is not None:
            rejected[row.error.reason] += 1
            continue
        try:
            examples += prompt_completion(row.record, ctx.at(row.line))
        except RowError as e:
            rejected[e.reason] += 1
    options, why = infer_options([e.reference for e in examples], max_options)
    return Template(file, tuple(examples), dict(rejected), CLASSIFICATION if options else GENERATION, options, why)


def option_requests(renderer: Any, example: Example, options: Sequence[str]) -> list[ScoreRequest]:
    """One score request per option: the example's prompt with the option as the assistant turn."""
    out = []
    for opt in options:
        ex = Example(messages=(*example.prompt_messages, Message("assistant", opt)), id=example.id)
        try:
            r = renderer.render(ex)
        except RenderError as e:
            raise DataError(f"{example.id}: cannot render option {opt!r}: {e}") from e
        out.append(ScoreRequest(tuple(r.input_ids), tuple(r.labels)))
    return out


def rank_options(
    model: Any,
    renderer: Any,
    examples: Sequence[Example],
    options: Sequence[str],
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[list[TokenScore]]:
    """Scores of every option for every example (rows: examples, columns: options in order)."""
    requests = [r for ex in examples for r in option_requests(renderer, ex, options)]
    pad = renderer.tokenizer.pad_token_id or 0
    flat = score_requests(model, requests, batch_size=batch_size, max_length=max_length, pad_id=pad)
    k = len(options)
    return [flat[i * k : (i + 1) * k] for i in range(len(examples))]


def pick(scores: Sequence[TokenScore], length_normalize: bool = False) -> int:
    """Index of the best option (first on ties): summed log-prob, or per token when normalizing."""
    values = [s.mean_logprob if length_normalize else s.logprob for s in scores]
    return max(range(len(values)), key=lambda i: (values[i], -i))


def fits(renderer: Any, t: Template, example: Example, max_length: int | None) -> bool:
    """Whether the example fits the model: every option request (classification) or the prompt (generation)."""
    if max_length is None:
        return True
    if t.kind == CLASSIFICATION:
        return all(len(r.input_ids) <= max_length for r in option_requests(renderer, example, t.ranked_options))
    prompt = renderer.example_prompt_text(example)
    return len(renderer.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]) < max_length


def score_classification(
    model: Any, renderer: Any, t: Template, examples: Sequence[Example], config: ZeroShotConfig
) -> dict[str, Any]:
    """Accuracy of rank classification over `examples` of a classification template."""
    options = t.ranked_options
    table = rank_options(model, renderer, examples, options, config.batch_size)
    preds = [options[pick(row, config.length_normalize)] for row in table]
    correct = [float(p == e.reference) for p, e in zip(preds, examples)]
    samples = [
        {
            "id": e.id,
            "reference": e.reference,
            "prediction": p,
            "logprobs": {o: round(s.logprob, 4) for o, s in zip(options, row)},
        }
        for e, p, row in list(zip(examples, preds, table))[:N_SAMPLES]
    ]
    return {"accuracy": sum(correct) / len(correct), "samples": samples}


def score_generation(
    model: Any, tokenizer: Any, renderer: Any, examples: Sequence[Example], config: ZeroShotConfig
) -> dict[str, Any]:
    """Mean ROUGE-L F and exact match of greedy answers."""
    from instillm.evaluate.heldout import predict

    preds = predict(model, tokenizer, examples, renderer, config.max_new_tokens, config.batch_size)
    rouge = [max_rouge_l(p, e.reference) for p, e in zip(preds, examples)]
    em = [exact_match(p, e.reference) for p, e in zip(preds, examples)]
    samples = [
        {"id": e.id, "reference": e.reference, "prediction": p} for e, p in list(zip(examples, preds))[:N_SAMPLES]
    ]
    return {"rouge_l": sum(rouge) / len(rouge), "exact_match": sum(em) / len(em), "samples": samples}


def score_template(
    model: Any, tokenizer: Any, renderer: Any, t: Template, config: ZeroShotConfig
) -> dict[str, Any] | None:
    """The results entry of one template (its first `limit` valid rows that fit); None if none fits."""
    rows = t.examples[: config.limit] if config.limit else t.examples
    max_length = config.max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    examples = [e for e in rows if fits(renderer, t, e, max_length)]
    if not examples:
        return None
    head = {
        "dataset": t.file.dataset,
        "cluster": t.file.cluster,
        "kind": t.kind,
        "why": t.why,
        "options": list(t.options) if t.options else None,
        "n": len(examples),
        "n_too_long": len(rows) - len(examples),
        "rows_valid": len(t.examples),
        "rows_rejected": t.rejected,
    }
    if t.kind == CLASSIFICATION:
        return {**head, **score_classification(model, renderer, t, examples, config)}
    return {**head, **score_generation(model, tokenizer, renderer, examples, config)}


def _median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.median(vals) if vals else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def aggregate(templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: median over templates (accuracy and ROUGE-L apart); per cluster: mean of those."""
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in templates.values():
        by_dataset[t["dataset"]].append(t)
    datasets = {}
    for name, ts in sorted(by_dataset.items()):
        cls = [t["accuracy"] for t in ts if t["kind"] == CLASSIFICATION]
        gen = [t["rouge_l"] for t in ts if t["kind"] == GENERATION]
        datasets[name] = {
            "cluster": ts[0]["cluster"],
            "accuracy": _median(cls),
            "rouge_l": _median(gen),
            "n_classification_templates": len(cls),
            "n_generation_templates": len(gen),
        }
    by_cluster: dict[str, list[str]] = defaultdict(list)
    for name, d in datasets.items():
        by_cluster[d["cluster"]].append(name)
    clusters: dict[str, dict[str, Any]] = {
        c: {
            "accuracy": _mean(datasets[n]["accuracy"] for n in names),
            "rouge_l": _mean(datasets[n]["rouge_l"] for n in names),
            "datasets": names,
        }
        for c, names in sorted(by_cluster.items())
    }
    overall = {
        "accuracy": _mean(c["accuracy"] for c in clusters.values()),
        "rouge_l": _mean(c["rouge_l"] for c in clusters.values()),
    }
    return {"overall": overall, "clusters": clusters, "datasets": datasets}


@dataclass
class ZeroShotResult:
    """What `evaluate_zeroshot` returns: per template entries, their aggregates and skipped files."""

    templates: dict[str, dict[str, Any]]
    skipped: dict[str, dict[str, Any]]
    config: ZeroShotConfig
    clusters: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what results.json stores for the zeroshot suite)."""
        c = self.config
        scoring = {
            "classification": "rank by " + ("mean" if c.length_normalize else "summed") + " log-prob",
            "generation": "ROUGE-L F (stemmed), greedy",
            "limit": c.limit,
            "max_options": c.max_options,
            "max_new_tokens": c.max_new_tokens,
        }
        return {
            "evaluated_clusters": list(self.clusters),
            "scoring": scoring,
            **aggregate(self.templates),
            "templates": self.templates,
            "skipped": self.skipped,
        }


def select_templates(source: Any, clusters: str | Iterable[str] | None = None) -> list[TemplateFile]:
    """The template files of `source` (directory or files) in the given clusters (None: all)."""
    files = template_files(source)
    if clusters is None:
        return files
    wanted = set(parse_clusters(clusters))
    chosen = [f for f in files if f.cluster in wanted]
    if not chosen:
        raise DataError(f"no template file of {source} is in cluster(s) {sorted(wanted)}")
    return chosen


def evaluate_zeroshot(
    model: Any,
    tokenizer: Any,
    renderer: Any,
    source: Any,
    clusters: str | Iterable[str] | None = None,
    config: ZeroShotConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> ZeroShotResult:
    """Score every template of `source` in `clusters`; `progress(1)` after each template."""
    config = config or ZeroShotConfig()
    files = select_templates(source, clusters)
    templates, skipped = {}, {}
    for f in files:
        t = read_template(f, config.max_options)
        entry = score_template(model, tokenizer, renderer, t, config) if t.examples else None
        if entry is None:
            reason = "no valid row" if not t.examples else "no row fits max_length"
            skipped[f.template] = {
                "dataset": f.dataset,
                "cluster": f.cluster,
                "reason": reason,
                "rows_valid": len(t.examples),
                "rows_rejected": t.rejected,
            }
        else:
            templates[f.template] = entry
        if progress:
            progress(1)
    chosen = tuple(sorted({f.cluster for f in files}))
    return ZeroShotResult(templates, skipped, config, chosen)
