"""A run killed with SIGKILL right after a checkpoint resumes to bit-identical weights and loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instillm.train.loop import KILL_HOOK
from tests.train.helpers import base_config, make_examples, read_metrics, write_config, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _start(config: Path, kill_after: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(KILL_HOOK, None)
    if kill_after is not None:
        env[KILL_HOOK] = str(kill_after)
    return subprocess.Popen(
        [sys.executable, "-m", "instillm.train.loop", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.parametrize("packing", [False, True])
def test_sigkill_after_checkpoint_then_resume_is_bit_identical(tiny_model_dir, tmp_path, packing):
    data = write_jsonl(tmp_path / "d.jsonl", make_examples(40, "reverse") + make_examples(40, "double"))
    # LoRA with dropout: the resumed run must also restore the RNG to match; 2 epochs: crosses an epoch.
    settings = dict(
        max_steps=10,
        batch_size=4,
        gradient_accumulation_steps=2,
        save_interval=3,
        lr_scheduler="cosine",
        warmup_steps=2,
        lora={"r": 4, "alpha": 8, "dropout": 0.1},
        learning_rate=1e-2,
        eval_split=0.2,
        eval_interval=5,
        packing=packing,
    )
    straight = write_config(tmp_path / "straight.yaml", base_config(tiny_model_dir, data, tmp_path / "a", **settings))
    crashy = write_config(tmp_path / "crashy.yaml", base_config(tiny_model_dir, data, tmp_path / "b", **settings))

    runs = [_start(straight), _start(crashy, kill_after=6)]
    (rc_a, out_a, err_a), (rc_b, _, err_b) = (_finish(p) for p in runs)
    assert rc_a == 0, err_a[-3000:]
    assert rc_b == -signal.SIGKILL, err_b[-3000:]
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-3", "step-6"]
    assert not (tmp_path / "b" / "final").exists()

    rc_c, out_c, err_c = _finish(_start(crashy))  # the same command again: resumes from step-6
    assert rc_c == 0, err_c[-3000:]
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resumed_from"] == 6

    a = load_file(str(tmp_path / "a" / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    final_a, final_b = json.loads(out_a.splitlines()[-1]), json.loads(out_c.splitlines()[-1])
    assert final_a["final_loss"] == final_b["final_loss"]
    assert final_a["eval_loss"] == final_b["eval_loss"]
    # metrics.jsonl of the resumed run: every step once, the same numbers.
    ma, mb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [m["step"] for m in mb] == [m["step"] for m in ma]
    assert [m.get("loss") for m in mb] == [m.get("loss") for m in ma]
