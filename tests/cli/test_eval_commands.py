"""`instillm eval` as one subcommand per evaluation; the older `eval [MODEL] --suite S` spelling; the
teacher/judge backend option group shared by the data and eval commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from instillm.cli import app
from instillm.cli.eval import legacy_args

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # no wrapping inside option rows
ANSI = re.compile(r"\x1b\[[0-9;]*m")

GENERATION = {"--template", "--max-new-tokens", "--batch-size", "--device", "--limit", "--output"}
JUDGE_BACKEND = {
    "--judge-backend",
    "--judge-base-url",
    "--judge-model",
    "--judge-api-key",
    "--judge-cache",
    "--judge-concurrency",
    "--judge-timeout",
}
OWN_OPTIONS = {
    "heldout": GENERATION | {"--data"},
    "ifeval": GENERATION | {"--responses", "--inputs"},
    "zeroshot": GENERATION | {"--data", "--heldout-clusters", "--length-normalize"},
    "mt-bench": GENERATION | {"--data", "--answers", "--judge-max-tokens"} | JUDGE_BACKEND,
    "judge": {
        "--outputs",
        "--reference",
        "--output",
        "--limit",
        "--json",
        "--judge-style",
        "--judge-max-tokens",
        "--device",
        "--annotations",
    }
    | JUDGE_BACKEND,
    "winrate": {"--json", "--leaderboard"},
}


def run(*args: str):
    return runner.invoke(app, list(args), env=WIDE)


def help_text(*command: str) -> str:
    res = run(*command, "--help")
    assert res.exit_code == 0, res.output
    return ANSI.sub("", res.stdout)


def click_command(*path: str):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


# ------------------------------------------------------------------------------ subcommands


@pytest.mark.parametrize("name", list(OWN_OPTIONS))
def test_each_eval_subcommand_lists_only_its_own_options(name: str):
    text = help_text("eval", name)
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text)) - {"--help"}
    assert flags == OWN_OPTIONS[name]
    others = set().union(*OWN_OPTIONS.values()) - OWN_OPTIONS[name]
    assert not {f for f in others if re.search(rf"(?<![\w-]){f}(?![\w-])", text)}
    assert "--suite" not in text
    doc = click_command("eval", name).help
    assert doc and doc.split("\n")[0] in " ".join(text.split())  # the command's own help text


def test_ifeval_help_has_no_heldout_or_judge_options():
    text = help_text("eval", "ifeval")
    assert "--responses" in text and "--heldout-clusters" not in text and "--judge-model" not in text


def test_eval_group_lists_the_subcommands_and_the_old_spelling():
    text = " ".join(help_text("eval").split())
    for name in OWN_OPTIONS:
        assert f" {name} " in text
    assert "--suite SUITE" in text


def test_python_dash_m_runs_the_same_app():
    res = subprocess.run(
        [sys.executable, "-m", "instillm.cli", "eval", "winrate", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "--leaderboard" in res.stdout, res.stderr


# ------------------------------------------------------------------------------ the old spelling


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["m", "--suite", "ifeval", "--limit", "2"], ["ifeval", "m", "--limit", "2"]),
        (["--suite=zeroshot", "m", "--data", "d"], ["zeroshot", "m", "--data", "d"]),
        (["--suite", "mt-bench", "m"], ["mt-bench", "m"]),
        (["m", "--data", "f.jsonl"], ["heldout", "m", "--data", "f.jsonl"]),
        (["--data", "f.jsonl", "m"], ["heldout", "--data", "f.jsonl", "m"]),
        (["m", "--", "--suite"], ["heldout", "m", "--", "--suite"]),
        (["heldout", "m", "--data", "f"], ["heldout", "m", "--data", "f"]),
        (["winrate", "a.json", "--json"], ["winrate", "a.json", "--json"]),
        (["judge", "--outputs", "o.json"], ["judge", "--outputs", "o.json"]),
        (["--help"], ["--help"]),
        ([], []),
    ],
)
def test_legacy_args_maps_the_suite_option_onto_a_subcommand(args, expected):
    commands = {"heldout", "ifeval", "zeroshot", "mt-bench", "judge", "winrate"}
    assert legacy_args(args, commands) == expected


def test_an_unknown_or_missing_suite_is_a_clear_error():
    res = run("eval", "m", "--suite", "bogus")
    assert res.exit_code == 1 and "'bogus'" in res.output and "heldout, ifeval, zeroshot, mt-bench" in res.output
    res = run("eval", "m", "--suite")
    assert res.exit_code == 1 and "--suite needs a value" in res.output


def test_old_and_new_heldout_spellings_give_the_same_results(tmp_path: Path, tiny_model_dir: Path):
    assert run("data", "skills", "-o", str(tmp_path / "s"), "--n-train", "2", "--n-eval", "1").exit_code == 0
    common = ["--data", str(tmp_path / "s" / "heldout_families.jsonl"), "--max-new-tokens", "4"]
    model = str(tiny_model_dir)
    spellings = {
        "old": ["eval", model, *common],
        "old_suite": ["eval", model, "--suite", "heldout", *common],
        "new": ["eval", "heldout", model, *common],
    }
    results = {}
    for name, args in spellings.items():
        res = run(*args, "-o", str(tmp_path / f"{name}.json"))
        assert res.exit_code == 0, res.output
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["old"] == results["old_suite"] == results["new"]
    assert results["new"]["suite"] == "heldout" and results["new"]["splits"]["heldout_families"]["n"] == 5


def test_old_and_new_ifeval_spellings_give_the_same_results(tmp_path: Path, shared_data: Path):
    ifeval = shared_data / "ifeval"
    common = ["--responses", str(ifeval / "gpt4_responses.jsonl"), "--inputs", str(ifeval / "input_data.jsonl")]
    old = run("eval", "--suite", "ifeval", *common, "-o", str(tmp_path / "old"))
    new = run("eval", "ifeval", *common, "-o", str(tmp_path / "new"))
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    for name in ("ifeval_summary.json", "ifeval_strict.jsonl", "ifeval_loose.jsonl"):
        assert (tmp_path / "old" / name).read_text() == (tmp_path / "new" / name).read_text()
    assert old.stdout == new.stdout.replace(str(tmp_path / "new"), str(tmp_path / "old"))


def test_old_and_new_zeroshot_spellings_give_the_same_results(tmp_path: Path, shared_data: Path, tiny_model_dir: Path):
    common = ["--data", str(shared_data / "t0_multitask" / "glue_mrpc_equivalent.jsonl"), "--limit", "3"]
    old = run("eval", str(tiny_model_dir), "--suite", "zeroshot", *common, "-o", str(tmp_path / "old.json"))
    new = run("eval", "zeroshot", str(tiny_model_dir), *common, "-o", str(tmp_path / "new.json"))
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    assert json.loads((tmp_path / "old.json").read_text()) == json.loads((tmp_path / "new.json").read_text())


# ------------------------------------------------------------------------------ the backend option group


def _group(command, panel: str, prefix: str) -> dict:
    """flag without prefix → (help, default, env var, ...) of the options listed under `panel`."""
    return {
        p.opts[0].replace(f"--{prefix}", "--"): (p.help, p.default, p.envvar, p.required, p.multiple, p.is_flag)
        for p in command.params
        if getattr(p, "rich_help_panel", None) == panel
    }


def _panel_text(text: str, title: str) -> str:
    """The rows of one rich help panel, whitespace and box lines collapsed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"╭─ {title} "))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("╰"))
    return " ".join(" ".join(line.strip("│ ").split()) for line in lines[start + 1 : end])


