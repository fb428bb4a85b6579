"""Resumable runs: the journal's commit protocol, and SIGKILL-then-rerun of both teacher pipelines
(the CLI in a subprocess against `instillm serve`) ending exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from instillm.data.schema import Example, Message
from instillm.errors import ConfigError
from instillm.llm.backend import BackendConfig, make_backend
from instillm.synth.evol import EvolConfig, run_evol
from instillm.synth.pipeline import (
    ITEMS,
    KILL_HOOK,
    KILL_POINT_HOOK,
    STATE,
    Journal,
    config_from_mapping,
    request_seed,
    step_rng,
    work_dir_for,
)
from instillm.synth.self_instruct import SelfInstructConfig, run_self_instruct
from tests.synth.test_self_instruct import SHORT

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the journal


def test_commit_then_reopen_restores_records_and_state(tmp_path):
    j = Journal(tmp_path / "run", {"a": 1})
    assert not j.resumed and j.records == [] and j.state == {}
    j.commit([{"stage": "x", "i": 0}, {"stage": "y", "i": 1}], step=1)
    j.commit([{"stage": "x", "i": 2}], step=2, done=False)
    again = Journal(tmp_path / "run", {"a": 1})
    assert again.resumed and again.records == j.records and again.state == {"step": 2, "done": False}
    assert [r["i"] for r in again.of_stage("x")] == [0, 2]


def test_uncommitted_and_torn_lines_are_cut_off_on_resume(tmp_path):
    j = Journal(tmp_path / "run", {"a": 1})
    j.commit([{"i": 0}], step=1)
    with open(tmp_path / "run" / ITEMS, "ab") as f:  # a step appended but never committed, then a torn line
        f.write(b'{"i": 1}\n{"i": 2, "tr')
    again = Journal(tmp_path / "run", {"a": 1})
    assert again.records == [{"i": 0}] and again.state == {"step": 1}
    again.commit([{"i": 1}], step=2)
    lines = (tmp_path / "run" / ITEMS).read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"i": 0}, {"i": 1}]


def test_other_settings_refuse_to_resume_naming_what_differs(tmp_path):
    Journal(tmp_path / "run", {"config": {"n": 1}, "model": "m"}).commit([{"i": 0}])
    with pytest.raises(ConfigError, match=r"run holds a run started with other settings \(differs in: config\)"):
        Journal(tmp_path / "run", {"config": {"n": 2}, "model": "m"})


def test_state_file_is_replaced_atomically(tmp_path):
    j = Journal(tmp_path / "run", {})
    for k in range(5):
        j.commit([{"k": k}], k=k)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [ITEMS, STATE]  # no temp files left
    body = json.loads((tmp_path / "run" / STATE).read_text())
    assert body["committed_bytes"] == (tmp_path / "run" / ITEMS).stat().st_size


def test_step_rng_and_request_seeds_are_deterministic():
    assert step_rng(1, "a", 2).random() == step_rng(1, "a", 2).random()
    assert step_rng(1, "a", 2).random() != step_rng(1, "a", 3).random()
    assert request_seed(5, "x", 1) == request_seed(5, "x", 1) != request_seed(5, "x", 2)
    assert 0 <= request_seed(5, "x", 1) < 2**31


def test_work_dir_beside_the_output(tmp_path):
    assert work_dir_for(tmp_path / "out.jsonl") == tmp_path / "out.run"


def test_config_mapping_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        config_from_mapping(EvolConfig, {"rounds": "three", "bogus": 1}, "evol")
    assert "rounds: expected int" in str(e.value) and "bogus: unknown key" in str(e.value)


_JOURNAL_SCRIPT = textwrap.dedent("""
    import sys
    from instillm.synth.pipeline import Journal
    j = Journal(sys.argv[1], {"v": 1})
    for step in range(j.state.get("step", 0), 6):
        j.commit([{"step": step, "k": k} for k in range(3)], step=step + 1)
