"""`instillm data ...`: import, inspect, build, curate and synthesize instruction data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from instillm.cli._common import (
    BACKEND_CONCURRENCY,
    BACKEND_KIND,
    BACKEND_TIMEOUT,
    BackendOptions,
    Device,
    RaterApiKey,
    RaterBaseUrl,
    RaterCache,
    RaterConcurrency,
    RaterKind,
    RaterModel,
    RaterTimeout,
    TeacherApiKey,
    TeacherBaseUrl,
    TeacherCache,
    TeacherConcurrency,
    TeacherKind,
    TeacherModel,
    TeacherTimeout,
    cli_errors,
    console,
    fail,
    out,
    progress_bar,
)
from instillm.errors import InstillmError

app = typer.Typer(help="Import, inspect and curate instruction data.", no_args_is_help=True)


# ------------------------------------------------------------------------------ import / inspect


@app.command("import")
def data_import(
    sources: list[str] = typer.Argument(..., help="Files (.jsonl/.json/.parquet/.csv[.gz]), dataset dirs or hub ids."),
    output: Path = typer.Option(..., "-o", "--output", help="Canonical JSONL to write."),
    format: str = typer.Option("auto", "--format", "-f", help="Input format, or auto to detect per file."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first rejected row."),
    all_paths: bool = typer.Option(False, "--all-paths", help="OpenAssistant: every path, not only the best."),
) -> None:
    """Import instruction data into the canonical schema; bad rows go to OUT.rejects.jsonl."""
    from instillm.data.importer import import_files

    with cli_errors(), progress_bar("importing rows") as advance:
        summary = import_files(sources, output, format=format, strict=strict, all_paths=all_paths, progress=advance)
    _print_import(summary)


def _print_import(summary) -> None:
    counts = ("rows", "imported", "rejected", "examples")
    table = Table(title=f"import → {summary.output}")
    table.add_column("file")
    table.add_column("format")
    for key in counts:
        table.add_column(key, justify="right")
    for f, c in summary.per_file.items():
        table.add_row(f, summary.formats.get(f, "?"), *(str(c.get(k, 0)) for k in counts))
    out.print(table)
    if summary.rejects_by_reason:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(summary.rejects_by_reason.items()))
        out.print(f"rejected {summary.rows_rejected} row(s) → {summary.rejects_path} ({reasons})")
    out.print(f"wrote {summary.examples_written} example(s) from {summary.rows_imported} row(s)")


@app.command("inspect")
def data_inspect(
    data: Path = typer.Argument(..., help="Canonical JSONL (from `instillm data import`)."),
    model: str = typer.Option(..., "--model", "-m", help="Model path or hub id (its tokenizer is used)."),
    template: str = typer.Option("auto", "--template", help="auto | tokenizer | chatml | alpaca | plain | FILE.jinja"),
    max_length: int = typer.Option(2048, "--max-length"),
    truncation: str = typer.Option("drop", "--truncation", help="drop | truncate-prompt | error"),
    show: int = typer.Option(3, "--show", help="How many examples to print with trained tokens highlighted."),
    as_json: bool = typer.Option(False, "--json", help="Print the stats as one JSON object only."),
) -> None:
    """Show what the model sees: trained tokens highlighted, lengths, truncation, packing."""
    from instillm.data.importer import read_examples
    from instillm.data.inspect import highlight, inspect_examples
    from instillm.data.render import RenderConfig, Renderer
    from instillm.models.loading import load_tokenizer

    with cli_errors():
        tok = load_tokenizer(model)
        renderer = Renderer(tok, RenderConfig(template=template, max_length=max_length, truncation=truncation))
        examples = list(read_examples(data))
        with progress_bar("rendering", total=len(examples)) as advance:
            stats, rendered = inspect_examples(examples, renderer, progress=advance)
    if as_json:
        out.print_json(json.dumps(stats.to_json()))
        return
    for r in rendered[:show]:
        out.rule(f"{r.example_id}  ({len(r)} tokens, {r.n_trained} trained)")
        out.print(highlight(r, tok))
    _print_stats(stats, renderer.template_name)


def _print_stats(stats, template_name: str) -> None:
    table = Table(title=f"data stats (template {template_name}, max_length {stats.max_length})")
    table.add_column("stat")
    table.add_column("value", justify="right")
    for k, v in stats.to_json().items():
        table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    out.print(table)
    if stats.dropped_by_reason:
        out.print("dropped: " + ", ".join(f"{k}: {v}" for k, v in stats.dropped_by_reason.items()))
    counts, edges = stats.histogram.get("counts", []), stats.histogram.get("edges", [])
    peak = max(counts, default=0) or 1
    for c, lo, hi in zip(counts, edges, edges[1:]):
        out.print(f"{lo:>6}-{hi:<6} {'█' * round(30 * c / peak)} {c}")


# ------------------------------------------------------------------------------ audit / card


@app.command("audit")
def data_audit(
    data: Path = typer.Argument(..., help="Canonical JSONL (from `instillm data import`)."),
    model: str = typer.Option(..., "--model", "-m", help="Model path or hub id (its tokenizer is used)."),
    template: str = typer.Option("auto", "--template", help="auto | tokenizer | chatml | alpaca | plain | FILE.jinja"),
    max_length: int = typer.Option(2048, "--max-length"),
    truncation: str = typer.Option("drop", "--truncation", help="drop | truncate-prompt | error"),
    max_flagged: float | None = typer.Option(
        None, "--max-flagged", help="Exit 1 when the share of rows with any flag is above this rate (0-1)."
    ),
    fail_on: list[str] = typer.Option(
        [], "--fail-on", help="FLAG=RATE (repeatable): exit 1 when FLAG's share of rows is above RATE; 0 = any row."
    ),
    show: int = typer.Option(5, "--show", help="Flagged rows listed per flag (--json lists them all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object only."),
) -> None:
    """Audit every row's loss mask as training renders it; exit 1 when a --max-flagged/--fail-on rate is exceeded.

    Flags (rate = flagged rows / rows): no_trained_token (every assistant turn train=false, or a trained turn
    renders to no token), prompt_too_long (the prompt alone is >= --max-length tokens), response_truncated (the
    row exceeds --max-length and trained tokens are lost), eos_not_trained (a trained turn does not end with
    EOS/end-of-turn), template_inconsistent (the template fails on the row), duplicate_prompt (same rendered
    prompt as an earlier row). Without thresholds the exit status is 0.
    """
    from instillm.data.audit import audit_file, parse_fail_on, parse_rate
    from instillm.data.render import RenderConfig, Renderer
    from instillm.models.loading import load_tokenizer

    with cli_errors():
        limits = parse_fail_on(fail_on)
        overall = parse_rate(max_flagged, "--max-flagged") if max_flagged is not None else None
        renderer = Renderer(
            load_tokenizer(model), RenderConfig(template=template, max_length=max_length, truncation=truncation)
        )
        with progress_bar("auditing") as advance:
            report = audit_file(data, renderer, progress=advance)
    if as_json:
        out.print_json(json.dumps(report.to_json(overall, limits)))
    else:
        _print_audit(report, show)
    exceeded = report.exceeded(overall, limits)
    for message in exceeded:
        console.print(f"[bold red]threshold exceeded:[/] {escape(message)}")
    if exceeded:
        raise typer.Exit(code=1)


def _print_audit(report, show: int) -> None:
    s = report.settings
    table = Table(
        title=f"mask audit: {report.n_examples} rows (template {s['template']}, max_length {s['max_length']}, "
        f"truncation {s['truncation']})"
    )
    table.add_column("flag")
    table.add_column("rows", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("rows flagged (id:line)")
    for flag, rows in report.flags.items():
        listed = ", ".join(f"{r.id}:{r.line}" for r in rows[:show]) + (" …" if len(rows) > show else "")
        table.add_row(flag, str(len(rows)), f"{report.rate(flag):.3f}", escape(listed))
    out.print(table)
    out.print(f"rows with any flag: {report.n_flagged} of {report.n_examples} ({report.rate():.3f})")
    for flag, rows in report.flags.items():
        for r in rows[:show]:
            out.print(f"  {flag} {escape(r.id)} (line {r.line}): {escape(r.detail)}")


@app.command("card")
def data_card(
    data: Path = typer.Argument(..., help="Canonical JSONL (from `instillm data import`)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="HTML card to write (self-contained, PNG plots)."),
    eval_sets: list[Path] = typer.Option([], "--eval", help="Eval files to measure overlap with (repeatable)."),
    n: int = typer.Option(
        13, "--n", help="Eval overlap: n-gram length in words, as `data decontaminate` (template text left out)."
    ),
    minhash: float = typer.Option(0.8, "--minhash", help="Near-duplicate clusters: MinHash-LSH Jaccard threshold."),
    on: str = typer.Option("conversation", "--on", help="conversation | instruction (text compared for near dups)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as one JSON object."),
) -> None:
    """Data card: composition, lengths, languages, leading verbs and objects, near-duplicate clusters, eval overlap.

    Eval overlap is `data decontaminate`'s n-gram match without template text: a 5-word window in more than
    max(5, 1%) of the rows is boilerplate, not evidence; a row whose prompt is an eval prompt always counts
    (the same card as `instillm run`'s report and the UI's)."""
    from instillm.curate.card import card_with_checks
    from instillm.data.card import read_card_examples, write_card_html
    from instillm.data.importer import refuse_overwrite

    if output is None and not as_json:
        fail(InstillmError("give -o CARD.html to write the card (or --json to print it)"))
    with cli_errors():
        if output is not None:
            refuse_overwrite([data, *eval_sets], {f"output {output}": output})
        examples = read_card_examples(data)
        if not examples:
            raise InstillmError(f"no examples for a data card: {data} holds no rows")
        card = card_with_checks(examples, eval_sets, n=n, minhash=minhash, on=on)
        if output is not None:
            write_card_html(card, output, title=f"Data card: {data.name}")
    if as_json:
        out.print_json(json.dumps(card))
    else:
        nd, ov = card["near_duplicates"], card["eval_overlap"]
        overlap_note = f"; {ov['n_rows']} row(s) overlap eval sets" if ov is not None else ""
        out.print(
            f"wrote {output}: {card['n_examples']} rows; {nd['n_clusters']} near-duplicate cluster(s){overlap_note}"
        )


# ------------------------------------------------------------------------------ built-in data


@app.command("skills")
def data_skills(
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Directory for train.jsonl and the held-out splits."
    ),
    seed: int = typer.Option(0, "--seed"),
    n_train: int = typer.Option(400, "--n-train", help="Training examples per family."),
    n_eval: int = typer.Option(40, "--n-eval", help="Examples per family in each held-out split."),
    cap_to_input_space: bool = typer.Option(
        False, "--cap-to-input-space", help="A family with fewer distinct inputs than asked trains on all it has."
    ),
    list_only: bool = typer.Option(False, "--list", help="List the task families and exit."),
) -> None:
    """Write the built-in procedural skills suite (train + held-out splits) as canonical data."""
    from instillm.data.skills import SuiteConfig, build_suite, write_suite

    if list_only:
        _print_families()
        return
    if output is None:
        fail(InstillmError("give -o DIR to write the suite (or --list to see the families)"))
    with cli_errors():
        suite = build_suite(
            SuiteConfig(
                seed=seed, n_train_per_family=n_train, n_eval_per_family=n_eval, cap_to_input_space=cap_to_input_space
            )
        )
        paths = write_suite(suite, output)
    for split, path in paths.items():
        out.print(f"{split:>18}: {len(suite[split]):>6} examples → {path}")


def _print_families() -> None:
    from instillm.data.skills import list_families

    table = Table(title="skills families")
    for col in ("name", "category", "phrasings", "what it asks"):
        table.add_column(col)
    for f in list_families():
        table.add_row(f["name"], f["category"], str(len(f["phrasings"])), f["doc"])
    out.print(table)


@app.command("t0-split")
def data_t0_split(
    source: Path = typer.Argument(..., help="Directory of T0 prompt-template files <dataset>_<template>.jsonl."),
    heldout_clusters: str = typer.Option(
        ..., "--heldout-clusters", help="T0 clusters to hold out, e.g. sentiment,paraphrase_identification."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for train.jsonl and heldout.jsonl."),
) -> None:
    """Split T0 template files by task cluster into canonical train.jsonl / heldout.jsonl (category = cluster)."""
    from instillm.evaluate.t0_clusters import write_cluster_split

    with cli_errors():
        summaries = write_cluster_split(source, output, heldout_clusters)
    for split, s in summaries.items():
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(s.rejects_by_reason.items())) or "none"
        out.print(
            f"{split:>8}: {s.examples_written} example(s) from {len(s.per_file)} file(s) → {s.output}"
            f" (rejected {s.rows_rejected}: {reasons})"
        )


# ------------------------------------------------------------------------------ curation


def _print_curation(summary) -> None:
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.rejected_by_reason.items())) or "none"
    out.print(f"kept {summary.n_kept} of {summary.n_in} row(s) → {summary.output}")
    out.print(f"rejected {summary.n_rejected} → {summary.rejects_path} ({reasons})")
    if summary.matched_eval_sets:
        out.print("matched eval sets: " + ", ".join(f"{k}: {v}" for k, v in summary.matched_eval_sets.items()))


@app.command("dedup")
def data_dedup(
    data: Path = typer.Argument(..., help="Canonical JSONL."),
    output: Path = typer.Option(..., "-o", "--output"),
    exact: bool | None = typer.Option(
        None, "--exact/--no-exact", help="Normalized-hash dedup (default: on unless --rouge-l alone)."
    ),
    minhash: float | None = typer.Option(
        None, "--minhash", help="MinHash-LSH near-dup removal at this Jaccard threshold."
    ),
    rouge_l: float | None = typer.Option(
        None, "--rouge-l", help="Greedy Self-Instruct ROUGE-L filter at this F threshold."
    ),
    on: str = typer.Option("conversation", "--on", help="conversation | instruction (text compared by exact/minhash)."),
) -> None:
    """Remove exact and near duplicates; first occurrences stay, the rest go to rejects with the kept line."""
    from instillm.curate.dedup import dedup_file

    with cli_errors(), progress_bar("dedup") as advance:
        summary = dedup_file(data, output, exact=exact, minhash=minhash, rouge_l=rouge_l, on=on, progress=advance)
    _print_curation(summary)


@app.command("decontaminate")
def data_decontaminate(
    data: Path = typer.Argument(..., help="Canonical JSONL."),
    eval_sets: list[Path] = typer.Option(..., "--eval", help="Eval files whose n-grams must not appear in training."),
    output: Path = typer.Option(..., "-o", "--output"),
    n: int = typer.Option(13, "--n", help="n-gram length in words."),
) -> None:
    """Drop training rows sharing an n-gram with any eval set; each reject names the eval set and n-gram."""
    from instillm.curate.decontaminate import decontaminate_file

    with cli_errors(), progress_bar("decontaminating") as advance:
        summary = decontaminate_file(data, output, eval_sets, n=n, progress=advance)
    _print_curation(summary)


@app.command("filter")
def data_filter(
    data: Path = typer.Argument(..., help="Canonical JSONL."),
    output: Path = typer.Option(..., "-o", "--output"),
    min_words: int | None = typer.Option(4, "--min-words", help="Instruction words, at least."),
    max_words: int | None = typer.Option(150, "--max-words", help="Instruction words, at most."),
    language: str | None = typer.Option("en", "--language", help="en, or 'any' to keep every language."),
    blacklist: list[str] | None = typer.Option(
        None, "--blacklist", help="Words that reject an instruction (default: Self-Instruct's)."
    ),
    self_instruct_rules: bool = typer.Option(
        False, "--self-instruct-rules", help="Also Self-Instruct's punctuation/ASCII/'Write a program' rules."
    ),
) -> None:
    """Length, language, keyword-blacklist and response-quality filters, with reasons."""
    from instillm.curate.filters import SELF_INSTRUCT_BLACKLIST, filter_file

    with cli_errors(), progress_bar("filtering") as advance:
        summary = filter_file(
            data,
            output,
            min_words,
            max_words,
            None if language == "any" else language,
            blacklist if blacklist is not None else SELF_INSTRUCT_BLACKLIST,
            self_instruct_rules=self_instruct_rules,
            progress=advance,
        )
    _print_curation(summary)


@app.command("score")
def data_score(
    data: Path = typer.Argument(..., help="Canonical JSONL."),
    output: Path = typer.Option(..., "-o", "--output"),
    ifd_model: str | None = typer.Option(None, "--ifd-model", help="Local model (path or hub id) that computes IFD."),
    template: str = typer.Option("auto", "--template", help="Chat template for IFD, as in training."),
    max_length: int = typer.Option(
        2048, "--max-length", help="IFD: tokens per sequence; longer prompts are cut from the left."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="IFD: sequences per forward pass."),
    device: Device = "auto",
    rate: bool = typer.Option(False, "--rate", help="Rate each row 0-5 with an LLM judge (AlpaGasus prompt)."),
    backend: RaterKind = BACKEND_KIND,
    base_url: RaterBaseUrl = None,
    model: RaterModel = None,
    api_key: RaterApiKey = None,
    cache: RaterCache = None,
    concurrency: RaterConcurrency = BACKEND_CONCURRENCY,
    timeout: RaterTimeout = BACKEND_TIMEOUT,
    max_ifd: float | None = typer.Option(1.0, "--max-ifd", help="Reject rows with IFD above this (the paper: 1)."),
    min_rating: float | None = typer.Option(
        None, "--min-rating", help="Reject rows rated below this (AlpaGasus: 4.5)."
    ),
    top_fraction: float | None = typer.Option(
        None, "--top-fraction", help="Keep this fraction of the remaining rows, highest IFD first."
    ),
    top_k: int | None = typer.Option(None, "--top-k", help="Keep this many of the remaining rows, highest IFD first."),
) -> None:
    """Score rows by IFD (local model) and/or an LLM rating; scores go to meta, selected-out rows to rejects.

    IFD runs --ifd-model on --device; --rate asks the judge backend (its options below), whose response
    cache defaults to OUT.run/cache.sqlite (a rerun after a kill re-sends nothing already rated).
    """
    from instillm.curate.score import IFDConfig, RatingConfig, ScoreConfig, score_file
    from instillm.synth.pipeline import work_dir_for

    judge = BackendOptions(
        backend, base_url, model, api_key, cache, concurrency, role="judge", device=device, timeout=timeout
    )
    with cli_errors():
        ifd = IFDConfig(ifd_model, template, max_length, "truncate-prompt", batch_size, device) if ifd_model else None
        rating = RatingConfig(judge.config(default_cache=work_dir_for(output) / "cache.sqlite")) if rate else None
        config = ScoreConfig(
            ifd=ifd, rating=rating, max_ifd=max_ifd, min_rating=min_rating, top_fraction=top_fraction, top_k=top_k
        )
        with progress_bar("scoring") as advance:
            summary = score_file(data, output, config, progress=advance)
    _print_curation(summary.curation)
    if ifd is not None:
        out.print(f"IFD scored {summary.n_ifd_scored} row(s); prompt truncated to fit: {summary.n_truncated}")
    if rating is not None:
        out.print(f"rated {summary.n_rated} row(s); rating unparseable: {summary.n_rating_unparseable}")


# ------------------------------------------------------------------------------ synthesis (teacher)


def _run_with_teacher(teacher: BackendOptions, output: Path, pipeline: Callable):
    """Open the teacher backend (cache default OUT.run/cache.sqlite), run `pipeline(backend, advance)`
    under a progress bar, close the backend."""
    from instillm.synth.pipeline import work_dir_for

    backend = teacher.open(default_cache=work_dir_for(output) / "cache.sqlite")
    try:
        with progress_bar("teacher requests") as advance:
            return pipeline(backend, advance)
    finally:
        backend.close()


def _print_stage_counts(title: str, rows: list[tuple]) -> None:
    """One table: stage, items, kept, rejected by reason."""
    table = Table(title=title)
    for col in ("stage", "items", "kept", "rejected by reason"):
        table.add_column(col, justify="left" if col in ("stage", "rejected by reason") else "right")
    for stage, n, kept, reasons in rows:
        table.add_row(stage, str(n), str(kept), ", ".join(f"{r}: {c}" for r, c in reasons.items()) or "—")
    out.print(table)


@app.command("self-instruct")
def data_self_instruct(
    output: Path = typer.Option(..., "-o", "--output", help="Canonical JSONL to write (rejects and stats beside it)."),
    seeds: Path | None = typer.Option(
        None, "--seeds", help="Seed tasks (Self-Instruct format); default: instillm's own."
    ),
    num: int | None = typer.Option(
        None, "-n", "--num-instructions", help="Machine instructions to bootstrap (default 100)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file of SelfInstructConfig settings."),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE setting (repeatable), e.g. rouge_threshold=0.6."),
    device: Device = "auto",
    backend: TeacherKind = BACKEND_KIND,
    base_url: TeacherBaseUrl = None,
    model: TeacherModel = None,
    api_key: TeacherApiKey = None,
    cache: TeacherCache = None,
    concurrency: TeacherConcurrency = BACKEND_CONCURRENCY,
    timeout: TeacherTimeout = BACKEND_TIMEOUT,
) -> None:
    """Self-Instruct: bootstrap instructions from seed tasks, classify them, generate instances (resumable).

    The teacher's response cache defaults to OUT.run/cache.sqlite.
    """
    from instillm.data.importer import refuse_output_over_inputs
    from instillm.synth.pipeline import load_config
    from instillm.synth.self_instruct import SelfInstructConfig, load_seed_tasks, run_self_instruct

    teacher = BackendOptions(backend, base_url, model, api_key, cache, concurrency, device=device, timeout=timeout)
    with cli_errors():
        extra = [f"num_instructions={num}"] if num is not None else []
        cfg = load_config(SelfInstructConfig, config, [*overrides, *extra], "self-instruct")
        if seeds is not None:
            refuse_output_over_inputs([seeds], output)
            load_seed_tasks(seeds)  # a bad seeds file fails before the teacher cache is created
        res = _run_with_teacher(
            teacher, output, lambda t, advance: run_self_instruct(t, output, seeds, cfg, progress=advance)
        )
    s = res.stats
    b, i = s["bootstrap"], s["instances"]
    _print_stage_counts(
        f"self-instruct → {res.output}",
        [
            ("instructions", b["candidates"], b["kept"], b["rejected"]),
            ("tasks", i["tasks"], i["tasks_kept"], i["tasks_rejected"]),
            ("instances", i["parsed"], i["kept"], i["rejected"]),
        ],
    )
    out.print(
        f"{'resumed; ' if res.resumed else ''}bootstrap stopped: {b['stopped']}; classification tasks: "
        f"{s['classification']['classification']}/{s['classification']['tasks']}"
    )
    out.print(f"wrote {s['examples']} example(s); rejects → {res.rejects}; stats → {res.stats_path}")


@app.command("evolve")
def data_evolve(
    data: Path = typer.Argument(..., help="Canonical JSONL whose single-turn rows are evolved."),
    output: Path = typer.Option(..., "-o", "--output", help="Canonical JSONL of the kept evolutions."),
    rounds: int | None = typer.Option(None, "--rounds", help="Evolution rounds (default 4)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of EvolConfig settings."),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE setting (repeatable), e.g. judge=false."),
    device: Device = "auto",
    backend: TeacherKind = BACKEND_KIND,
    base_url: TeacherBaseUrl = None,
    model: TeacherModel = None,
    api_key: TeacherApiKey = None,
    cache: TeacherCache = None,
    concurrency: TeacherConcurrency = BACKEND_CONCURRENCY,
    timeout: TeacherTimeout = BACKEND_TIMEOUT,
) -> None:
    """Evol-Instruct: evolve instructions in depth and breadth, answer them, eliminate failures (resumable).

    The teacher's response cache defaults to OUT.run/cache.sqlite.
    """
    from instillm.data.importer import refuse_output_over_inputs
    from instillm.synth.evol import EvolConfig, read_lineages, run_evol
    from instillm.synth.pipeline import load_config

    teacher = BackendOptions(backend, base_url, model, api_key, cache, concurrency, device=device, timeout=timeout)
    with cli_errors():
        extra = [f"rounds={rounds}"] if rounds is not None else []
        cfg = load_config(EvolConfig, config, [*overrides, *extra], "evol")
        read_lineages(data)  # a missing or unreadable input fails before the teacher cache is created
        refuse_output_over_inputs([data], output)
        res = _run_with_teacher(teacher, output, lambda t, advance: run_evol(t, data, output, cfg, progress=advance))
    s = res.stats
    _print_stage_counts(
        f"evolve → {res.output}",
        [("input rows", s["input"]["rows"], s["input"]["lineages"], s["input"]["rejected"])]
        + [(f"round {r['round']}", r["attempted"], r["kept"], r["eliminated"]) for r in s["rounds"]],
    )
    out.print(
        f"{'resumed; ' if res.resumed else ''}wrote {s['examples']} example(s); rejects → {res.rejects}; "
        f"stats → {res.stats_path}"
    )