def test_the_backend_option_group_is_one_definition_prefixed_for_the_judge():
    teacher = _group(click_command("data", "self-instruct"), "Teacher backend", "")
    assert set(teacher) == {"--backend", "--base-url", "--model", "--api-key", "--cache", "--concurrency", "--timeout"}
    assert _group(click_command("data", "evolve"), "Teacher backend", "") == teacher
    assert _group(click_command("data", "score"), "Judge backend (--rate)", "") == teacher
    assert _group(click_command("eval", "judge"), "Judge backend", "judge-") == teacher
    assert _group(click_command("eval", "mt-bench"), "Judge backend", "judge-") == teacher


def test_the_backend_option_group_reads_the_same_in_help():
    teacher = _panel_text(help_text("data", "self-instruct"), "Teacher backend")
    judge = _panel_text(help_text("eval", "judge"), "Judge backend")
    assert "--base-url" in teacher and "--judge-base-url" in judge
    assert judge.replace("--judge-", "--") == teacher
    assert _panel_text(help_text("eval", "mt-bench"), "Judge backend") == judge


def test_backend_errors_name_the_flags_of_their_group(tmp_path: Path):
    pair = ["--outputs", str(tmp_path / "m.json"), "--reference", str(tmp_path / "r.json")]
    res = run("eval", "judge", *pair)
    assert res.exit_code == 1 and "--judge-model" in res.output
    res = run("eval", "judge", *pair, "--judge-model", "m")
    assert res.exit_code == 1 and "--judge-base-url" in res.output
    score = ["data", "score", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--rate"]
    res = run(*score)
    assert res.exit_code == 1 and "--model NAME" in res.output and "--judge-" not in res.output
    res = run(*score, "--model", "m")
    assert res.exit_code == 1 and "--base-url" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path",
    [
        ("eval", "heldout"),
        ("eval", "ifeval"),
        ("eval", "zeroshot"),
        ("eval", "mt-bench"),
        ("eval", "judge"),
        ("data", "score"),
        ("data", "self-instruct"),
        ("data", "evolve"),
        ("train",),
        ("run",),
        ("serve",),
    ],
)
def test_commands_that_load_a_model_take_device(path: tuple):
    device = [p for p in click_command(*path).params if "--device" in p.opts]
    assert len(device) == 1 and device[0].default == "auto"


