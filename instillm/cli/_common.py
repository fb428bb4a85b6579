"""What every command group shares: the consoles, error handling, the progress bar, `--device`,
and the teacher/judge backend option group (declared once, spelled `--base-url`... or `--judge-base-url`...)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from instillm.errors import ConfigError, InstillmError

console = Console(stderr=True)  # progress, notes and errors
out = Console()  # results


def fail(err: Exception) -> NoReturn:
    """Print `err` as a one-line error and exit with status 1."""
    console.print(f"[bold red]error:[/] {escape(str(err))}")
    raise typer.Exit(code=1)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn an InstillmError raised inside the block into `error: ...` and exit status 1."""
    try:
        yield
    except InstillmError as e:
        fail(e)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator:
    """A rich progress bar on stderr; yields an `advance(n=1)` callable."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def metric_table(title: str, rows: dict) -> Table:
    """A two-column metric / value table."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, v)
    return table


# ------------------------------------------------------------------------------------- --device

Device = Annotated[
    str, typer.Option("--device", help="Where a local model runs: auto | cpu | cuda[:N] (auto: CUDA when available).")
]


# ------------------------------------------------------------------- teacher / judge backend group
# One definition of the LLM backend options (flag, help), used by `data self-instruct`, `data evolve`
# and `data score --rate` unprefixed, and by `eval judge` and `eval mt-bench` as --judge-*.
# Every command gives them the same defaults: BACKEND_KIND, None, ..., BACKEND_CONCURRENCY,
# BACKEND_TIMEOUT, and
# collects them into a BackendOptions, whose `config()` is the BackendConfig.

BACKEND_KIND = "openai"
BACKEND_CONCURRENCY = 8
_BACKEND_HELP = {
    "backend": "Backend: openai (an OpenAI-compatible endpoint) | transformers | vllm.",
    "base-url": "Endpoint (openai), e.g. http://127.0.0.1:8000/v1.",
    "model": "Served model name (openai), or a path / hub id (local).",
    "api-key": "API key of the endpoint.",
    "cache": "On-disk response cache: a re-run re-sends nothing.",
    "concurrency": "Requests in flight at once (openai).",
    "timeout": "Seconds one request may take before it is retried (openai); raise it for a slow local server.",
}
BACKEND_TIMEOUT = 60.0


def _backend_option(name: str, prefix: str, panel: str) -> typer.models.OptionInfo:
    return typer.Option(
        f"--{prefix}{name}",
        help=_BACKEND_HELP[name],
        rich_help_panel=panel,
        envvar="OPENAI_API_KEY" if name == "api-key" else None,
    )


_T, _R, _J = ("", "Teacher backend"), ("", "Judge backend (--rate)"), ("judge-", "Judge backend")
TeacherKind = Annotated[str, _backend_option("backend", *_T)]
TeacherBaseUrl = Annotated[str | None, _backend_option("base-url", *_T)]
TeacherModel = Annotated[str | None, _backend_option("model", *_T)]
TeacherApiKey = Annotated[str | None, _backend_option("api-key", *_T)]
TeacherCache = Annotated[Path | None, _backend_option("cache", *_T)]
TeacherConcurrency = Annotated[int, _backend_option("concurrency", *_T)]
TeacherTimeout = Annotated[float, _backend_option("timeout", *_T)]
RaterKind = Annotated[str, _backend_option("backend", *_R)]
RaterBaseUrl = Annotated[str | None, _backend_option("base-url", *_R)]
RaterModel = Annotated[str | None, _backend_option("model", *_R)]
RaterApiKey = Annotated[str | None, _backend_option("api-key", *_R)]
RaterCache = Annotated[Path | None, _backend_option("cache", *_R)]
RaterConcurrency = Annotated[int, _backend_option("concurrency", *_R)]
RaterTimeout = Annotated[float, _backend_option("timeout", *_R)]
JudgeKind = Annotated[str, _backend_option("backend", *_J)]
JudgeBaseUrl = Annotated[str | None, _backend_option("base-url", *_J)]
JudgeModel = Annotated[str | None, _backend_option("model", *_J)]
JudgeApiKey = Annotated[str | None, _backend_option("api-key", *_J)]
JudgeCache = Annotated[Path | None, _backend_option("cache", *_J)]
JudgeConcurrency = Annotated[int, _backend_option("concurrency", *_J)]
JudgeTimeout = Annotated[float, _backend_option("timeout", *_J)]


@dataclass(frozen=True)
class BackendOptions:
    """The values of one command's backend option group; `prefix` and `role` name them in errors."""

    kind: str
    base_url: str | None
    model: str | None
    api_key: str | None = field(repr=False)  # never printed with the options
    cache: Path | None
    concurrency: int
    prefix: str = ""
    role: str = "teacher"
    device: str = "auto"  # where a local (transformers) backend runs its model
    timeout: float = BACKEND_TIMEOUT  # seconds per HTTP request (openai)

    @classmethod
    def judge(
        cls,
        kind: str,
        base_url: str | None,
        model: str | None,
        api_key: str | None,
        cache: Path | None,
        concurrency: int,
        device: str = "auto",
        timeout: float = BACKEND_TIMEOUT,
    ) -> BackendOptions:
        """The `--judge-*` group of `eval judge` / `eval mt-bench`."""
        return cls(
            kind, base_url, model, api_key, cache, concurrency, "judge-", "judge", device=device, timeout=timeout
        )

    def config(self, default_cache: Path | None = None):
        """The `BackendConfig`; a missing model or endpoint is an error naming this group's flags."""
        from instillm.llm.backend import BackendConfig

        p = self.prefix
        if not self.model:
            raise ConfigError(f"give the {self.role} with --{p}model NAME (and --{p}base-url URL for an endpoint)")
        if self.kind == "openai" and not self.base_url:
            raise ConfigError(f"--{p}backend openai needs --{p}base-url URL (e.g. http://127.0.0.1:8000/v1)")
        cache = self.cache if self.cache is not None else default_cache
        return BackendConfig(
            kind=self.kind,
            model=self.model,
            base_url=self.base_url,
            api_key=self.api_key,
            cache=str(cache) if cache else None,
            concurrency=self.concurrency,
            device=self.device if self.kind != "openai" else "auto",
            timeout=self.timeout,
        )

    def open(self, default_cache: Path | None = None):
        """The backend itself (`make_backend`); the caller closes it."""
        from instillm.llm.backend import make_backend

        return make_backend(self.config(default_cache))
