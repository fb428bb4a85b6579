"""`instillm eval ...`: one subcommand per evaluation.

    instillm eval heldout MODEL --data FILE...        unseen instructions: exact match, ROUGE-L
    instillm eval ifeval [MODEL] [--responses FILE]   IFEval's verifiable instructions
    instillm eval zeroshot MODEL --data T0_DIR        held-out T0 clusters, zero-shot
    instillm eval mt-bench MODEL --data DIR --judge-* MT-Bench, graded 1-10 by an LLM judge
    instillm eval judge --outputs F --reference F     AlpacaEval pairwise judging → annotations
    instillm eval winrate ANNOTATIONS...              AlpacaEval win rates of annotation files

The older one-command spelling `instillm eval [MODEL] [--suite SUITE] OPTIONS` still works:
`LegacySuiteGroup` rewrites it to `instillm eval SUITE [MODEL] OPTIONS` (SUITE: heldout when no
--suite is given) before click parses it. `eval winrate ...` and `eval judge ...` were already
spelled as subcommands. So a MODEL path equal to a subcommand name must be written ./NAME.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from instillm.cli._common import (
    BACKEND_CONCURRENCY,
    BACKEND_KIND,
    BACKEND_TIMEOUT,
    BackendOptions,
    Device,
    JudgeApiKey,
    JudgeBaseUrl,
    JudgeCache,
    JudgeConcurrency,
    JudgeKind,
    JudgeModel,
    JudgeTimeout,
    cli_errors,
    fail,
    metric_table,
    out,
    progress_bar,
)
from instillm.errors import InstillmError

SUITES = ("heldout", "ifeval", "zeroshot", "mt-bench")  # what --suite accepted


def legacy_args(args: list[str], commands: set[str]) -> list[str]:
    """`[MODEL] [--suite SUITE] REST` → `SUITE [MODEL] REST` (SUITE defaults to heldout).

    Arguments that already start with a subcommand name, and a bare `--help`, are left alone.
    """
    if not args or args[0] in commands or args[0] == "--help":
        return list(args)
    suite, rest = "heldout", []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        if a == "--suite":
            if i + 1 == len(args):
                fail(InstillmError("--suite needs a value: " + ", ".join(SUITES)))
            suite, i = args[i + 1], i + 2
            continue
        if a.startswith("--suite="):
            suite = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    if suite not in SUITES:
        fail(InstillmError(f"--suite {suite!r} is not available; choose {', '.join(SUITES)}"))
    return [suite, *rest]


class LegacySuiteGroup(TyperGroup):
    """The `eval` group, also accepting the older `eval [MODEL] --suite SUITE ...` spelling."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # a click.Context (typer may vendor click)
        return super().parse_args(ctx, legacy_args(args, set(self.commands)))


app = typer.Typer(
    cls=LegacySuiteGroup,
    no_args_is_help=True,
    help="Evaluate a model: heldout, ifeval, zeroshot, mt-bench; judge and winrate for AlpacaEval.\n\n"
    "The older spelling `instillm eval [MODEL] --suite SUITE ...` still works (heldout without --suite).",
)

# Options of the commands that generate with a local model (heldout, ifeval, zeroshot, mt-bench).
Template = Annotated[
    str,
    typer.Option(
        "--template",
        help="Chat template: auto (the model's saved one) | tokenizer | chatml | alpaca | plain | FILE.jinja.",
    ),
]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Tokens generated per reply, at most.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Rows generated (or scored) together.")]
MAX_NEW_TOKENS, BATCH_SIZE = 128, 32


def _load_lm(model: str | None, template: str, device: str):
    """(model, tokenizer, inference renderer) of a local model."""
    from instillm.models.loading import load_local

    if not model:
        raise InstillmError("give a MODEL to generate with")
    local = load_local(model, template, device)
    return local.model, local.tokenizer, local.renderer


