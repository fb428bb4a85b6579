"""The Runs tab's functions: a run's files, curves (live), before/after tables, failures and their export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from instillm.data.importer import read_examples
from instillm.errors import DataError
from instillm.ui import runs_tab
from instillm.ui.runs_tab import ANY


def sample(id: str, task: str, correct: float, split: str = "heldout_instances") -> dict:
    return {
        "id": id,
        "task": task,
        "category": "(none)",
        "prompt": f"prompt {id}",
        "reference": f"ref {id}",
        "prediction": f"got {id}",
        "exact_match": correct,
        "rouge_l": 0.5,
        "correct": correct,
    }


RESULTS = {
    "before": {"heldout_instances": 0.0, "heldout_phrasings": 0.1},
    "after": {"heldout_instances": 0.5, "heldout_phrasings": 0.4},
    "baseline": {"heldout_instances": 0.05},
    "details": {
        "after": {
            "heldout_instances": {
                "per_task": {"easy": {"n": 2, "correct": 1.0}, "hard": {"n": 2, "correct": 0.0}},
                "per_category": {"(none)": {"n": 4, "exact_match": 0.5}},
                "samples": {
                    "easy": [sample("e1", "easy", 1.0), sample("e2", "easy", 1.0)],
                    "hard": [sample("h1", "hard", 0.0), sample("h2", "hard", 0.0)],
                },
            },
            "heldout_phrasings": {
                "per_task": {"mid": {"n": 2, "correct": 0.5}},
                "samples": {"mid": [sample("m1", "mid", 0.0), sample("m2", "mid", 1.0)]},
            },
        },
        "before": {"heldout_instances": {"per_category": {"(none)": {"n": 4, "exact_match": 0.0}}}},
    },
    "suites": {"ifeval": {"before": {"prompt_level_strict": 0.1}, "after": {"prompt_level_strict": 0.25}}},
}


def test_finds_the_files_of_a_run_and_of_a_training_folder(tiny_run: Path, tmp_path):
    files = runs_tab.find_run(tiny_run)
    assert files.config == tiny_run / "config.yaml" and files.results == tiny_run / "results.json"
    assert files.metrics == tiny_run / "train" / "metrics.jsonl" and files.run_json == tiny_run / "train" / "run.json"
    train_only = runs_tab.find_run(tiny_run / "train")
    assert train_only.metrics == tiny_run / "train" / "metrics.jsonl" and train_only.results is None
    assert yaml.safe_load(runs_tab.config_text(train_only))["max_steps"] == 4  # the training config of run.json
    assert yaml.safe_load(runs_tab.config_text(files))["name"] == "ui-tiny"
    assert yaml.safe_load(runs_tab.plan_text(files))["plan"]["total_steps"] == 4
    assert not runs_tab.is_run_dir(tmp_path) and not runs_tab.is_run_dir(tmp_path / "absent")
    with pytest.raises(DataError, match="holds no run"):
        runs_tab.find_run(tmp_path)


def test_curves_come_from_metrics_jsonl(tiny_run: Path):
    files = runs_tab.find_run(tiny_run)
    metrics = runs_tab.read_metrics(files)
    loss = runs_tab.curve_points(metrics, runs_tab.CURVES["loss"])
    assert [p["step"] for p in loss if p["metric"] == "loss"] == [1, 2, 3, 4]
    assert [p["step"] for p in loss if p["metric"] == "eval_loss"] == [2, 4]
    assert len(runs_tab.curve_points(metrics, runs_tab.CURVES["tokens_per_s"])) == 4
    text = runs_tab.progress_text(metrics, files)
    assert text.startswith("step 4 of 4 · loss ") and "eval_loss" in text and "tokens/s" in text


def test_a_growing_metrics_file_is_seen_and_a_torn_line_skipped(tiny_run: Path, tmp_path):
    shutil.copytree(tiny_run / "train", tmp_path / "train", ignore=shutil.ignore_patterns("final", "tb"))
    files = runs_tab.find_run(tmp_path / "train")
    stamp = runs_tab.metrics_stamp(files)
    with open(files.metrics, "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1.5, "lr": 1e-4}) + "\n" + '{"step": 6, "lo')
    assert runs_tab.metrics_stamp(files) != stamp
    metrics = runs_tab.read_metrics(files)
    assert metrics[-1]["step"] == 5 and runs_tab.progress_text(metrics, files).startswith("step 5 of 4 · loss 1.5000")
    assert runs_tab.progress_text([], files) == "no training step logged yet"
    files.run_json.write_text('{"plan": {"total_st')  # caught while it is rewritten
    assert runs_tab.plan_text(files).startswith("# no run.json") and runs_tab.load_results(files) == {}


def test_before_after_tables():
    assert runs_tab.split_rows(RESULTS) == [
        ["heldout_instances", 0.0, 0.5, 0.5, 0.05],
        ["heldout_phrasings", 0.1, 0.4, 0.3, ""],
    ]
    assert runs_tab.group_rows(RESULTS, "per_category") == [["heldout_instances", "(none)", 4, 0.0, 0.5, 0.5]]
    tasks = runs_tab.group_rows(RESULTS, "per_task", "correct")
    assert ["heldout_instances", "hard", 2, "", 0.0, ""] in tasks and len(tasks) == 3
    assert runs_tab.suite_rows(RESULTS) == [["ifeval", "prompt-level strict accuracy", 0.1, 0.25]]
    assert runs_tab.split_rows({}) == [] and runs_tab.suite_rows({}) == []


def test_the_tiny_run_fills_every_table(tiny_run: Path):
    results = runs_tab.load_results(runs_tab.find_run(tiny_run))
    assert {r[0] for r in runs_tab.split_rows(results)} == {
        "heldout_instances",
        "heldout_phrasings",
        "heldout_families",
    }
    assert runs_tab.group_rows(results, "per_task") and runs_tab.group_rows(results, "per_category")
    found = runs_tab.failures(results)
    assert found and all(f["correct"] < 1 for f in found)  # four steps teach the tiny model nothing


def test_a_runs_eval_splits_for_the_data_card(tiny_run: Path, tmp_path):
    sets = runs_tab.eval_sets(runs_tab.find_run(tiny_run))
    assert list(sets) == ["heldout_instances", "heldout_phrasings", "heldout_families"]
    assert [len(v) for v in sets.values()] == [4, 4, 2]  # 2 per family: even_odd and sign, first_n held out
    assert runs_tab.eval_sets(runs_tab.find_run(tiny_run / "train")) == {}  # `instillm train`: no eval splits
    card = runs_tab.load_results(runs_tab.find_run(tiny_run))["data_card"]  # `instillm run` measured the same
    assert [name for name, _ in card["eval_overlap"]["eval_sets"]] == list(sets)
    assert card["eval_overlap"]["n_rows"] == 0 and card["near_duplicates"] is not None


def test_a_user_data_runs_eval_files_cut_as_the_run_cuts_them(tiny_run: Path, tmp_path):
    held = tiny_run / "data" / "heldout_instances.jsonl"
    config = {
        "name": "mine",
        "data": {"train": ["t.jsonl"], "eval": [str(held)]},
        "eval": {"max_examples_per_split": 3},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    sets = runs_tab.eval_sets(runs_tab.find_run(tmp_path))
    assert list(sets) == ["heldout_instances"] and len(sets["heldout_instances"]) == 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "data": {"eval": ["gone.jsonl"]}}))
    with pytest.raises(DataError, match="gone.jsonl"):
        runs_tab.eval_sets(runs_tab.find_run(tmp_path))


def test_failures_worst_tasks_first_filtered_and_explained():
    found = runs_tab.failures(RESULTS)
    assert [f["id"] for f in found] == ["h1", "h2", "m1"]  # hard (0.0), then mid (0.5); easy has none
    assert runs_tab.failure_tasks(found) == [ANY, "hard", "mid"]
    assert runs_tab.failure_splits(found) == [ANY, "heldout_instances", "heldout_phrasings"]
    assert [f["id"] for f in runs_tab.select_failures(found, task="mid")] == ["m1"]
    assert runs_tab.select_failures(found, split="heldout_phrasings", task="hard") == []
    row = runs_tab.failure_rows(found[:1])[0]
    assert row == ["heldout_instances", "hard", 0.0, "h1", "prompt h1", "ref h1", "got h1", row[-1]]
    assert row[-1] == "correct 0 · exact match 0 · ROUGE-L 0.50"
    assert runs_tab.failures(RESULTS, "before") == []


def test_failures_export_as_canonical_data_and_never_over_the_run(tiny_run: Path, tmp_path):
    files = runs_tab.find_run(tiny_run)
    found = runs_tab.failures(RESULTS)
    out, n = runs_tab.export_failures(files, found, tmp_path / "next" / "failures.jsonl")
    examples = list(read_examples(out))
    assert n == 3 and [e.id for e in examples] == ["failure-heldout_instances-h1", "failure-heldout_instances-h2"] + [
        "failure-heldout_phrasings-m1"
    ]
    first = examples[0]
    assert first.messages[0].content == "prompt h1" and first.reference == "ref h1" and first.task == "hard"
    assert first.meta["failure"] == {
        "split": "heldout_instances",
        "prediction": "got h1",
        "correct": 0.0,
        "exact_match": 0.0,
        "rouge_l": 0.5,
        "id": "h1",
    }
    before = files.results.read_bytes()
    with pytest.raises(DataError, match="would overwrite input"):
        runs_tab.export_failures(files, found, files.results)
    assert files.results.read_bytes() == before
    with pytest.raises(DataError, match="no failures"):
        runs_tab.export_failures(files, [], tmp_path / "none.jsonl")
