"""No command writes over one of its inputs: every data command refuses before it reads or calls a teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from instillm.cli import app

ROW = '{"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'


@pytest.mark.parametrize(
    "args",
    [
        ["data", "dedup", "{a}", "-o", "{a}"],
        ["data", "filter", "{a}", "-o", "{a}"],
        ["data", "dedup", "{a}", "-o", "{b}"],  # b.rejects.jsonl would be the input a
        ["data", "evolve", "{a}", "-o", "{a}", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"],
        ["data", "self-instruct", "--seeds", "{a}", "-o", "{a}", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"],
    ],
)
def test_data_commands_refuse_to_write_over_an_input(tmp_path: Path, args: list[str]) -> None:
    a = tmp_path / ("b.rejects.jsonl" if "{b}" in args else "a.jsonl")
    a.write_text(ROW)
    argv = [x.format(a=a, b=tmp_path / "b.jsonl") for x in args]
    res = CliRunner().invoke(app, argv, env={"COLUMNS": "250"})
    assert res.exit_code == 1 and "would overwrite input" in res.output, res.output
    assert a.read_text() == ROW
    assert sorted(p.name for p in tmp_path.iterdir()) == [a.name]  # no journal, cache or temp file


def test_curation_outputs_get_the_users_umask(tmp_path: Path) -> None:
    import os

    a = tmp_path / "a.jsonl"
    a.write_text(ROW)
    old = os.umask(0o027)
    try:
        res = CliRunner().invoke(app, ["data", "dedup", str(a), "-o", str(tmp_path / "out.jsonl")])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for name in ("out.jsonl", "out.rejects.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


# ---------------------------------------------------------------- export: never over the run or its model


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1-step full fine-tuning run and a 1-step LoRA run of the tiny model."""
    from instillm.train.config import config_from_dict
    from instillm.train.loop import train
    from tests.train.helpers import base_config, make_examples, write_jsonl

    tmp = tmp_path_factory.mktemp("export")
    data = write_jsonl(tmp / "d.jsonl", make_examples(8))
    for name, extra in (("full", {}), ("lora", {"lora": {"r": 4, "dropout": 0.0}})):
        train(config_from_dict(base_config(tiny_model_dir, data, tmp / name, max_steps=1, **extra)), progress=False)
    return {"full": tmp / "full", "lora": tmp / "lora"}


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["full", "lora"])
@pytest.mark.parametrize("target", ["{run}/final", "{run}", "{run}/final/sub", "{run}/merged", "{run}/.."])
def test_export_refuses_to_write_over_or_into_the_run(runs: dict[str, Path], kind: str, target: str) -> None:
    run = runs[kind]
    before = _files(run)
    res = CliRunner().invoke(app, ["export", str(run), "-o", target.format(run=run)], env={"COLUMNS": "250"})
    assert res.exit_code == 1 and "-o/--output" in res.output and "export to a directory outside" in res.output
    assert _files(run) == before


def test_export_refuses_a_non_empty_dir_that_holds_no_model(runs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, ["export", str(runs["full"]), "-o", str(tmp_path)], env={"COLUMNS": "250"})
    assert res.exit_code == 1 and "holds no exported model" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_export_replaces_an_earlier_export_whole_and_leaves_no_temp_dir(runs, kind, tmp_path) -> None:
    out = tmp_path / "merged"
    for _ in range(2):
        res = CliRunner().invoke(app, ["export", str(runs[kind]), "-o", str(out)])
        assert res.exit_code == 0, res.output
    (out / "stale.txt").write_text("from an older export")
    assert CliRunner().invoke(app, ["export", str(runs[kind]), "-o", str(out), "--no-merge"]).exit_code == 0
    assert not (out / "stale.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_a_failed_export_leaves_no_output(runs, tmp_path, monkeypatch) -> None:
    from transformers import PreTrainedTokenizerBase

    from instillm.train.loop import export

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        export(runs["full"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither a half-written out/ nor a temp dir


def test_gguf_export_of_a_lora_run_refuses_to_replace_its_adapter(runs: dict[str, Path]) -> None:
    adapter = runs["lora"] / "final" / "adapter_model.safetensors"
    before = adapter.read_bytes()
    res = CliRunner().invoke(app, ["export", str(runs["lora"]), "--gguf", "-o", str(adapter)], env={"COLUMNS": "250"})
    assert res.exit_code == 1 and "is a file of the model folder" in res.output, res.output
    assert adapter.read_bytes() == before