def _prepare_output(output: Path, inputs: Sequence[Path]) -> None:
    """Before any work: refuse an -o/--output that would replace an input, and create its folder."""
    from instillm.data.importer import refuse_overwrite

    refuse_overwrite(inputs, {f"-o/--output {output}": output})
    if output.is_dir():
        raise InstillmError(f"-o/--output {output} is a directory; give a file path, e.g. {output / 'results.json'}")
    with _writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def _writing(output: Path) -> Iterator[None]:
    """Turn an OSError while writing `output` into a one-line error naming -o/--output."""
    try:
        yield
    except OSError as e:
        raise InstillmError(f"cannot write {output} ({e.strerror or e}); pass another -o/--output") from e


def _write_json(output: Path, obj: Any) -> None:
    """`obj` as JSON in `output`, atomically (a temp file renamed into place), its folder created."""
    from instillm.data.io import temp_beside

    with _writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_beside(output)
        try:
            tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ heldout


@app.command("heldout")
def eval_heldout(
    model: str = typer.Argument(..., help="Model directory or hub id."),
    data: list[Path] | None = typer.Option(
        None, "--data", help="Canonical JSONL with reference answers; each file is a split."
    ),
    output: Path = typer.Option(Path("results.json"), "-o", "--output", help="results.json to write."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N examples of each file."),
    template: Template = "auto",
    max_new_tokens: MaxNewTokens = MAX_NEW_TOKENS,
    batch_size: BatchSize = BATCH_SIZE,
    device: Device = "auto",
) -> None:
    """Greedy generation on unseen instructions: exact match, ROUGE-L and family checkers, per split."""
    from instillm.evaluate.heldout import evaluate_model
    from instillm.run import load_eval_splits

    with cli_errors():
        if not data:
            raise InstillmError("eval heldout needs --data FILE (canonical JSONL with reference answers)")
        _prepare_output(output, data)
        splits = load_eval_splits({p.stem: p for p in data}, limit, empty_ok=False)
        lm, tok, renderer = _load_lm(model, template, device)
        with progress_bar("generating", sum(map(len, splits.values()))) as advance:
            res = evaluate_model(lm, tok, splits, renderer, max_new_tokens, batch_size, advance)
        splits_out = {k: v.to_dict() for k, v in res.items()}
        _write_json(output, {"model": model, "suite": "heldout", "splits": splits_out})
    table = Table(title=f"{model} on held-out data")
    for col in ("split", "n", "exact_match", "rouge_l", "correct"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name, r in res.items():
        o = r.overall
        table.add_row(name, str(o.n), f"{o.exact_match:.3f}", f"{o.rouge_l:.3f}", f"{o.correct:.3f}")
    out.print(table)
    out.print(f"results → {output}")


# ------------------------------------------------------------------------------ ifeval


@app.command("ifeval")
def eval_ifeval(
    model: str | None = typer.Argument(None, help="Model that answers the prompts (not needed with --responses)."),
    responses: Path | None = typer.Option(None, "--responses", help="Score these {prompt, response} rows; no model."),
    inputs: str | None = typer.Option(
        None, "--inputs", help="input_data.jsonl (default: the google/IFEval hub dataset, online)."
    ),
    output: Path = typer.Option(
        Path("ifeval"), "-o", "--output", help="Directory for responses, verdicts and the summary."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N prompts (when MODEL answers them)."),
    template: Template = "auto",
    max_new_tokens: MaxNewTokens = MAX_NEW_TOKENS,
    batch_size: BatchSize = BATCH_SIZE,
    device: Device = "auto",
) -> None:
    """IFEval: 25 verifiable instruction checkers, strict and loose; MODEL's replies or --responses."""
    from instillm.evaluate.ifeval import evaluate as ifeval

    with cli_errors():
        inputs_path = Path(inputs) if inputs else _ifeval_from_hub(output)
        if responses is None:
            responses = _ifeval_responses(
                model, inputs_path, output, limit, template, max_new_tokens, batch_size, device
            )
        summary = ifeval.score_file(responses, inputs_path, output)
    keys = ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose", "instruction_level_loose")
    out.print(metric_table("IFEval", {k: f"{summary[k]:.4f}" for k in keys}))
    out.print(f"per-prompt verdicts and summary → {output}")


def _ifeval_responses(
    model: str | None,
    inputs_path: Path,
    out_dir: Path,
    limit: int | None,
    template: str,
    max_new_tokens: int,
    batch_size: int,
    device: str,
) -> Path:
    """MODEL's replies to the IFEval prompts, written to OUT/responses.jsonl."""
    from instillm.evaluate.ifeval import evaluate as ifeval
    from instillm.evaluate.suites import LocalLM, chat_replies

    rows = ifeval.load_inputs(inputs_path)[:limit]
    lm, tok, renderer = _load_lm(model, template, device)
    # the replies `instillm run`'s ifeval suite scores: the same model scores the same in both
    with progress_bar("generating IFEval responses"):
        texts = chat_replies(
            LocalLM(lm, tok, renderer, str(model)), [r["prompt"] for r in rows], max_new_tokens, batch_size
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "responses.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": r["prompt"], "response": t}) + "\n" for r, t in zip(rows, texts)),
        encoding="utf-8",
    )
    return path


