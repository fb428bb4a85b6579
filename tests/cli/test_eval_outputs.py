"""Where eval commands write: -o in a new folder, written atomically, never over an input; a bad
reference preference in `eval judge --annotations` is a missing decision, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from instillm.cli import app
from instillm.data.importer import write_examples
from instillm.data.schema import Example, Message

runner = CliRunner()


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _heldout_data(tmp_path: Path) -> Path:
    rows = [Example(messages=(Message("user", f"Say {w}."), Message("assistant", w))) for w in ("yes", "no")]
    return write_examples(rows, tmp_path / "split.jsonl")


def test_heldout_writes_into_a_new_folder(tmp_path: Path, tiny_model_dir: Path):
    data, output = _heldout_data(tmp_path), tmp_path / "newdir" / "deeper" / "results.json"
    args = ["eval", "heldout", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "2", "-o", str(output)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(output.read_text())["splits"]["split"]["n"] == 2
    assert sorted(p.name for p in output.parent.iterdir()) == ["results.json"]  # no temp file left


def test_heldout_refuses_an_output_over_its_data_before_generating(tmp_path: Path, tiny_model_dir: Path):
    data = _heldout_data(tmp_path)
    before = data.read_bytes()
    res = runner.invoke(app, ["eval", "heldout", str(tiny_model_dir), "--data", str(data), "-o", str(data)])
    assert res.exit_code == 1 and "-o/--output" in res.output and "would overwrite input" in _flat(res.output)
    assert data.read_bytes() == before


def test_heldout_output_that_cannot_be_written_is_a_one_line_error(tmp_path: Path, tiny_model_dir: Path):
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "results.json"  # its folder would be a file
    data = str(_heldout_data(tmp_path))
    res = runner.invoke(app, ["eval", "heldout", str(tiny_model_dir), "--data", data, "-o", str(output)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output  # not a traceback
    assert "cannot write" in _flat(res.output) and "-o/--output" in _flat(res.output)


def _judge_files(tmp_path: Path) -> list[str]:
    model = [{"instruction": "Name a colour.", "output": "Blue.", "generator": "mine"}]
    ref = [{"instruction": "Name a colour.", "output": "Red.", "generator": "base"}]
    (tmp_path / "m.json").write_text(json.dumps(model))
    (tmp_path / "r.json").write_text(json.dumps(ref))
    return ["eval", "judge", "--outputs", str(tmp_path / "m.json"), "--reference", str(tmp_path / "r.json")]


def test_judge_refuses_an_output_over_its_inputs(tmp_path: Path):
    args = _judge_files(tmp_path)
    backend = ["--judge-model", "m", "--judge-base-url", "http://127.0.0.1:9/v1"]
    for target in ("m.json", "r.json"):
        before = (tmp_path / target).read_bytes()
        res = runner.invoke(app, [*args, *backend, "-o", str(tmp_path / target)])
        assert res.exit_code == 1 and "would overwrite input" in _flat(res.output), res.output
        assert (tmp_path / target).read_bytes() == before


def test_judge_agreement_with_a_non_numeric_reference_preference(tmp_path: Path, tiny_server):
    args = _judge_files(tmp_path)
    reference = [
        {"instruction": "Name a colour.", "output_1": "Red.", "output_2": "Blue.", "preference": "NA", "annotator": "x"}
    ]
    (tmp_path / "ref_ann.json").write_text(json.dumps(reference))
    backend = ["--judge-base-url", tiny_server.base_url, "--judge-model", tiny_server.model, "--judge-max-tokens", "4"]
    extra = ["--judge-cache", str(tmp_path / "cache.sqlite"), "--annotations", str(tmp_path / "ref_ann.json")]
    out = tmp_path / "new" / "ann.json"
    res = runner.invoke(app, [*args, *backend, *extra, "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    agreement = json.loads(res.stdout)["agreement"]
    assert agreement["n_matched"] == 1 and agreement["n_missing"] == 1 and agreement["n_decided"] == 0
    assert len(json.loads(out.read_text())) == 1


def test_judge_output_that_is_a_directory_is_refused_before_judging(tmp_path: Path):
    backend = ["--judge-model", "m", "--judge-base-url", "http://127.0.0.1:9/v1"]
    res = runner.invoke(app, [*_judge_files(tmp_path), *backend, "-o", str(tmp_path)])
    assert res.exit_code == 1 and "is a directory" in _flat(res.output), res.output
