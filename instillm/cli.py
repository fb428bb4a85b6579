"""The `instillm` command: parses arguments, calls the library, prints. No logic lives here."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from instillm.errors import InstillmError

app = typer.Typer(help="Instruction fine-tuning of language models, end to end.", no_args_is_help=True)
data_app = typer.Typer(help="Import, inspect and curate instruction data.", no_args_is_help=True)
model_app = typer.Typer(help="Create and manage models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")

console = Console(stderr=True)
out = Console()


@app.callback()
def _quiet_libraries() -> None:
    """instillm draws its own progress bars; transformers' per-file bars would interleave with them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextmanager
def progress_bar(description: str, total: Optional[int] = None) -> Iterator:
    """A rich progress bar on stderr; yields an `advance(n=1)` callable."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=1)


@data_app.command("import")
def data_import(
    sources: List[str] = typer.Argument(..., help="Files (.jsonl/.json/.parquet/.csv[.gz]), dataset dirs or hub ids."),
    output: Path = typer.Option(..., "-o", "--output", help="Canonical JSONL to write."),
    format: str = typer.Option("auto", "--format", "-f", help="Input format, or auto to detect per file."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first rejected row."),
    all_paths: bool = typer.Option(False, "--all-paths", help="OpenAssistant: every path, not only the best."),
) -> None:
    """Import instruction data into the canonical schema; bad rows go to OUT.rejects.jsonl."""
    from instillm.data.importer import import_files

    try:
        with progress_bar("importing rows") as advance:
            summary = import_files(sources, output, format=format, strict=strict,
                                   all_paths=all_paths, progress=advance)
    except InstillmError as e:
        _fail(e)
    table = Table(title=f"import → {summary.output}")
    table.add_column("file")
    table.add_column("format")
    for key in ("rows", "imported", "rejected", "examples"):
        table.add_column(key, justify="right")
    for f, c in summary.per_file.items():
        table.add_row(f, summary.formats.get(f, "?"), *(str(c.get(k, 0)) for k in ("rows", "imported", "rejected", "examples")))
    out.print(table)
    if summary.rejects_by_reason:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(summary.rejects_by_reason.items()))
        out.print(f"rejected {summary.rows_rejected} row(s) → {summary.rejects_path} ({reasons})")
    out.print(f"wrote {summary.examples_written} example(s) from {summary.rows_imported} row(s)")


@data_app.command("inspect")
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

    try:
        tok = load_tokenizer(model)
        renderer = Renderer(tok, RenderConfig(template=template, max_length=max_length, truncation=truncation))
        examples = list(read_examples(data))
        with progress_bar("rendering", total=len(examples)) as advance:
            stats, rendered = inspect_examples(examples, renderer, progress=advance)
    except InstillmError as e:
        _fail(e)
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


@data_app.command("skills")
def data_skills(
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for train.jsonl and the held-out splits."),
    seed: int = typer.Option(0, "--seed"),
    n_train: int = typer.Option(400, "--n-train", help="Training examples per family."),
    n_eval: int = typer.Option(40, "--n-eval", help="Examples per family in each held-out split."),
    cap_to_input_space: bool = typer.Option(
        False, "--cap-to-input-space", help="A family with fewer distinct inputs than asked trains on all it has."),
    list_only: bool = typer.Option(False, "--list", help="List the task families and exit."),
) -> None:
    """Write the built-in procedural skills suite (train + held-out splits) as canonical data."""
    from instillm.data.skills import SuiteConfig, build_suite, list_families, write_suite

    if list_only:
        table = Table(title="skills families")
        for col in ("name", "category", "phrasings", "what it asks"):
            table.add_column(col)
        for f in list_families():
            table.add_row(f["name"], f["category"], str(len(f["phrasings"])), f["doc"])
        out.print(table)
        return
    if output is None:
        _fail(InstillmError("give -o DIR to write the suite (or --list to see the families)"))
    try:
        suite = build_suite(SuiteConfig(seed=seed, n_train_per_family=n_train, n_eval_per_family=n_eval,
                                          cap_to_input_space=cap_to_input_space))
        paths = write_suite(suite, output)
    except InstillmError as e:
        _fail(e)
    for split, path in paths.items():
        out.print(f"{split:>18}: {len(suite[split]):>6} examples → {path}")


def _print_curation(summary) -> None:
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.rejected_by_reason.items())) or "none"
    out.print(f"kept {summary.n_kept} of {summary.n_in} row(s) → {summary.output}")
    out.print(f"rejected {summary.n_rejected} → {summary.rejects_path} ({reasons})")
    if summary.matched_eval_sets:
        out.print("matched eval sets: " + ", ".join(f"{k}: {v}" for k, v in summary.matched_eval_sets.items()))


@data_app.command("dedup")
def data_dedup(
    data: Path = typer.Argument(..., help="Canonical JSONL."),
    output: Path = typer.Option(..., "-o", "--output"),
    exact: Optional[bool] = typer.Option(None, "--exact/--no-exact", help="Normalized-hash dedup (default: on unless --rouge-l alone)."),
    minhash: Optional[float] = typer.Option(None, "--minhash", help="MinHash-LSH near-dup removal at this Jaccard threshold."),
    rouge_l: Optional[float] = typer.Option(None, "--rouge-l", help="Greedy Self-Instruct ROUGE-L filter at this F threshold."),
    on: str = typer.Option("conversation", "--on", help="conversation | instruction (text compared by exact/minhash)."),
) -> None:
    """Remove exact and near duplicates; first occurrences stay, the rest go to rejects with the kept line."""
    from instillm.synth.dedup import dedup_file

    try:
        with progress_bar("dedup") as advance:
            summary = dedup_file(data, output, exact=exact, minhash=minhash, rouge_l=rouge_l, on=on, progress=advance)
    except InstillmError as e:
        _fail(e)
    _print_curation(summary)


@data_app.command("decontaminate")
def data_decontaminate(
    data: Path = typer.Argument(..., help="Canonical JSONL."),
    eval_sets: List[Path] = typer.Option(..., "--eval", help="Eval files whose n-grams must not appear in training."),
    output: Path = typer.Option(..., "-o", "--output"),
    n: int = typer.Option(13, "--n", help="n-gram length in words."),
) -> None:
    """Drop training rows sharing an n-gram with any eval set; each reject names the eval set and n-gram."""
    from instillm.synth.decontaminate import decontaminate_file

    try:
        with progress_bar("decontaminating") as advance:
            summary = decontaminate_file(data, output, eval_sets, n=n, progress=advance)
    except InstillmError as e:
        _fail(e)
    _print_curation(summary)


@data_app.command("filter")
def data_filter(
    data: Path = typer.Argument(..., help="Canonical JSONL."),
    output: Path = typer.Option(..., "-o", "--output"),
    min_words: Optional[int] = typer.Option(4, "--min-words", help="Instruction words, at least."),
    max_words: Optional[int] = typer.Option(150, "--max-words", help="Instruction words, at most."),
    language: Optional[str] = typer.Option("en", "--language", help="en, or 'any' to keep every language."),
    blacklist: Optional[List[str]] = typer.Option(None, "--blacklist", help="Words that reject an instruction (default: Self-Instruct's)."),
    self_instruct_rules: bool = typer.Option(False, "--self-instruct-rules", help="Also Self-Instruct's punctuation/ASCII/'Write a program' rules."),
) -> None:
    """Length, language, keyword-blacklist and response-quality filters, with reasons."""
    from instillm.synth.filters import SELF_INSTRUCT_BLACKLIST, filter_file

    try:
        with progress_bar("filtering") as advance:
            summary = filter_file(data, output, min_words, max_words, None if language == "any" else language,
                                  blacklist if blacklist is not None else SELF_INSTRUCT_BLACKLIST,
                                  self_instruct_rules=self_instruct_rules, progress=advance)
    except InstillmError as e:
        _fail(e)
    _print_curation(summary)


@data_app.command("score")
def data_score(
    data: Path = typer.Argument(..., help="Canonical JSONL."),
    output: Path = typer.Option(..., "-o", "--output"),
    ifd_model: Optional[str] = typer.Option(None, "--ifd-model", help="Local model (path or hub id) that computes IFD."),
    template: str = typer.Option("auto", "--template", help="Chat template for IFD, as in training."),
    max_length: int = typer.Option(2048, "--max-length", help="IFD: tokens per sequence; longer prompts are cut from the left."),
    batch_size: int = typer.Option(8, "--batch-size", help="IFD: sequences per forward pass."),
    device: str = typer.Option("auto", "--device", help="IFD: auto | cpu | cuda[:N]."),
    rate: bool = typer.Option(False, "--rate", help="Rate each row 0-5 with an LLM judge (AlpaGasus prompt)."),
    backend: str = typer.Option("openai", "--backend", help="Judge backend: openai | transformers | vllm."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Judge endpoint (openai), e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option("", "--model", help="Judge model name (openai) or path (local)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Judge API key."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="On-disk cache of judge answers."),
    max_ifd: Optional[float] = typer.Option(1.0, "--max-ifd", help="Reject rows with IFD above this (the paper: 1)."),
    min_rating: Optional[float] = typer.Option(None, "--min-rating", help="Reject rows rated below this (AlpaGasus: 4.5)."),
    top_fraction: Optional[float] = typer.Option(None, "--top-fraction", help="Keep this fraction of the remaining rows, highest IFD first."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep this many of the remaining rows, highest IFD first."),
) -> None:
    """Score rows by IFD (local model) and/or an LLM rating; scores go to meta, selected-out rows to rejects."""
    from instillm.synth.llm import BackendConfig
    from instillm.synth.score import IFDConfig, RatingConfig, ScoreConfig, score_file

    try:
        ifd = IFDConfig(ifd_model, template, max_length, "truncate-prompt", batch_size, device) if ifd_model else None
        judge = RatingConfig(BackendConfig(kind=backend, model=model, base_url=base_url, api_key=api_key,
                                           cache=str(cache) if cache else None)) if rate else None
        config = ScoreConfig(ifd=ifd, rating=judge, max_ifd=max_ifd, min_rating=min_rating,
                             top_fraction=top_fraction, top_k=top_k)
        with progress_bar("scoring") as advance:
            summary = score_file(data, output, config, progress=advance)
    except InstillmError as e:
        _fail(e)
    _print_curation(summary.curation)
    if ifd is not None:
        out.print(f"IFD scored {summary.n_ifd_scored} row(s); prompt truncated to fit: {summary.n_truncated}")
    if judge is not None:
        out.print(f"rated {summary.n_rated} row(s); rating unparseable: {summary.n_rating_unparseable}")


@model_app.command("init")
def model_init(
    output: Path = typer.Option(..., "-o", "--output", help="Directory to write the model to."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (~2M params) | small (~28M)"),
    corpus: Optional[List[Path]] = typer.Option(None, "--corpus", help="Canonical JSONL or .txt to train the tokenizer on."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Create a tokenizer and a randomly initialised Llama model, saved as safetensors."""
    from instillm.models.factory import init_model

    try:
        texts = _corpus_texts(corpus) if corpus else None
        with progress_bar(f"building {preset} model"):
            path = init_model(preset=preset, output_dir=output, corpus=texts, seed=seed)
    except InstillmError as e:
        _fail(e)
    info = json.loads((path / "instillm_model.json").read_text())
    out.print(f"model ({info['n_params']:,} parameters, vocab {info['vocab_size']}) → {path}")