def _ifeval_from_hub(out_dir: Path) -> Path:
    """google/IFEval from the hub (online only), saved as input_data.jsonl in out_dir."""
    try:
        from datasets import load_dataset

        rows = load_dataset("google/IFEval", split="train")
    except Exception as e:  # offline or hub errors: say what to pass instead
        raise InstillmError(
            f"cannot load google/IFEval from the hub ({type(e).__name__}); pass --inputs input_data.jsonl"
        ) from e
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "input_data.jsonl"
    path.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ zeroshot


@app.command("zeroshot")
def eval_zeroshot(
    model: str = typer.Argument(..., help="Model directory or hub id."),
    data: list[Path] | None = typer.Option(
        None, "--data", help="T0 prompt-template files, or one directory of them (e.g. ../shared/data/t0_multitask)."
    ),
    heldout_clusters: str | None = typer.Option(
        None, "--heldout-clusters", help="Evaluate only these T0 clusters (a,b); default all."
    ),
    length_normalize: bool = typer.Option(
        False, "--length-normalize", help="Rank options by log-prob per token, not summed."
    ),
    output: Path = typer.Option(Path("results.json"), "-o", "--output", help="results.json to write."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N rows of each template file."),
    template: Template = "auto",
    max_new_tokens: MaxNewTokens = MAX_NEW_TOKENS,
    batch_size: BatchSize = BATCH_SIZE,
    device: Device = "auto",
) -> None:
    """Zero-shot held-out T0 clusters: options ranked by log-likelihood, generations by ROUGE-L.

    Scores are the median over templates per dataset, then the mean per cluster.
    """
    from instillm.evaluate.zeroshot import ZeroShotConfig, evaluate_zeroshot, select_templates

    with cli_errors():
        if not data:
            raise InstillmError(
                "eval zeroshot needs --data DIR (T0 prompt-template files, e.g. ../shared/data/t0_multitask)"
            )
        source = data[0] if len(data) == 1 and data[0].is_dir() else data
        config = ZeroShotConfig(
            limit=limit, length_normalize=length_normalize, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        n_files = len(select_templates(source, heldout_clusters))
        _prepare_output(output, data)
        lm, tok, renderer = _load_lm(model, template, device)
        with progress_bar("zero-shot templates", n_files) as advance:
            res = evaluate_zeroshot(lm, tok, renderer, source, heldout_clusters, config, advance)
        results = {"model": model, "suite": "zeroshot", **res.to_dict()}
        _write_json(output, results)
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
        out.print(
            f"skipped {len(results['skipped'])} template(s) without a scorable row: "
            + ", ".join(sorted(results["skipped"]))
        )


# ------------------------------------------------------------------------------ mt-bench


@app.command("mt-bench")
def eval_mt_bench(
    model: str | None = typer.Argument(None, help="Model directory or hub id that answers (or give --answers)."),
    answers: Path | None = typer.Option(
        None,
        "--answers",
        help="Grade these FastChat answer rows (JSONL, e.g. another tool's answers or "
        "reference_answer_gpt4.jsonl) instead of answering with MODEL.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="FastChat's mt_bench folder (question.jsonl, reference_answer_gpt4.jsonl, judge_prompts.jsonl).",
    ),
    output: Path = typer.Option(
        Path("mt_bench"), "-o", "--output", help="Directory for answers, judgments and the summary."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N questions."),
    template: Template = "auto",
    max_new_tokens: MaxNewTokens = MAX_NEW_TOKENS,
    batch_size: BatchSize = BATCH_SIZE,
    device: Device = "auto",
    judge_max_tokens: int | None = typer.Option(None, "--judge-max-tokens", help="Judge reply tokens (default 2048)."),
    judge_backend: JudgeKind = BACKEND_KIND,
    judge_base_url: JudgeBaseUrl = None,
    judge_model: JudgeModel = None,
    judge_api_key: JudgeApiKey = None,
    judge_cache: JudgeCache = None,
    judge_concurrency: JudgeConcurrency = BACKEND_CONCURRENCY,
    judge_timeout: JudgeTimeout = BACKEND_TIMEOUT,
) -> None:
    """MT-Bench: two-turn answers from MODEL (or --answers), each turn graded 1-10 by an LLM judge.

    The judge gets the published prompts and reference answers; the outputs are FastChat's files.
    """
    from instillm.evaluate.mt_bench import GradeConfig, load_mt_bench

    judge = BackendOptions.judge(
        judge_backend, judge_base_url, judge_model, judge_api_key, judge_cache, judge_concurrency, device, judge_timeout
    )
    with cli_errors():
        if data is None:
            raise InstillmError(
                "eval mt-bench needs --data DIR: FastChat's mt_bench folder (question.jsonl, "
                "reference_answer_gpt4.jsonl, judge_prompts.jsonl)"
            )
        if (model is None) == (answers is None):
            raise InstillmError("eval mt-bench needs a MODEL that answers or --answers FILE to grade (one of them)")
        bench = load_mt_bench(data)
        config = GradeConfig(**({"max_tokens": judge_max_tokens} if judge_max_tokens else {}))
        grade = _mt_bench_grader(bench, model, answers, output, template, max_new_tokens, batch_size, device)
        backend = judge.open()
        try:
            with progress_bar("MT-Bench: answering, then judging") as advance:
                s = grade(judge=backend, out_dir=output, config=config, limit=limit, progress=advance)
        finally:
            backend.close()
    _print_mt_bench(s)
    out.print(f"answers.jsonl, judgments.jsonl (FastChat format), mt_bench_summary.json → {output}")


def _mt_bench_grader(bench, model, answers, output, template, max_new_tokens, batch_size, device):
    """`grade(judge=, out_dir=, config=, limit=, progress=)`: grade the --answers file, or answer with MODEL first."""
    from instillm.evaluate.mt_bench import grade_mt_bench, load_answers, local_responder, run_mt_bench

    if answers is not None:
        from instillm.data.importer import refuse_overwrite

        names = ("judgments.jsonl", "mt_bench_summary.json")
        refuse_overwrite([answers], {f"-o/--output {output / n}": output / n for n in names})
        rows = load_answers(answers)
        return functools.partial(grade_mt_bench, bench, rows)
    lm, tok, renderer = _load_lm(model, template, device)
    respond = local_responder(lm, tok, renderer, max_new_tokens, batch_size)
    return functools.partial(run_mt_bench, bench, respond, Path(model).name)


def _print_mt_bench(s: dict) -> None:
    table = Table(title=f"MT-Bench: {s['model']} judged by {s['judge']} (1-10)")
    for col in ("", "score", "n", "failures"):
        table.add_column(col, justify="right" if col else "left")
    rows = [("overall", s)] + [(f"turn {k}", v) for k, v in s["per_turn"].items()] + list(s["per_category"].items())
    for name, r in rows:
        table.add_row(name, "—" if r["score"] is None else f"{r['score']:.2f}", str(r["n"]), str(r["n_failures"]))
    out.print(table)


# ------------------------------------------------------------------------------ judge


@app.command("judge")
def eval_judge(
    outputs: Path | None = typer.Option(
        None, "--outputs", help="The model's AlpacaEval outputs (JSON list of {instruction, output, generator})."
    ),
    reference: Path | None = typer.Option(
        None, "--reference", help="The reference model's AlpacaEval outputs (paired by instruction)."
    ),
    output: Path = typer.Option(
        Path("annotations.json"), "-o", "--output", help="Annotations to write (`eval winrate` reads them)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N pairs."),
    annotations: Path | None = typer.Option(
        None,
        "--annotations",
        help="Another judge's AlpacaEval annotations of the same pairs (e.g. *_annotations_weighted_gpt4_turbo.json):"
        " report how often this judge agrees with them (pairs matched by instruction and both outputs).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object only."),
    judge_style: str = typer.Option(
        "identifier", "--judge-style", help="Judge prompt: identifier (the judge answers m or M) | ranking."
    ),
    judge_max_tokens: int | None = typer.Option(None, "--judge-max-tokens", help="Judge reply tokens (default 100)."),
    judge_backend: JudgeKind = BACKEND_KIND,
    judge_base_url: JudgeBaseUrl = None,
    judge_model: JudgeModel = None,
    judge_api_key: JudgeApiKey = None,
    judge_cache: JudgeCache = None,
    judge_concurrency: JudgeConcurrency = BACKEND_CONCURRENCY,
    judge_timeout: JudgeTimeout = BACKEND_TIMEOUT,
    device: Device = "auto",
) -> None:
    """AlpacaEval-style pairwise judging of two outputs files, both orders per pair; writes annotations.

    Also prints the judge's failure modes: unreadable replies, flips, picks of the output shown first.

    A flip: the verdict changes when the two outputs swap places. --annotations: agreement with another judge.
    """
    from instillm.evaluate.judge import JudgeConfig, judge_output_files, summarize, write_annotations
    from instillm.evaluate.winrate import load_annotations

    judge = BackendOptions.judge(
        judge_backend, judge_base_url, judge_model, judge_api_key, judge_cache, judge_concurrency, device, judge_timeout
    )
    with cli_errors():
        if outputs is None or reference is None:
            raise InstillmError("eval judge needs --outputs MODEL_OUTPUTS.json and --reference REFERENCE_OUTPUTS.json")
        _prepare_output(output, [outputs, reference, *([annotations] if annotations else [])])
        config = JudgeConfig(style=judge_style, **({"max_tokens": judge_max_tokens} if judge_max_tokens else {}))
        reference_rows = load_annotations(annotations) if annotations else None
        backend = judge.open()
        try:
            with progress_bar("judging (both orders)") as advance:
                rows = judge_output_files(outputs, reference, backend, config, limit, advance)
        finally:
            backend.close()
        with _writing(output):
            write_annotations(rows, output)
        summary = summarize(rows, reference_rows)
    if as_json:
        print(json.dumps(summary.to_dict()))
        return
    _print_judge_summary(summary, rows, backend.model, annotations)
    out.print(f"annotations → {output}  (instillm eval winrate reads them)")


def _share(k: int, n: int) -> str:
    return f"{k / n:.1%} ({k} / {n})" if n else "—"


def _judge_modes(summary: Any, annotations: Path | None) -> dict[str, str]:
    """The judge's failure modes and, with --annotations, its agreement with the other judge (table rows)."""
    fm, agree = summary.failure_modes, summary.agreement
    modes = {}
    if fm is not None:
        modes = {
            "parse failures (replies)": _share(fm.n_failed_orders, fm.n_replies),
            "position flips (pairs, both orders read)": _share(fm.n_flips, fm.n_both_read),
            "first-position picks (verdicts)": _share(fm.n_first_position, fm.n_decided_verdicts),
        }
    if agree is not None:
        wins = [agree[k] for k in ("output_2_share_ours", "output_2_share_reference")]
        modes |= {
            "reference judge": agree["reference_annotator"] or str(annotations),
            "pairs matched / total (swapped)": f"{agree['n_matched']} / {agree['n_rows']} ({agree['n_swapped']})",
            "agreement (decided pairs)": _share(agree["n_agree"], agree["n_decided"]),
            "Cohen's kappa": "—" if agree["kappa"] is None else f"{agree['kappa']:.3f}",
            "output_2 wins: ours; reference": "; ".join("—" if w is None else f"{w:.1%}" for w in wins),
            "ties: ours; reference": f"{agree['n_ties_ours']}; {agree['n_ties_reference']}",
        }
    return modes


def _print_judge_summary(summary: Any, rows: list[dict], judge_model: str, annotations: Path | None) -> None:
    wr, agree = summary.win_rate, summary.agreement
    out.print(
        metric_table(
            f"{rows[0]['generator_2']} vs {rows[0]['generator_1']}, judged by {judge_model}",
            {
                "win rate (%)": f"{wr.win_rate:.2f} ± {wr.standard_error:.2f}" if wr else "—",
                "LC win rate (%)": f"{wr.lc_win_rate:.2f}" if wr else "—",
                "discrete win rate (%)": f"{wr.discrete_win_rate:.2f}" if wr else "—",
                "pairs judged / total": f"{summary.n_judged} / {summary.n_pairs}",
                "failures (pairs; orders)": f"{summary.n_failures}; {summary.n_failed_orders}",
                **_judge_modes(summary, annotations),
            },
        )
    )
    if agree is not None and not agree["n_matched"]:
        out.print(f"no pair matched {annotations}: its instructions and outputs differ from the judged ones")


# ------------------------------------------------------------------------------ winrate


@app.command("winrate")
def eval_winrate(
    files: list[str] | None = typer.Argument(
        None, help="AlpacaEval annotation files (JSON lists), e.g. from `eval judge`."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only (one object for one file)."),
    leaderboard: Path | None = typer.Option(None, "--leaderboard", help="AlpacaEval leaderboard CSV to compare with."),
) -> None:
    """AlpacaEval win rates (plain, discrete, length-controlled) of annotation files, one row per model."""
    from instillm.evaluate.winrate import win_rates

    with cli_errors():
        if not files:
            raise InstillmError("eval winrate needs AlpacaEval annotation files (JSON lists)")
        results = win_rates(files)
        board = _read_leaderboard(leaderboard) if leaderboard else {}
    if as_json:
        rows = [
            {
                "model": r.model,
                "win_rate": r.win_rate,
                "lc_win_rate": r.lc_win_rate,
                "n": r.n,
                "discrete_win_rate": r.discrete_win_rate,
                "standard_error": r.standard_error,
            }
            for r in results
        ]
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return
    table = Table(title="AlpacaEval win rates (%)")
    for col in ("model", "n", "win_rate", "± se", "discrete", "LC (ours)", "leaderboard win / LC"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for r in results:
        ref = board.get(r.model)
        table.add_row(
            r.model,
            str(r.n),
            f"{r.win_rate:.2f}",
            f"{r.standard_error:.2f}",
            f"{r.discrete_win_rate:.2f}",
            f"{r.lc_win_rate:.2f}",
            f"{ref[0]:.2f} / {ref[1]:.2f}" if ref else "—",
        )
    out.print(table)


def _read_leaderboard(path: Path) -> dict:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return {
            row[""]: (float(row["win_rate"]), float(row["length_controlled_winrate"] or "nan"))
            for row in csv.DictReader(f)
        }
