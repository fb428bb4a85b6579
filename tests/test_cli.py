"""The CLI wires library calls: exit codes, outputs and messages as a user sees them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from instillm.cli import app

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def run(*args: str):
    return runner.invoke(app, list(args))


def test_model_init_then_inspect_json(tmp_path: Path):
    model = tmp_path / "m"
    res = run("model", "init", "--preset", "tiny", "-o", str(model))
    assert res.exit_code == 0, res.output
    assert (model / "model.safetensors").exists()
    data = tmp_path / "d.jsonl"
    res = run("data", "import", str(FIXTURES / "alpaca.jsonl"), "-o", str(data))
    assert res.exit_code == 0, res.output
    res = run("data", "inspect", str(data), "--model", str(model), "--json", "--max-length", "256")
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert set(stats) == {
        "n_examples",
        "n_tokens",
        "trained_token_fraction",
        "truncated",
        "dropped",
        "length_p50",
        "length_p95",
        "length_max",
        "packing_efficiency",
    }
    n_rows = sum(1 for _ in open(data))
    assert stats["n_examples"] == n_rows and 0 < stats["trained_token_fraction"] < 1
    res = run("data", "inspect", str(data), "--model", str(model), "--show", "1")
    assert res.exit_code == 0 and "trained_token_fraction" in res.stdout


def test_import_reports_rejects_and_exit_codes(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "input": "", "output": "b"}\n{not json\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    res = run("data", "import", str(bad), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "rejected 1 row" in res.stdout and "malformed_json" in res.stdout
    rejects = [json.loads(x) for x in open(tmp_path / "o.rejects.jsonl")]
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "malformed_json")]
    assert run("data", "import", str(bad), "-o", str(out), "--strict").exit_code != 0
    res = run("data", "import", str(tmp_path / "missing.jsonl"), "-o", str(out))
    assert res.exit_code != 0 and "missing.jsonl" in res.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run("data", "import", str(empty), "-o", str(out)).exit_code != 0


def test_inspect_missing_model_is_a_clear_error(tmp_path: Path):
    data = tmp_path / "d.jsonl"
    assert run("data", "import", str(FIXTURES / "alpaca.jsonl"), "-o", str(data)).exit_code == 0
    res = run("data", "inspect", str(data), "--model", str(tmp_path / "nope"))
    assert res.exit_code == 1 and "model init" in res.output


def test_train_with_overrides_then_export(tmp_path: Path, tiny_model_dir: Path):
    from tests.train.helpers import base_config, make_examples, write_config, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", make_examples(32))
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_model_dir, data, tmp_path / "run"))
    res = run(
        "train", str(cfg), "--set", "max_steps=2", "--set", "lora={r: 4, alpha: 8, dropout: 0.0}", "--no-progress"
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["max_steps"] == 2
    res = run("export", str(tmp_path / "run"), "-o", str(tmp_path / "merged"))
    assert res.exit_code == 0, res.output
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged") is not None
    res = run("train", str(cfg), "--set", "bogus_key=1", "--set", "lora.r=0")
    assert res.exit_code == 1 and "bogus_key" in res.output


def test_data_skills_writes_splits(tmp_path: Path):
    res = run("data", "skills", "-o", str(tmp_path), "--n-train", "3", "--n-eval", "2")
    assert res.exit_code == 0, res.output
    for split in ("train", "heldout_instances", "heldout_phrasings", "heldout_families"):
        assert (tmp_path / f"{split}.jsonl").stat().st_size > 0
    assert run("data", "skills", "--list").exit_code == 0
    assert run("data", "skills").exit_code == 1
    # even_odd has 999 inputs: 2,000 per family fails unless capped to what each family has
    res = run("data", "skills", "-o", str(tmp_path / "big"), "--n-train", "2000", "--n-eval", "2")
    assert res.exit_code == 1 and "even_odd" in res.output
    res = run(
        "data", "skills", "-o", str(tmp_path / "big"), "--n-train", "2000", "--n-eval", "2", "--cap-to-input-space"
    )
    assert res.exit_code == 0, res.output
    tasks = [json.loads(x)["task"] for x in open(tmp_path / "big" / "train.jsonl")]
    assert tasks.count("even_odd") == 999 - 4 and tasks.count("word_add") == 2000


def test_eval_ifeval_scores_responses_and_a_model(tmp_path: Path, shared_data: Path, tiny_model_dir: Path):
    inputs = shared_data / "ifeval" / "input_data.jsonl"
    res = run(
        "eval",
        "--suite",
        "ifeval",
        "--responses",
        str(shared_data / "ifeval" / "gpt4_responses.jsonl"),
        "--inputs",
        str(inputs),
        "-o",
        str(tmp_path / "gpt4"),
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "gpt4" / "ifeval_summary.json").read_text())
    assert 0.7 < summary["prompt_level_strict"] < summary["prompt_level_loose"] < 0.9
    res = run(
        "eval",
        str(tiny_model_dir),
        "--suite",
        "ifeval",
        "--inputs",
        str(inputs),
        "--limit",
        "4",
        "--max-new-tokens",
        "8",
        "-o",
        str(tmp_path / "tiny"),
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in open(tmp_path / "tiny" / "ifeval_strict.jsonl")]
    assert len(rows) == 4
    # the same replies as `instillm run`'s ifeval suite (stripped), so both score a model alike
    from instillm.data.render import Renderer
    from instillm.evaluate.suites import LocalLM, chat_replies
    from instillm.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    lm = LocalLM(load_model(tiny_model_dir), tok, Renderer(tok), "tiny")
    prompts = [json.loads(x)["prompt"] for x in open(inputs)][:4]
    saved = [json.loads(x)["response"] for x in open(tmp_path / "tiny" / "responses.jsonl")]
    assert saved == chat_replies(lm, prompts, 8, 32) and all(r == r.strip() for r in saved)
    assert run("eval", "--suite", "ifeval", "--inputs", str(inputs), "-o", str(tmp_path / "x")).exit_code == 1


def test_eval_heldout_writes_results(tmp_path: Path, tiny_model_dir: Path):
    res = run("data", "skills", "-o", str(tmp_path / "s"), "--n-train", "2", "--n-eval", "1")
    assert res.exit_code == 0
    res = run(
        "eval",
        str(tiny_model_dir),
        "--data",
        str(tmp_path / "s" / "heldout_families.jsonl"),
        "--max-new-tokens",
        "4",
        "-o",
        str(tmp_path / "r.json"),
    )
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "r.json").read_text())
    split = saved["splits"]["heldout_families"]
    assert split["n"] == 5 and set(split["per_task"]) and "samples" in split
    assert run("eval", str(tiny_model_dir), "-o", str(tmp_path / "r.json")).exit_code == 1  # no --data
    (tmp_path / "empty.jsonl").write_text("")  # not a 0-of-0 score: an error naming the file
    res = run("eval", str(tiny_model_dir), "--data", str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "e.json"))
    assert res.exit_code == 1 and "empty.jsonl" in res.output and not (tmp_path / "e.json").exists()


def test_curation_commands(tmp_path: Path):
    rows = [
        "Name a prime number above ten.",
        "Name a prime number above ten.",
        "Name a prime number above ten!",
        "Draw a picture of a cat for me.",
        "Explain why the sky looks blue.",
    ]
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"answer {i}"}]})
            + "\n"
            for i, q in enumerate(rows)
        )
    )
    res = run("data", "dedup", str(data), "--rouge-l", "0.7", "--on", "instruction", "-o", str(tmp_path / "dd.jsonl"))
    assert res.exit_code == 0, res.output
    assert "kept 3 of 5" in res.stdout and "rouge_l_duplicate: 2" in res.stdout
    res = run("data", "filter", str(data), "-o", str(tmp_path / "f.jsonl"))
    assert res.exit_code == 0 and "blacklist" in res.stdout, res.output
    ev = tmp_path / "eval.jsonl"
    ev.write_text(json.dumps({"prompt": "Explain why the sky looks blue."}) + "\n")
    res = run("data", "decontaminate", str(data), "--eval", str(ev), "--n", "4", "-o", str(tmp_path / "c.jsonl"))
    assert res.exit_code == 0 and "kept 4 of 5" in res.stdout and "eval.jsonl" in res.stdout, res.output
    assert run("data", "dedup", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.jsonl")).exit_code == 1


def test_eval_winrate_json(shared_data: Path):
    path = shared_data / "alpaca_eval" / "alpaca-7b_annotations_weighted_gpt4_turbo.json"
    res = run("eval", "winrate", str(path), "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["n"] == 805 and abs(got["win_rate"] - 2.591450540223603) < 1e-9 and "lc_win_rate" in got
    assert run("eval", "winrate").exit_code == 1


def test_teacher_commands_check_their_input_before_creating_the_run_directory(tmp_path: Path):
    teacher = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    out = tmp_path / "evolved.jsonl"
    res = run("data", "evolve", str(tmp_path / "missing.jsonl"), "-o", str(out), *teacher)
    assert res.exit_code == 1 and "missing.jsonl" in res.output
    out2 = tmp_path / "si.jsonl"
    res = run("data", "self-instruct", "--seeds", str(tmp_path / "no_seeds.jsonl"), "-o", str(out2), *teacher)
    assert res.exit_code == 1 and "no_seeds.jsonl" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT.run/, no cache.sqlite


def test_train_into_a_non_empty_dir_needs_overwrite(tmp_path: Path, tiny_model_dir: Path):
    from tests.train.helpers import base_config, make_examples, write_config, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", make_examples(16))
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_model_dir, data, tmp_path / "run", max_steps=1))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    res = run("train", str(cfg), "--no-progress", "--device", "cpu")
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]
    res = run("train", str(cfg), "--no-progress", "--device", "cpu", "--overwrite")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine" and (tmp_path / "run" / "final").is_dir()
