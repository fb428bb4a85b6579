"""`instillm run`'s bookkeeping: stages.json survives a torn write, files are written whole, and the
train stage starts over when its settings changed but resumes an interrupted run of the same ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from instillm.errors import ConfigError
from instillm.run import RunContext, Stages, _no_progress, run_config_from_dict, stage_train, write_atomic
from instillm.train.checkpoint import OutputLock
from tests.train.helpers import make_examples, write_jsonl

# ---------------------------------------------------------------- stages.json and atomic writes


@pytest.mark.parametrize("torn", ['{"data": {"hash": "ab', "[1, 2]", "", '{"data": 5, "model": {"hash": "k"}}'])
def test_an_unreadable_stages_json_means_no_stage_finished(tmp_path, caplog, torn):
    (tmp_path / "stages.json").write_text(torn)
    with caplog.at_level(logging.WARNING):
        stages = Stages(tmp_path)
    assert not stages.done("data", "ab")
    assert ("unreadable" in caplog.text) == (not torn.startswith('{"data": 5'))
    stages.start("data", "k1")
    stages.finish("data", "k1", 1.234)
    assert stages.seconds() == {"data": 1.23}
    assert Stages(tmp_path).done("data", "k1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stages.json"]  # no temp file left


def test_a_started_stage_is_not_done_until_it_finishes(tmp_path):
    stages = Stages(tmp_path)
    stages.finish("train", "old", 3.0)
    stages.start("train", "new")  # then the process dies
    again = Stages(tmp_path)
    assert not again.done("train", "old") and not again.done("train", "new")
    assert again.last_key("train") == "new" and again.seconds() == {}


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    import os

    target = tmp_path / "results.json"
    target.write_text('{"old": 1}')
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, '{"new": "\ud800"}')  # fails while the temp file is being written

    def full(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, '{"new": 2}', fsync=True)
    monkeypatch.undo()
    assert target.read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert write_atomic(tmp_path / "new" / "x.json", "{}").read_text() == "{}"


# ---------------------------------------------------------------- the train stage


TRAIN = {
    "template": "chatml",
    "max_length": 64,
    "batch_size": 4,
    "learning_rate": 3e-3,
    "lr_scheduler": "constant",
    "max_steps": 2,
    "save_interval": 1,
    "logging_interval": 1,
}


@pytest.fixture(scope="module")
def train_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [write_jsonl(tmp_path_factory.mktemp("data") / "d.jsonl", make_examples(24, "reverse"))]


def _train_stage(out: Path, model: Path, files: list[Path], messages: list[str], **train: object) -> dict:
    """Run the train stage as `instillm run` does (data and model keys fixed); the training's run.json."""
    cfg = run_config_from_dict({"output_dir": str(out), "train": {**TRAIN, **train}})
    ctx = RunContext(cfg, out, Stages(out), messages.append, _no_progress, keys={"data": "d", "model": "m"})
    stage_train(ctx, str(model), files)
    return json.loads((out / "train" / "run.json").read_text())


def test_changed_train_settings_start_over_and_same_ones_resume(tmp_path, tiny_model_dir, train_files):
    out, said = tmp_path / "out", []
    out.mkdir()
    first = _train_stage(out, tiny_model_dir, train_files, said)
    assert first["resumed_from"] is None
    # learning rate changed: the old checkpoints (at the last step) are not resumed, training starts over
    second = _train_stage(out, tiny_model_dir, train_files, said, learning_rate=1e-3)
    assert second["resumed_from"] is None and second["config"]["learning_rate"] == 1e-3
    lrs = [json.loads(line)["lr"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [1e-3, 1e-3]
    assert any("starting over" in m for m in said)
    # the same settings again, after a crash mid-training (started, never finished): resumed, not removed
    key = json.loads((out / "stages.json").read_text())["train"]["hash"]
    Stages(out).start("train", key)
    said.clear()
    third = _train_stage(out, tiny_model_dir, train_files, said, learning_rate=1e-3)
    assert third["resumed_from"] == 2 and not any("starting over" in m for m in said)


def test_starting_over_never_removes_a_dir_outside_the_run_or_in_use(tmp_path, tiny_model_dir, train_files):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (out / "train").symlink_to(elsewhere)
    Stages(out).finish("train", "an-older-key", 1.0)
    with pytest.raises(ConfigError, match="is not a directory of this run"):
        _train_stage(out, tiny_model_dir, train_files, [])
    assert (elsewhere / "keep.txt").read_text() == "mine"
    assert Stages(out).last_key("train") == "an-older-key"  # not recorded as started: tried again next time
    (out / "train").unlink()
    (out / "train").mkdir()
    (out / "train" / "metrics.jsonl").write_text("")
    lock = OutputLock(out / "train").acquire()  # a training run still writing there
    try:
        with pytest.raises(ConfigError, match="in use by another training run"):
            _train_stage(out, tiny_model_dir, train_files, [])
    finally:
        lock.release()
    assert (out / "train" / "metrics.jsonl").exists()
