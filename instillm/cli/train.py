"""The top-level commands: `instillm train`, `run`, `serve` and `export`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from instillm.cli._common import Device, cli_errors, console, out, progress_bar


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `app`."""
    app.command("train")(train_cmd)
    app.command("export")(export_cmd)
    app.command("run")(run_cmd)
    app.command("serve")(serve_cmd)


def train_cmd(
    config: Path = typer.Argument(..., help="Training YAML (keys map 1:1 onto TrainConfig)."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override a key: --set lora.r=16 (repeatable)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    device: Device = "auto",
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Train into a non-empty output_dir that holds no "
        "checkpoints or run.json of this run (its other files are left alone).",
    ),
) -> None:
    """Supervised fine-tuning with loss on responses only; resumes from the newest checkpoint."""
    from instillm.train import load_config, train

    with cli_errors():
        result = train(load_config(config, overrides or []), progress=progress, device=device, overwrite=overwrite)
    table = Table(title=f"trained → {result.final_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "eval_loss": result.eval_loss,
        "trained_tokens": result.trained_tokens,
        "tokens_per_s": result.tokens_per_s,
    }
    for k, v in rows.items():
        table.add_row(k, "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)))
    out.print(table)


def export_cmd(
    run_dir: Path = typer.Argument(
        ..., help="A training output_dir (holds final/ and run.json), or with --gguf also a model directory."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for the exported model (--gguf: the file)."),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="Merge a LoRA adapter into the base model."),
    gguf: bool = typer.Option(
        False,
        "--gguf",
        help="Write one GGUF file for llama.cpp / Ollama (Llama family): "
        "weights, tokenizer, chat template, end-of-turn ids.",
    ),
    outtype: str = typer.Option("f32", "--outtype", help="GGUF weight type: f32 | f16 | bf16 | q8_0."),
) -> None:
    """Export a trained run as a standalone Hugging Face model (LoRA merged by default) or as GGUF."""
    with cli_errors():
        if gguf:
            from instillm.train.to_gguf import export_run_gguf

            info = export_run_gguf(run_dir, output, outtype)
            out.print(
                f"exported {info['tensor_count']} tensors ({info['outtype']}, {info['bytes']:,} bytes) → {output}"
            )
            return
        from instillm.train import export

        path = export(run_dir, output, merge=merge)
    out.print(f"exported → {path}")


def run_cmd(
    config: Path = typer.Argument(..., help="Run YAML (see configs/quickstart.yaml)."),
    output_dir: str | None = typer.Option(None, "--output-dir", help="Overrides output_dir."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override a key: --set train.epochs=2"),
    device: Device = "auto",
) -> None:
    """The whole loop: data → model → evaluate before → train → evaluate after → report.

    --device is where the evaluations run; training places the model itself.
    """
    from instillm.run import load_run_config, run

    with cli_errors():
        cfg = load_run_config(config, overrides or [], output_dir)
        results = run(cfg, say=console.print, progress=progress_bar, device=device)
    _print_heldout(cfg.name, results)
    _print_suites(results.get("suites") or {})
    out.print(f"report: {Path(cfg.output_dir) / 'report.html'}  (also report.md, results.json)")


def _print_heldout(name: str, results: dict) -> None:
    """Exact match per held-out split: before, after, baseline."""
    table = Table(title=f"{name}: exact match on held-out data")
    for col in ("split", "before", "after", "baseline"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, after in results["after"].items():
        before = results["before"].get(split)
        base = results["baseline"].get(split)
        table.add_row(
            split, "—" if before is None else f"{before:.1%}", f"{after:.1%}", "—" if base is None else f"{base:.1%}"
        )
    out.print(table)


def _print_suites(suites: dict) -> None:
    """One line per evaluation suite of a run: its headline metric before → after."""
    from instillm.report import suite_headline

    for name, entry in suites.items():
        metric, after = suite_headline(name, entry["after"])
        before = suite_headline(name, entry["before"])[1] if entry.get("before") else None
        show = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
        out.print(f"{name}: {metric} {show(before)} → {show(after)}")


def serve_cmd(
    model: str = typer.Argument(..., help="A saved model directory (e.g. a run's final/ or an export) or hub id."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes the server to the network (needs a key)."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="INSTILLM_API_KEY",
        help="Require 'Authorization: Bearer KEY' (or set INSTILLM_API_KEY).",
    ),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Name clients send as `model` (default: the directory name)."
    ),
    max_batch_size: int = typer.Option(
        32, "--max-batch-size", help="Most rows decoded together; 1 serves one row at a time."
    ),
    batch_wait_ms: float = typer.Option(
        5.0, "--batch-wait-ms", help="When idle, how long to wait for more requests before decoding."
    ),
    max_length: int | None = typer.Option(
        None, "--max-length", help="Prompt + completion tokens (default: the model's maximum positions)."
    ),
    template: str = typer.Option(
        "auto", "--template", help="Chat template: auto (the model's saved one), chatml, alpaca, plain."
    ),
    device: Device = "auto",
    max_request_bytes: int = typer.Option(
        4 * 1024 * 1024, "--max-request-bytes", help="Largest request body; bigger ones get 413 before they are read."
    ),
    max_rows: int = typer.Option(256, "--max-rows", help="Most rows (prompts x n) one request may ask for."),
    allow_remote_without_key: bool = typer.Option(
        False, "--allow-remote-without-key", help="Serve a non-loopback --host without an API key anyway."
    ),
    scheduler: str = typer.Option(
        "continuous",
        "--scheduler",
        help="continuous: requests join the running batch at the next step and leave when done; "
        "static: one batch decoded to its end, then the next (for comparison).",
    ),
    prefix_cache_tokens: int = typer.Option(
        4096, "--prefix-cache-tokens", help="Prompt tokens whose keys/values are kept for reuse (0: off)."
    ),
    priority_rows: int = typer.Option(
        0,
        "--priority-rows",
        help="Short requests first: while a request asking <= 32 tokens runs or waits, decode steps take its rows "
        "and others up to this many rows, and long requests wait to join. Lower latency for short requests on a "
        "CPU, less throughput (0: the whole batch at every step).",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="CPU threads for the model (default: torch's, one per core). On a CPU shared with other jobs, "
        "fewer threads than cores avoid torch's threads waiting on each other (measured: a stall, see README).",
    ),
) -> None:
    """Serve MODEL with an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions).

    A --host other than loopback needs --api-key (or INSTILLM_API_KEY), or --allow-remote-without-key.
    """
    from rich.markup import escape

    from instillm.serve import serve

    def announce(url: str) -> None:
        out.print(f"serving {model} at {url} (OpenAI-compatible; Ctrl-C stops)")
        sys.stdout.flush()

    def warn(message: str) -> None:
        console.print(f"[bold red]{escape(message)}[/]")

    with cli_errors():
        serve(
            model,
            host=host,
            port=port,
            api_key=api_key or None,
            model_name=model_name,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            max_length=max_length,
            template=template,
            device=device,
            announce=announce,
            max_request_bytes=max_request_bytes,
            max_rows=max_rows,
            allow_remote_without_key=allow_remote_without_key,
            warn=warn,
            scheduler=scheduler,
            prefix_cache_tokens=prefix_cache_tokens,
            priority_rows=priority_rows,
            threads=threads,
        )
