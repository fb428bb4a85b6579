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
