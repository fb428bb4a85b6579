"""`instillm model ...`: create and manage models."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from instillm.cli._common import cli_errors, out, progress_bar

app = typer.Typer(help="Create and manage models.", no_args_is_help=True)


@app.command("init")
def model_init(
    output: Path = typer.Option(..., "-o", "--output", help="Directory to write the model to."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (~2M params) | small (~28M)"),
    corpus: list[Path] | None = typer.Option(
        None, "--corpus", help="Canonical JSONL or .txt to train the tokenizer on."
    ),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Create a tokenizer and a randomly initialised Llama model, saved as safetensors."""
    from instillm.models.factory import init_model

    with cli_errors():
        texts = _corpus_texts(corpus) if corpus else None
        with progress_bar(f"building {preset} model"):
            path = init_model(preset=preset, output_dir=output, corpus=texts, seed=seed)
    info = json.loads((path / "instillm_model.json").read_text())
    out.print(f"model ({info['n_params']:,} parameters, vocab {info['vocab_size']}) → {path}")


@app.command("import")
def model_import(
    file: Path = typer.Argument(..., help="A GGUF file (llama architecture), e.g. SmolLM2-135M-Instruct.Q4_1.gguf."),
    output: Path = typer.Option(..., "-o", "--output", help="New (or empty) directory for the model."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights after dequantization: float32 | bfloat16."),
) -> None:
    """Import a GGUF as a plain Hugging Face model folder (safetensors, tokenizer, chat template)."""
    from instillm.models.gguf import import_gguf

    with cli_errors():
        with progress_bar(f"importing {file.name}"):
            info = import_gguf(file, output, dtype)
    out.print(f"{info['architecture']} {info['quantization']} ({info['tensor_count']} tensors) → {info['output_dir']}")


def _corpus_texts(paths: list[Path]) -> list[str]:
    """Texts for tokenizer training: message contents of canonical JSONL, or lines of .txt."""
    from instillm.data.importer import read_examples

    texts: list[str] = []
    for p in paths:
        if p.suffix == ".txt":
            texts += p.read_text(encoding="utf-8").splitlines()
        else:
            texts += [m.content for ex in read_examples(p) for m in ex.messages]
    return texts