def test_backend_options_hide_the_api_key_and_raise_config_errors():
    from instillm.cli._common import BackendOptions
    from instillm.errors import ConfigError

    options = BackendOptions("openai", "http://127.0.0.1:9/v1", "m", "sk-secret", None, 8)
    assert "sk-secret" not in repr(options) and options.config().api_key == "sk-secret"
    with pytest.raises(ConfigError, match="--judge-model NAME"):
        BackendOptions.judge("openai", None, None, None, None, 8).config()
    with pytest.raises(ConfigError, match="--base-url URL"):
        BackendOptions("openai", None, "m", None, None, 8).config()


@pytest.mark.parametrize(
    ("path", "flag"),
    [
        (("data", "self-instruct"), "--timeout"),
        (("data", "evolve"), "--timeout"),
        (("data", "score"), "--timeout"),
        (("eval", "judge"), "--judge-timeout"),
        (("eval", "mt-bench"), "--judge-timeout"),
    ],
)
def test_backend_commands_take_a_request_timeout(path: tuple, flag: str):
    timeout = [p for p in click_command(*path).params if flag in p.opts]
    assert len(timeout) == 1 and timeout[0].default == 60.0


def test_backend_timeout_reaches_the_backend_config():
    from instillm.cli._common import BackendOptions
    from instillm.errors import ConfigError

    assert BackendOptions("openai", "http://127.0.0.1:9/v1", "m", None, None, 8, timeout=600).config().timeout == 600
    assert BackendOptions.judge("openai", "http://127.0.0.1:9/v1", "m", None, None, 8, timeout=5).config().timeout == 5
    with pytest.raises(ConfigError, match="timeout"):
        BackendOptions("openai", "http://127.0.0.1:9/v1", "m", None, None, 8, timeout=0).config()
