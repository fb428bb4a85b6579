"""`instillm model import FILE.gguf` and `instillm export MODEL --gguf` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from instillm.cli import app

RUNNER = CliRunner()


def invoke(*args: str):
    return RUNNER.invoke(app, list(args), env={"COLUMNS": "250"})


def test_export_gguf_then_import_gives_the_same_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    res = invoke("export", str(tiny_model_dir), "--gguf", "-o", str(tmp_path / "tiny.gguf"))
    assert res.exit_code == 0, res.output
    assert "f32" in res.output and (tmp_path / "tiny.gguf").is_file()
    res = invoke("model", "import", str(tmp_path / "tiny.gguf"), "-o", str(tmp_path / "back"))
    assert res.exit_code == 0, res.output
    assert "llama F32" in res.output
    info = json.loads((tmp_path / "back" / "gguf_source.json").read_text())
    assert info["architecture"] == "llama" and info["source_file"] == "tiny.gguf"
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_import_of_a_file_that_is_not_gguf_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_text("not a gguf")
    res = invoke("model", "import", str(bad), "-o", str(tmp_path / "out"))
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "model.gguf" in lines[0] and "GGUF" in lines[0]
    assert not (tmp_path / "out").exists()


def test_export_gguf_bad_outtype_names_the_choices(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = invoke("export", str(tiny_model_dir), "--gguf", "--outtype", "q4_k", "-o", str(tmp_path / "x.gguf"))
    assert res.exit_code == 1 and "q8_0" in res.output and not (tmp_path / "x.gguf").exists()