def _corpus_texts(paths: List[Path]) -> List[str]:
    """Texts for tokenizer training: message contents of canonical JSONL, or lines of .txt."""
    from instillm.data.importer import read_examples

    texts: List[str] = []
    for p in paths:
        if p.suffix == ".txt":
            texts += p.read_text(encoding="utf-8").splitlines()
        else:
            texts += [m.content for ex in read_examples(p) for m in ex.messages]
    return texts


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Training YAML (keys map 1:1 onto TrainConfig)."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a key: --set lora.r=16 (repeatable)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Supervised fine-tuning with loss on responses only; resumes from the newest checkpoint."""
    from instillm.train import load_config, train

    try:
        result = train(load_config(config, overrides or []), progress=progress)
    except InstillmError as e:
        _fail(e)
    table = Table(title=f"trained → {result.final_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = {"steps": result.steps, "final_loss": result.final_loss, "eval_loss": result.eval_loss,
            "trained_tokens": result.trained_tokens, "tokens_per_s": result.tokens_per_s}
    for k, v in rows.items():
        table.add_row(k, "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)))
    out.print(table)


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A training output_dir (holds final/ and run.json)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for the exported model."),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="Merge a LoRA adapter into the base model."),
) -> None:
    """Export a trained run as a standalone Hugging Face model (LoRA merged by default)."""
    from instillm.train import export

    try:
        path = export(run_dir, output, merge=merge)
    except InstillmError as e:
        _fail(e)
    out.print(f"exported → {path}")


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Run YAML (see configs/quickstart.yaml)."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Overrides output_dir."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a key: --set train.epochs=2"),
) -> None:
    """The whole loop: data → model → evaluate before → train → evaluate after → report."""
    from instillm.run import load_run_config, run

    try:
        cfg = load_run_config(config, overrides or [], output_dir)
        results = run(cfg, say=console.print, progress=progress_bar)
    except InstillmError as e:
        _fail(e)
    table = Table(title=f"{cfg.name}: exact match on held-out data")
    for col in ("split", "before", "after", "baseline"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, after in results["after"].items():
        before = results["before"].get(split)
        base = results["baseline"].get(split)
        table.add_row(split, "—" if before is None else f"{before:.1%}", f"{after:.1%}",
                      "—" if base is None else f"{base:.1%}")
    out.print(table)
    _print_suites(results.get("suites") or {})
    out.print(f"report: {Path(cfg.output_dir) / 'report.html'}  (also report.md, results.json)")


def _print_suites(suites: dict) -> None:
    """One line per evaluation suite of a run: its headline metric before → after."""
    from instillm.report import suite_headline

    for name, entry in suites.items():
        metric, after = suite_headline(name, entry["after"])
        before = suite_headline(name, entry["before"])[1] if entry.get("before") else None
        show = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
        out.print(f"{name}: {metric} {show(before)} → {show(after)}")


@app.command("eval")
def eval_cmd(
    targets: Optional[List[str]] = typer.Argument(None, help="MODEL (directory or hub id), or: winrate ANNOTATIONS.json..., or: judge (with --outputs, --reference)"),
    suite: str = typer.Option("heldout", "--suite", help="heldout | ifeval | zeroshot | mt-bench"),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="heldout: canonical JSONL with references; each file is a split."),
    responses: Optional[Path] = typer.Option(None, "--responses", help="ifeval: score these {prompt, response} rows, no model."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="ifeval: input_data.jsonl (default: the google/IFEval hub dataset)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="heldout: results.json; ifeval: a directory."),
    template: str = typer.Option("auto", "--template"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    batch_size: int = typer.Option(32, "--batch-size"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N examples of each file / prompts."),
    as_json: bool = typer.Option(False, "--json", help="winrate: print JSON only."),
    leaderboard: Optional[Path] = typer.Option(None, "--leaderboard", help="winrate: AlpacaEval leaderboard CSV to compare with."),
    heldout_clusters: Optional[str] = typer.Option(None, "--heldout-clusters", help="zeroshot: evaluate only these T0 clusters (a,b); default all."),
    length_normalize: bool = typer.Option(False, "--length-normalize", help="zeroshot: rank options by log-prob per token, not summed."),
    outputs: Optional[Path] = typer.Option(None, "--outputs", help="judge: the model's AlpacaEval outputs (JSON list of {instruction, output, generator})."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="judge: the reference model's AlpacaEval outputs (paired by instruction)."),
    judge_backend: str = typer.Option("openai", "--judge-backend", help="judge, mt-bench: openai | transformers | vllm."),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="judge, mt-bench: the judge's OpenAI-compatible endpoint."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="judge, mt-bench: the judge (served model name, or path / hub id)."),
    judge_api_key: Optional[str] = typer.Option(None, "--judge-api-key", help="judge, mt-bench: API key of the judge endpoint."),
    judge_cache: Optional[Path] = typer.Option(None, "--judge-cache", help="judge, mt-bench: response cache file: a re-run re-sends nothing."),
    judge_max_tokens: Optional[int] = typer.Option(None, "--judge-max-tokens", help="judge: default 100; mt-bench: default 2048."),
    judge_style: str = typer.Option("identifier", "--judge-style", help="judge: prompt asking for identifier (m / M) or ranking."),
) -> None:
    """Evaluate: heldout (unseen instructions), ifeval, mt-bench (LLM-judged), `eval winrate FILES`, `eval judge`.

    `eval judge` judges two AlpacaEval outputs files pairwise (both orders) and writes annotations.
    """
    targets = targets or []
    model = targets[0] if targets else None
    try:
        if model == "winrate":
            _eval_winrate(targets[1:], as_json, leaderboard)
        elif model == "judge" and len(targets) == 1:
            judge = (judge_backend, judge_model, judge_base_url, judge_api_key, judge_cache)
            _eval_judge(outputs, reference, judge, judge_style, judge_max_tokens, limit,
                        output or Path("annotations.json"), as_json)
        elif suite == "mt-bench" and len(targets) <= 1:
            judge = (judge_backend, judge_model, judge_base_url, judge_api_key, judge_cache)
            _eval_mt_bench(model, data, judge, judge_max_tokens, output or Path("mt_bench"), template,
                           max_new_tokens, batch_size, limit)
        elif len(targets) > 1:
            raise InstillmError(f"one MODEL at a time, got {targets}")
        elif suite == "heldout":
            _eval_heldout(model, data, output or Path("results.json"), template, max_new_tokens, batch_size, limit)
        elif suite == "ifeval":
            _eval_ifeval(model, responses, inputs, output or Path("ifeval"), template, max_new_tokens, batch_size, limit)
        elif suite == "zeroshot":
            _eval_zeroshot(model, data, heldout_clusters, output or Path("results.json"), template,
                           max_new_tokens, batch_size, limit, length_normalize)
        else:
            raise InstillmError(f"--suite {suite!r} is not available; choose heldout, ifeval or zeroshot")
    except InstillmError as e:
        _fail(e)


def _load_lm(model: Optional[str], template: str):
    from instillm.data.render import RenderConfig, Renderer
    from instillm.models.loading import load_model, load_tokenizer

    if not model:
        raise InstillmError("give a MODEL to generate with")
    tok = load_tokenizer(model)
    return load_model(model), tok, Renderer(tok, RenderConfig(template=template, max_length=1 << 30))


def _eval_heldout(model, data, output: Path, template, max_new_tokens, batch_size, limit) -> None:
    from instillm.evaluate.heldout import evaluate_model
    from instillm.run import load_eval_splits

    if not data:
        raise InstillmError("--suite heldout needs --data FILE (canonical JSONL with reference answers)")
    splits = load_eval_splits({p.stem: p for p in data}, limit, empty_ok=False)
    lm, tok, renderer = _load_lm(model, template)
    with progress_bar("generating", sum(map(len, splits.values()))) as advance:
        res = evaluate_model(lm, tok, splits, renderer, max_new_tokens, batch_size, advance)
    output.write_text(json.dumps({"model": model, "suite": "heldout",
                                  "splits": {k: v.to_dict() for k, v in res.items()}}, indent=1))
    table = Table(title=f"{model} on held-out data")
    for col in ("split", "n", "exact_match", "rouge_l", "correct"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name, r in res.items():
        o = r.overall
        table.add_row(name, str(o.n), f"{o.exact_match:.3f}", f"{o.rouge_l:.3f}", f"{o.correct:.3f}")
    out.print(table)
    out.print(f"results → {output}")


def _eval_ifeval(model, responses, inputs, out_dir: Path, template, max_new_tokens, batch_size, limit) -> None:
    from instillm.evaluate.ifeval import evaluate as ifeval

    inputs_path = Path(inputs) if inputs else _ifeval_from_hub(out_dir)
    if responses is None:
        responses = out_dir / "responses.jsonl"
        rows = ifeval.load_inputs(inputs_path)[:limit]
        lm, tok, renderer = _load_lm(model, template)
        from instillm.evaluate.suites import LocalLM, chat_replies

        # the replies `instillm run`'s ifeval suite scores: the same model scores the same in both
        with progress_bar("generating IFEval responses"):
            texts = chat_replies(LocalLM(lm, tok, renderer, str(model)), [r["prompt"] for r in rows],
                                 max_new_tokens, batch_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        responses.write_text("".join(json.dumps({"prompt": r["prompt"], "response": t}) + "\n"
                                     for r, t in zip(rows, texts)), encoding="utf-8")
    summary = ifeval.score_file(responses, inputs_path, out_dir)
    table = Table(title="IFEval")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose", "instruction_level_loose"):
        table.add_row(k, f"{summary[k]:.4f}")
    out.print(table)
    out.print(f"per-prompt verdicts and summary → {out_dir}")


def _eval_winrate(files: List[str], as_json: bool, leaderboard: Optional[Path]) -> None:
    from instillm.evaluate.winrate import win_rates

    if not files:
        raise InstillmError("eval winrate needs AlpacaEval annotation files (JSON lists)")
    results = win_rates(files)
    board = _read_leaderboard(leaderboard) if leaderboard else {}
    if as_json:
        rows = [{"model": r.model, "win_rate": r.win_rate, "lc_win_rate": r.lc_win_rate, "n": r.n,
                 "discrete_win_rate": r.discrete_win_rate, "standard_error": r.standard_error} for r in results]
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return
    table = Table(title="AlpacaEval win rates (%)")
    for col in ("model", "n", "win_rate", "± se", "discrete", "LC (ours)", "leaderboard win / LC"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for r in results:
        ref = board.get(r.model)
        table.add_row(r.model, str(r.n), f"{r.win_rate:.2f}", f"{r.standard_error:.2f}", f"{r.discrete_win_rate:.2f}",
                      f"{r.lc_win_rate:.2f}", f"{ref[0]:.2f} / {ref[1]:.2f}" if ref else "—")
    out.print(table)


def _judge_backend(kind: str, model: Optional[str], base_url: Optional[str], api_key: Optional[str],
                   cache: Optional[Path]):
    """The judge backend from the --judge-* options."""
    from instillm.synth.llm import BackendConfig, make_backend

    if not model:
        raise InstillmError("give the judge with --judge-model NAME (and --judge-base-url URL for an endpoint)")
    if kind == "openai" and not base_url:
        raise InstillmError("--judge-backend openai needs --judge-base-url URL (e.g. http://127.0.0.1:8000/v1)")
    return make_backend(BackendConfig(kind=kind, model=model, base_url=base_url, api_key=api_key,
                                      cache=str(cache) if cache else None))


def _eval_judge(outputs: Optional[Path], reference: Optional[Path], judge: tuple, style: str,
                max_tokens: Optional[int], limit: Optional[int], output: Path, as_json: bool) -> None:
    """`eval judge`: AlpacaEval-style pairwise judging of two outputs files, both orders per pair."""
    from instillm.evaluate.judge import JudgeConfig, judge_output_files, summarize, write_annotations

    if outputs is None or reference is None:
        raise InstillmError("eval judge needs --outputs MODEL_OUTPUTS.json and --reference REFERENCE_OUTPUTS.json")
    config = JudgeConfig(style=style, **({"max_tokens": max_tokens} if max_tokens else {}))
    backend = _judge_backend(*judge)
    try:
        with progress_bar("judging (both orders)") as advance:
            rows = judge_output_files(outputs, reference, backend, config, limit, advance)
    finally:
        backend.close()
    write_annotations(rows, output)
    summary = summarize(rows)
    if as_json:
        print(json.dumps(summary.to_dict()))
        return
    wr = summary.win_rate
    table = Table(title=f"{rows[0]['generator_2']} vs {rows[0]['generator_1']}, judged by {backend.model}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("win rate (%)", f"{wr.win_rate:.2f} ± {wr.standard_error:.2f}" if wr else "—")
    table.add_row("LC win rate (%)", f"{wr.lc_win_rate:.2f}" if wr else "—")
    table.add_row("discrete win rate (%)", f"{wr.discrete_win_rate:.2f}" if wr else "—")
    table.add_row("pairs judged / total", f"{summary.n_judged} / {summary.n_pairs}")
    table.add_row("failures (pairs; orders)", f"{summary.n_failures}; {summary.n_failed_orders}")
    out.print(table)
    out.print(f"annotations → {output}  (instillm eval winrate reads them)")


def _eval_mt_bench(model: Optional[str], data: Optional[List[Path]], judge: tuple, max_tokens: Optional[int],
                   out_dir: Path, template: str, max_new_tokens: int, batch_size: int, limit: Optional[int]) -> None:
    """`eval MODEL --suite mt-bench`: answer MT-Bench with a local model, grade 1-10 with the judge."""
    from instillm.evaluate.mt_bench import GradeConfig, load_mt_bench, local_responder, run_mt_bench

    if not data or len(data) != 1:
        raise InstillmError("--suite mt-bench needs --data DIR: FastChat's mt_bench folder (question.jsonl, "
                            "reference_answer_gpt4.jsonl, judge_prompts.jsonl)")
    bench = load_mt_bench(data[0])
    lm, tok, renderer = _load_lm(model, template)
    respond = local_responder(lm, tok, renderer, max_new_tokens, batch_size)
    config = GradeConfig(**({"max_tokens": max_tokens} if max_tokens else {}))
    backend = _judge_backend(*judge)
    try:
        with progress_bar("MT-Bench: answering, then judging") as advance:
            s = run_mt_bench(bench, respond, Path(model).name, backend, out_dir, config, limit, progress=advance)
    finally:
        backend.close()
    table = Table(title=f"MT-Bench: {s['model']} judged by {s['judge']} (1-10)")
    for col in ("", "score", "n", "failures"):
        table.add_column(col, justify="right" if col else "left")
    rows = [("overall", s)] + [(f"turn {k}", v) for k, v in s["per_turn"].items()] + list(s["per_category"].items())
    for name, r in rows:
        table.add_row(name, "—" if r["score"] is None else f"{r['score']:.2f}", str(r["n"]), str(r["n_failures"]))
    out.print(table)
    out.print(f"answers.jsonl, judgments.jsonl (FastChat format), mt_bench_summary.json → {out_dir}")


def _read_leaderboard(path: Path) -> dict:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return {row[""]: (float(row["win_rate"]), float(row["length_controlled_winrate"] or "nan"))
                for row in csv.DictReader(f)}


def _ifeval_from_hub(out_dir: Path) -> Path:
    """google/IFEval from the hub (online only), saved as input_data.jsonl in out_dir."""
    try:
        from datasets import load_dataset

        rows = load_dataset("google/IFEval", split="train")
    except Exception as e:  # offline or hub errors: say what to pass instead
        raise InstillmError(f"cannot load google/IFEval from the hub ({type(e).__name__}); pass --inputs input_data.jsonl") from e
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "input_data.jsonl"
    path.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@app.command("serve")
def serve_cmd(
    model: str = typer.Argument(..., help="A saved model directory (e.g. a run's final/ or an export) or hub id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="INSTILLM_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' (or set INSTILLM_API_KEY)."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Name clients send as `model` (default: the directory name)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Rows decoded together; 1 serves one request at a time."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="How long to wait for more requests before decoding a batch."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Prompt + completion tokens (default: the model's maximum positions)."),
    template: str = typer.Option("auto", "--template", help="Chat template: auto (the model's saved one), chatml, alpaca, plain."),
) -> None:
    """Serve MODEL with an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions)."""
    from instillm.serve import serve

    def announce(url: str) -> None:
        out.print(f"serving {model} at {url} (OpenAI-compatible; Ctrl-C stops)")
        sys.stdout.flush()

    try:
        serve(model, host=host, port=port, api_key=api_key, model_name=model_name, max_batch_size=max_batch_size,
              batch_wait_ms=batch_wait_ms, max_length=max_length, template=template, announce=announce)
    except InstillmError as e:
        _fail(e)


def _eval_zeroshot(model, data, heldout_clusters, output: Path, template, max_new_tokens, batch_size,
                   limit, length_normalize) -> None:
    """Zero-shot T0 clusters: rank classification / ROUGE-L per template, medians per dataset."""
    from instillm.evaluate.zeroshot import ZeroShotConfig, evaluate_zeroshot, select_templates

    if not data:
        raise InstillmError("--suite zeroshot needs --data DIR (T0 prompt-template files, e.g. ../shared/data/t0_multitask)")
    source = data[0] if len(data) == 1 and data[0].is_dir() else data
    config = ZeroShotConfig(limit=limit, length_normalize=length_normalize, max_new_tokens=max_new_tokens,
                            batch_size=batch_size)
    n_files = len(select_templates(source, heldout_clusters))
    lm, tok, renderer = _load_lm(model, template)
    with progress_bar("zero-shot templates", n_files) as advance:
        res = evaluate_zeroshot(lm, tok, renderer, source, heldout_clusters, config, advance)
    results = {"model": model, "suite": "zeroshot", **res.to_dict()}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    _print_zeroshot(results)
    out.print(f"results → {output}")


def _print_zeroshot(results: dict) -> None:
    def pct(v):
        return "—" if v is None else f"{v:.1%}"

    table = Table(title=f"{results['model']}: zero-shot T0 clusters (median over templates per dataset)")
    for col in ("cluster", "datasets", "accuracy", "rouge_l"):
        table.add_column(col, justify="left" if col == "cluster" else "right")
    for name, c in results["clusters"].items():
        table.add_row(name, str(len(c["datasets"])), pct(c["accuracy"]), pct(c["rouge_l"]))
    out.print(table)
    if results["skipped"]:
        out.print(f"skipped {len(results['skipped'])} template(s) without a scorable row: "
                  + ", ".join(sorted(results["skipped"])))


@data_app.command("t0-split")
def data_t0_split(
    source: Path = typer.Argument(..., help="Directory of T0 prompt-template files <dataset>_<template>.jsonl."),
    heldout_clusters: str = typer.Option(..., "--heldout-clusters", help="T0 clusters to hold out, e.g. sentiment,paraphrase_identification."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for train.jsonl and heldout.jsonl."),
) -> None:
    """Split T0 template files by task cluster into canonical train.jsonl / heldout.jsonl (category = cluster)."""
    from instillm.evaluate.t0_clusters import write_cluster_split

    try:
        summaries = write_cluster_split(source, output, heldout_clusters)
    except InstillmError as e:
        _fail(e)
    for split, s in summaries.items():
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(s.rejects_by_reason.items())) or "none"
        out.print(f"{split:>8}: {s.examples_written} example(s) from {len(s.per_file)} file(s) → {s.output}"
                  f" (rejected {s.rows_rejected}: {reasons})")


def _teacher_backend(kind: str, base_url: Optional[str], model: str, api_key: Optional[str],
                     cache: Optional[Path], concurrency: int, output: Path):
    """The teacher backend of `data self-instruct` / `data evolve`; the cache defaults to OUT.run/cache.sqlite."""
    from instillm.synth.llm import BackendConfig, make_backend
    from instillm.synth.pipeline import work_dir_for

    cache_path = cache if cache is not None else work_dir_for(output) / "cache.sqlite"
    return make_backend(BackendConfig(kind=kind, model=model, base_url=base_url, api_key=api_key,
                                      cache=str(cache_path), concurrency=concurrency))


def _with_teacher(teacher: tuple, output: Path, pipeline):
    """Build the teacher backend, run `pipeline(backend, advance)` under a progress bar, close it."""
    backend = _teacher_backend(*teacher, output)
    try:
        with progress_bar("teacher requests") as advance:
            return pipeline(backend, advance)
    finally:
        backend.close()


def _print_stage_counts(title: str, rows: List[tuple]) -> None:
    """One table: stage, items, kept, rejected by reason."""
    table = Table(title=title)
    for col in ("stage", "items", "kept", "rejected by reason"):
        table.add_column(col, justify="left" if col in ("stage", "rejected by reason") else "right")
    for stage, n, kept, reasons in rows:
        table.add_row(stage, str(n), str(kept), ", ".join(f"{r}: {c}" for r, c in reasons.items()) or "—")
    out.print(table)


@data_app.command("self-instruct")
def data_self_instruct(
    output: Path = typer.Option(..., "-o", "--output", help="Canonical JSONL to write (rejects and stats beside it)."),
    seeds: Optional[Path] = typer.Option(None, "--seeds", help="Seed tasks (Self-Instruct format); default: instillm's own."),
    num: Optional[int] = typer.Option(None, "-n", "--num-instructions", help="Machine instructions to bootstrap (default 100)."),
    backend: str = typer.Option("openai", "--backend", help="Teacher backend: openai | transformers | vllm."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Teacher endpoint (openai), e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(..., "--model", help="Teacher model name (openai) or path (local)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Teacher API key."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Response cache (default OUT.run/cache.sqlite)."),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight at once (openai)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of SelfInstructConfig settings."),
    overrides: List[str] = typer.Option([], "--set", help="KEY=VALUE setting (repeatable), e.g. rouge_threshold=0.6."),
) -> None:
    """Self-Instruct: bootstrap instructions from seed tasks, classify them, generate instances (resumable)."""
    from instillm.synth.pipeline import load_config
    from instillm.synth.self_instruct import SelfInstructConfig, load_seed_tasks, run_self_instruct

    try:
        extra = [f"num_instructions={num}"] if num is not None else []
        cfg = load_config(SelfInstructConfig, config, [*overrides, *extra], "self-instruct")
        if seeds is not None:
            load_seed_tasks(seeds)  # a bad seeds file fails before the teacher cache is created
        teacher = (backend, base_url, model, api_key, cache, concurrency)
        res = _with_teacher(teacher, output, lambda t, advance: run_self_instruct(t, output, seeds, cfg, progress=advance))
    except InstillmError as e:
        _fail(e)
    s = res.stats
    b, i = s["bootstrap"], s["instances"]
    _print_stage_counts(f"self-instruct → {res.output}", [
        ("instructions", b["candidates"], b["kept"], b["rejected"]),
        ("tasks", i["tasks"], i["tasks_kept"], i["tasks_rejected"]),
        ("instances", i["parsed"], i["kept"], i["rejected"])])
    out.print(f"{'resumed; ' if res.resumed else ''}bootstrap stopped: {b['stopped']}; classification tasks: "
              f"{s['classification']['classification']}/{s['classification']['tasks']}")
    out.print(f"wrote {s['examples']} example(s); rejects → {res.rejects}; stats → {res.stats_path}")


@data_app.command("evolve")
def data_evolve(
    data: Path = typer.Argument(..., help="Canonical JSONL whose single-turn rows are evolved."),
    output: Path = typer.Option(..., "-o", "--output", help="Canonical JSONL of the kept evolutions."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Evolution rounds (default 4)."),
    backend: str = typer.Option("openai", "--backend", help="Teacher backend: openai | transformers | vllm."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Teacher endpoint (openai), e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(..., "--model", help="Teacher model name (openai) or path (local)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Teacher API key."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Response cache (default OUT.run/cache.sqlite)."),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight at once (openai)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of EvolConfig settings."),
    overrides: List[str] = typer.Option([], "--set", help="KEY=VALUE setting (repeatable), e.g. judge=false."),
) -> None:
    """Evol-Instruct: evolve instructions in depth and breadth, answer them, eliminate failures (resumable)."""
    from instillm.synth.evol import EvolConfig, read_lineages, run_evol
    from instillm.synth.pipeline import load_config

    try:
        extra = [f"rounds={rounds}"] if rounds is not None else []
        cfg = load_config(EvolConfig, config, [*overrides, *extra], "evol")
        read_lineages(data)  # a missing or unreadable input fails before the teacher cache is created
        teacher = (backend, base_url, model, api_key, cache, concurrency)
        res = _with_teacher(teacher, output, lambda t, advance: run_evol(t, data, output, cfg, progress=advance))
    except InstillmError as e:
        _fail(e)
    s = res.stats
    _print_stage_counts(f"evolve → {res.output}",
                        [("input rows", s["input"]["rows"], s["input"]["lineages"], s["input"]["rejected"])]
                        + [(f"round {r['round']}", r["attempted"], r["kept"], r["eliminated"]) for r in s["rounds"]])
    out.print(f"{'resumed; ' if res.resumed else ''}wrote {s['examples']} example(s); rejects → {res.rejects}; "
              f"stats → {res.stats_path}")


def main() -> None:  # pragma: no cover - entry point
    """Console entry point."""
    app(prog_name="instillm")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
