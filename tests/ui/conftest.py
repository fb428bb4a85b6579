"""Fixtures of the UI tests: a small dataset with planted bad rows, an importable file with a reject, a tiny run
(the tiny model, a few training steps, evaluated before and after) and a running `instillm ui` over them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from instillm.data.schema import Example, from_prompt_completion

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "ui"
GOOD = [("reverse", "Reverse the word {w}", lambda w: w[::-1]), ("upper", "Uppercase the word {w}", str.upper)]
WORDS = ["abc", "dog", "plum", "kite", "moss", "fern"]
LONG_PROMPT = "Summarise this: " + " ".join(f"word{i}" for i in range(120))


def good_examples() -> list[Example]:
    """12 clean rows: two tasks (categories string/case) over six words."""
    return [
        from_prompt_completion(p.format(w=w), f(w), id=f"{task}-{i}", task=task, category=task, source="fixture")
        for task, p, f in GOOD
        for i, w in enumerate(WORDS)
    ]


def planted_examples() -> list[Example]:
    """Rows the audit flags: a duplicate prompt (of reverse-0) and a prompt longer than max_length 64."""
    dup = from_prompt_completion("Reverse the word abc", "CBA", id="dup-of-reverse-0", task="reverse", source="fixture")
    long = from_prompt_completion(LONG_PROMPT, "Words.", id="too-long", task="summary", source="fixture")
    return [dup, long]


UNTRAINED = {
    "id": "untrained",
    "task": "greet",
    "messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi", "train": False}],
}


@pytest.fixture(scope="session")
def ui_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.jsonl: 12 clean rows (lines 1-12), then dup-of-reverse-0 (13), too-long (14), untrained (15)."""
    path = tmp_path_factory.mktemp("ui-data") / "data.jsonl"
    lines = [ex.to_json() for ex in good_examples() + planted_examples()] + [json.dumps(UNTRAINED)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Alpaca JSON file (not canonical): two good rows and one without an output (rejected on import)."""
    rows = [
        {"instruction": "Name a colour.", "input": "", "output": "Red."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "This row has no answer.", "input": ""},
    ]
    path = tmp_path_factory.mktemp("ui-alpaca") / "alpaca_data.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An `instillm run` folder: the tiny model trained 4 steps on 3 skills families, evaluated before and after."""
    from instillm.run import run, run_config_from_dict

    out = tmp_path_factory.mktemp("ui-run") / "run"
    config = {
        "name": "ui-tiny",
        "output_dir": str(out),
        "skills": {
            "families": ["even_odd", "sign", "first_n"],
            "heldout_families": ["first_n"],
            "n_train_per_family": 20,
            "n_eval_per_family": 2,
        },
        "model": {"path": str(tiny_model_dir)},
        "train": {"max_length": 96, "batch_size": 4, "max_steps": 4, "logging_interval": 1, "eval_split": 0.2}
        | {"eval_interval": 2},
        "eval": {"max_new_tokens": 8, "batch_size": 32},
    }
    run(run_config_from_dict(config), say=lambda m: None)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ui_server(tiny_model_dir: Path, ui_data: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """`instillm ui` in a subprocess on 127.0.0.1 over ui_data and tiny_run, the tiny model as Chat's A and B.

    Yields .url, .port, .data, .run, .model and .workdir."""
    port, workdir = free_port(), tmp_path_factory.mktemp("ui-work")
    cmd = [sys.executable, "-m", "instillm.cli", "ui", str(ui_data), str(tiny_run), "--port", str(port)]
    cmd += ["--model", str(tiny_model_dir), "--max-length", "64", "--workdir", str(workdir), "--device", "cpu"]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_COLOR": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = _wait_for_url(proc, timeout=120)
        yield SimpleNamespace(
            url=url, port=port, data=ui_data, run=tiny_run, model=tiny_model_dir, workdir=workdir, proc=proc
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_url(proc: subprocess.Popen, timeout: float) -> str:
    """The URL `instillm ui` announces on stdout; fails with its output when it exits or takes too long."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if line.startswith("instillm ui at "):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining: a full pipe would block it
            return line.split(" at ", 1)[1].split(" (", 1)[0].strip()
    pytest.fail("instillm ui did not start:\n" + "".join(seen))
