"""The `instillm` command: parses arguments, calls the library, prints. No logic lives here.

One module per command group: `data` (instillm data ...), `eval` (instillm eval ...), `model`
(instillm model ...), `train` for the top-level train, run, serve and export, and `ui` for the
browser UI. `_common` holds what they share: consoles, error handling, the progress bar, `--device`
and the teacher/judge backend option group.
"""

from __future__ import annotations

import typer

from instillm.cli import data as _data
from instillm.cli import eval as _eval
from instillm.cli import model as _model
from instillm.cli import train as _train
from instillm.cli import ui as _ui
from instillm.cli._common import console, out, progress_bar
from instillm.cli.train import serve_cmd

__all__ = ["app", "main", "console", "out", "progress_bar", "serve_cmd"]

app = typer.Typer(help="Instruction fine-tuning of language models, end to end.", no_args_is_help=True)
app.add_typer(_data.app, name="data")
app.add_typer(_model.app, name="model")
app.add_typer(_eval.app, name="eval")
_train.register(app)
app.command("ui")(_ui.ui_cmd)


@app.callback()
def _quiet_libraries() -> None:
    """instillm draws its own progress bars; transformers' per-file bars would interleave with them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main() -> None:  # pragma: no cover - entry point
    """Console entry point."""
    app(prog_name="instillm")