""")


@pytest.mark.parametrize("point", ["commit", "append"])
def test_sigkill_at_either_point_of_a_step_loses_and_duplicates_nothing(tmp_path, point):
    env = {**os.environ, "PYTHONPATH": str(REPO), KILL_HOOK: "7", KILL_POINT_HOOK: point}
    cmd = [sys.executable, "-c", _JOURNAL_SCRIPT, str(tmp_path / "run")]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    n_lines = len((tmp_path / "run" / ITEMS).read_text().splitlines())
    assert n_lines == 9  # the third step's records were appended before the kill, in both cases
    env = {k: v for k, v in env.items() if k not in (KILL_HOOK, KILL_POINT_HOOK)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = Journal(tmp_path / "run", {"v": 1}).records
    assert [(r["step"], r["k"]) for r in records] == [(s, k) for s in range(6) for k in range(3)]


# ---------------------------------------------------------------- both pipelines, killed and rerun


def _cli(args: list[str], kill_after: int | None = None, point: str = "commit") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(KILL_HOOK, None)
    env.pop(KILL_POINT_HOOK, None)
    if kill_after is not None:
        env[KILL_HOOK], env[KILL_POINT_HOOK] = str(kill_after), point
    return subprocess.run(
        [sys.executable, "-m", "instillm.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _outputs(out: Path) -> tuple[str, str, dict]:
    return (
        out.read_text(),
        out.with_name(out.stem + ".rejects.jsonl").read_text(),
        json.loads(out.with_name(out.stem + ".stats.json").read_text()),
    )


def _requests(server) -> int:
    return server.app.state.stats.requests


def test_self_instruct_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_server, tmp_path):
    settings = dict(
        num_instructions=5,
        request_batch_size=2,
        max_tokens=32,
        on_truncated="keep",
        instance_max_tokens=24,
        clf_instance_max_tokens=24,
        max_stalled_batches=4,
        **SHORT,
    )
    before = _requests(tiny_server)
    straight = make_backend(
        BackendConfig(
            kind="openai", model=tiny_server.model, base_url=tiny_server.base_url, cache=str(tmp_path / "a.sqlite")
        )
    )
    ref = run_self_instruct(straight, tmp_path / "a" / "si.jsonl", config=SelfInstructConfig(**settings))
    straight.close()
    sent_straight = _requests(tiny_server) - before
    assert ref.stats["bootstrap"]["kept"] == 5

    cfg = tmp_path / "si.yaml"
    cfg.write_text(yaml.safe_dump(settings))
    out = tmp_path / "b" / "si.jsonl"
    args = [
        "data",
        "self-instruct",
        "-o",
        str(out),
        "--base-url",
        tiny_server.base_url,
        "--model",
        tiny_server.model,
        "--config",
        str(cfg),
    ]
    before = _requests(tiny_server)
    killed = _cli(args, kill_after=6, point="append")  # torn step: appended, state not yet written
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()
    done = _cli(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed" in done.stdout
    assert _outputs(out) == _outputs(ref.output)
    assert _requests(tiny_server) - before == sent_straight  # nothing answered was sent again
    records = Journal(work_dir_for(out), json.loads((work_dir_for(out) / STATE).read_text())["fingerprint"]).records
    assert len(records) == len(
        Journal(
            work_dir_for(ref.output), json.loads((work_dir_for(ref.output) / STATE).read_text())["fingerprint"]
        ).records
    )


def test_evolve_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_server, tmp_path):
    data = tmp_path / "in.jsonl"
    qs = [
        "Name a fruit.",
        "Give two tips for sleeping well.",
        "Translate cat into French.",
        "What is 2 + 3?",
        "Describe a rainy day.",
        "List three rivers.",
    ]
    data.write_text(
        "".join(
            Example(messages=(Message("user", q), Message("assistant", "An answer.")), id=f"q{i}").to_json() + "\n"
            for i, q in enumerate(qs)
        )
    )
    settings = dict(
        rounds=2,
        max_tokens=20,
        response_max_tokens=20,
        judge_max_tokens=4,
        on_unclear_judgement="keep",
        request_batch_size=2,
    )
    before = _requests(tiny_server)
    straight = make_backend(
        BackendConfig(
            kind="openai", model=tiny_server.model, base_url=tiny_server.base_url, cache=str(tmp_path / "a.sqlite")
        )
    )
    ref = run_evol(straight, data, tmp_path / "a" / "evol.jsonl", EvolConfig(**settings))
    straight.close()
    sent_straight = _requests(tiny_server) - before

    out = tmp_path / "b" / "evol.jsonl"
    args = [
        "data",
        "evolve",
        str(data),
        "-o",
        str(out),
        "--base-url",
        tiny_server.base_url,
        "--model",
        tiny_server.model,
        *[f"--set={k}={json.dumps(v)}" for k, v in settings.items() if k != "rounds"],
        "--rounds",
        "2",
    ]
    before = _requests(tiny_server)
    killed = _cli(args, kill_after=8)  # after the first batch of round 2 is committed
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = _cli(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _outputs(out) == _outputs(ref.output)
    assert _requests(tiny_server) - before == sent_straight
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == ref.stats["examples"] > 0
