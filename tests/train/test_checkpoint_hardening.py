"""Checkpoints and output dirs under hostile conditions: torn files, torn metrics, two runs on one dir,
a non-empty foreign dir, checkpoints of older instillm versions (no manifest)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instillm.errors import ConfigError, DataError
from instillm.train import checkpoint as ckpt
from instillm.train.config import config_from_dict
from instillm.train.loop import _truncate_metrics, main, train
from tests.train.helpers import base_config, make_examples, read_metrics, write_config, write_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "d.jsonl", make_examples(40, "reverse"))


def _config(model_dir: Path, data: Path, out: Path, **overrides):
    return config_from_dict(base_config(model_dir, data, out, **overrides))


# ---------------------------------------------------------------- saving: fsync and a manifest written last


@pytest.fixture()
def parts(tiny_model):
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    tiny_model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return tiny_model, opt, sched


def test_manifest_is_written_last_with_sizes_and_hashes_and_everything_is_fsynced(parts, tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    path = ckpt.save_checkpoint(tmp_path, 2, *parts, {"step": 2})
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    files = sorted(p.name for p in path.iterdir() if p.name != ckpt.MANIFEST)
    assert sorted(manifest["files"]) == files
    import hashlib

    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (path / name).stat().st_size
        assert entry["sha256"] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    names = [Path(p).name for p in synced]
    assert set(files) <= set(names)
    assert names.index(ckpt.MANIFEST) > max(names.index(f) for f in files)  # the manifest last
    assert names.index(".tmp-step-2") > names.index(ckpt.MANIFEST)  # then the directory
    assert names[-2:] == ["checkpoints", tmp_path.name]  # after the rename: its parent (and the output dir)
    assert ckpt.verify_checkpoint(path) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no-manifest-entry"])
def test_a_damaged_checkpoint_does_not_verify(parts, tmp_path, damage):
    path = ckpt.save_checkpoint(tmp_path, 1, *parts, {"step": 1})
    opt = path / "optimizer.pt"
    if damage == "truncate":
        opt.write_bytes(opt.read_bytes()[:100])
    elif damage == "flip":
        raw = bytearray(opt.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        opt.write_bytes(bytes(raw))
    elif damage == "delete":
        opt.unlink()
    else:
        manifest = json.loads((path / ckpt.MANIFEST).read_text())
        del manifest["files"]["optimizer.pt"]
        (path / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert "optimizer.pt" in ckpt.verify_checkpoint(path)


def test_newest_complete_falls_back_and_moves_the_torn_one_aside(parts, tmp_path, caplog):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, *parts, {"step": step})
    for step in (2, 3):
        opt = ckpt.checkpoint_dir(tmp_path, step) / "optimizer.pt"
        opt.write_bytes(opt.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING):
        assert ckpt.newest_complete(tmp_path) == ckpt.checkpoint_dir(tmp_path, 1)
    assert "step-3 is incomplete" in caplog.text and "optimizer.pt" in caplog.text
    assert "resuming from step-1" in caplog.text
    assert sorted(p.name for p in (tmp_path / ckpt.CHECKPOINTS).iterdir()) == [
        ".incomplete-step-2",
        ".incomplete-step-3",
        "step-1",
    ]


def test_checkpoints_without_a_manifest_count_when_every_file_loads(parts, tmp_path, caplog):
    """Written by an older instillm (no manifest): used, with a warning, when every file loads."""
    for step in (1, 2):
        (ckpt.save_checkpoint(tmp_path, step, *parts, {"step": step}) / ckpt.MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        assert ckpt.newest_complete(tmp_path) == ckpt.checkpoint_dir(tmp_path, 2)
    assert "no manifest" in caplog.text
    opt = ckpt.checkpoint_dir(tmp_path, 2) / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    assert ckpt.newest_complete(tmp_path) == ckpt.checkpoint_dir(tmp_path, 1)


def test_no_complete_checkpoint_starts_over_and_says_so(parts, tmp_path, caplog):
    path = ckpt.save_checkpoint(tmp_path, 1, *parts, {"step": 1})
    (path / "trainable.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert ckpt.newest_complete(tmp_path) is None
    assert "no complete checkpoint" in caplog.text


# ---------------------------------------------------------------- metrics


def test_a_torn_metrics_line_is_dropped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n[1]\n{"step": 3, "lo')
    with caplog.at_level(logging.WARNING):
        _truncate_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    assert "2 unreadable line(s)" in caplog.text


# ---------------------------------------------------------------- end to end: resume falls back


def test_resume_skips_a_truncated_newest_checkpoint_and_a_torn_metrics_line(tiny_model_dir, data, tmp_path, caplog):
    cfg = _config(tiny_model_dir, data, tmp_path / "out", max_steps=6, save_interval=2)
    first = train(cfg, progress=False)
    weights = load_file(str(first.final_dir / "model.safetensors"))
    shutil.rmtree(first.final_dir)
    opt = tmp_path / "out" / "checkpoints" / "step-6" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])  # a save cut short by a crash
    with (tmp_path / "out" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "lo')  # and a torn last metrics line
    with caplog.at_level(logging.WARNING):
        again = train(cfg, progress=False)
    assert again.resumed_from == 4
    assert "step-6 is incomplete" in caplog.text and "resuming from step-4" in caplog.text
    assert [m["step"] for m in read_metrics(tmp_path / "out")] == [1, 2, 3, 4, 5, 6]
    resumed = load_file(str(again.final_dir / "model.safetensors"))
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    assert ckpt.verify_checkpoint(tmp_path / "out" / "checkpoints" / "step-6") is None  # written anew


# ---------------------------------------------------------------- the output dir: one run at a time


_HOLD = """
import sys
from instillm.train.checkpoint import OutputLock
lock = OutputLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_run_on_the_same_dir_fails_at_once_naming_the_holder(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by another training run \(pid {holder.pid}"):
            train(_config(tiny_model_dir, data, out, max_steps=1), progress=False)
        assert not (out / "run.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    result = train(_config(tiny_model_dir, data, out, max_steps=1), progress=False)  # SIGKILL freed it
    assert result.steps == 1
    assert (out / ckpt.LOCK_FILE).read_text().strip() == str(os.getpid())


def test_the_lock_is_released_when_training_fails(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    train(_config(tiny_model_dir, data, out, max_steps=1), progress=False)
    with pytest.raises(DataError, match="does not exist"):  # raised after the lock was taken
        train(_config(tiny_model_dir, tmp_path / "missing.jsonl", out, max_steps=1), progress=False, overwrite=True)
    ckpt.OutputLock(out).acquire().release()  # nothing left holding it


# ---------------------------------------------------------------- the output dir: not someone else's files


def test_a_non_empty_dir_without_checkpoints_needs_overwrite(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = _config(tiny_model_dir, data, out, max_steps=1)
    with pytest.raises(ConfigError, match=r"not empty \(notes.txt\).*--overwrite"):
        train(cfg, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # untouched
    yaml_path = write_config(tmp_path / "c.yaml", base_config(tiny_model_dir, data, out, max_steps=1))
    assert main([str(yaml_path), "--overwrite"]) == 0  # python -m instillm.train.loop CONFIG --overwrite
    assert (out / "final").is_dir() and (out / "notes.txt").read_text() == "mine"


def test_rerunning_the_same_run_needs_no_overwrite_but_another_run_does(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    train(_config(tiny_model_dir, data, out, max_steps=1), progress=False)
    assert train(_config(tiny_model_dir, data, out, max_steps=1), progress=False).steps == 1  # same run again
    with pytest.raises(ConfigError, match="--overwrite"):
        train(_config(tiny_model_dir, data, out, max_steps=2), progress=False)
    assert train(_config(tiny_model_dir, data, out, max_steps=2), progress=False, overwrite=True).steps == 2


def test_resuming_a_run_dir_with_checkpoints_needs_no_overwrite(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    cfg = _config(tiny_model_dir, data, out, max_steps=2, save_interval=1)
    train(cfg, progress=False)
    (out / "run.json").unlink()  # even without run.json: the checkpoints say it is a run dir
    assert train(cfg, progress=False).resumed_from == 2


def test_two_processes_fall_back_together_and_only_the_main_one_locks(tiny_model_dir, data, tmp_path):
    cfg = write_config(
        tmp_path / "two.yaml", base_config(tiny_model_dir, data, tmp_path / "out", max_steps=4, save_interval=2)
    )
    torchrun = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "instillm.train.loop",
        str(cfg),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    opt = tmp_path / "out" / "checkpoints" / "step-4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-1])
    again = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["resumed_from"] == 2
    assert again.stderr.count("step-4 is incomplete") == 1  # verified and said by the main process only
    assert ckpt.verify_checkpoint(tmp_path / "out" / "checkpoints" / "step-4") is None
