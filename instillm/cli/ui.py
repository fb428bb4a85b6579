"""`instillm ui`: the browser UI (Data, Runs, Chat tabs) on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from instillm.cli._common import Device, cli_errors, console, out


def ui_cmd(
    paths: list[str] = typer.Argument(None, help="Run folders and data files to offer in the Runs and Data tabs."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback wants --auth."),
    port: int = typer.Option(7860, "--port", help="TCP port."),
    auth: str | None = typer.Option(
        None, "--auth", envvar="INSTILLM_UI_AUTH", help="USER:PASSWORD asked by the page (or set INSTILLM_UI_AUTH)."
    ),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="Model path or hub id (repeatable): the Data tab's tokenizer, Chat's A (and B)."
    ),
    template: str = typer.Option("auto", "--template", help="auto | tokenizer | chatml | alpaca | plain | FILE.jinja"),
    max_length: int = typer.Option(2048, "--max-length", help="The Data tab's max_length."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Where imported copies of non-canonical files go."),
    device: Device = "auto",
) -> None:
    """Browse data as training renders it, audit and review it; follow runs; chat with two models side by side.

    Built on Gradio (the `ui` extra of the package). Binds 127.0.0.1 by default; binding another interface
    without --auth prints a warning.
    """
    try:
        from instillm.ui.app import UIOptions, launch, parse_auth
    except ImportError as e:  # pragma: no cover - the ui extra is absent
        console.print(f"[bold red]error:[/] {escape(f'{e}: install the UI with pip install instillm[ui]')}")
        raise typer.Exit(code=1) from e

    def announce(url: str) -> None:
        out.print(f"instillm ui at {url} (Ctrl-C stops)", soft_wrap=True, highlight=False)
        sys.stdout.flush()

    with cli_errors():
        where = {"workdir": str(workdir)} if workdir is not None else {}
        opts = UIOptions(tuple(paths or ()), tuple(model), template, max_length, device, **where)
        launch(opts, host, port, parse_auth(auth), announce=announce, warn=lambda m: console.print(escape(m)))
