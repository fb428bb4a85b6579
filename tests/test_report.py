"""The report: files, numbers and advice come from the results given."""

from __future__ import annotations

import json

from instillm.report import next_steps, write_report


def split(correct_a: float, correct_b: float) -> dict:
    agg = lambda c: {"n": 10, "exact_match": c, "rouge_l": c, "correct": c}  # noqa: E731
    return {
        **agg((correct_a + correct_b) / 2),
        "per_task": {"reverse_word": agg(correct_a), "sort_numbers": agg(correct_b)},
        "per_category": {"string": agg(correct_a), "list": agg(correct_b)},
        "samples": {
            "sort_numbers": [
                {
                    "id": "x",
                    "task": "sort_numbers",
                    "category": "list",
                    "prompt": "Sort 3 1 2",
                    "reference": "1 2 3",
                    "prediction": "3 2 1",
                    "exact_match": 0.0,
                    "rouge_l": 0.3,
                    "correct": 0.0,
                }
            ]
        },
    }


def results() -> dict:
    return {
        "name": "unit",
        "before": {"heldout_instances": 0.0, "heldout_phrasings": 0.01},
        "after": {"heldout_instances": 0.97, "heldout_phrasings": 0.62},
        "baseline": {"heldout_instances": 0.05, "heldout_phrasings": 0.04},
        "details": {"after": {"heldout_instances": split(1.0, 0.94), "heldout_phrasings": split(0.9, 0.34)}},
        "train": {"steps": 100, "final_loss": 0.12},
        "data": {"n_train": 1000},
    }


def test_write_report_creates_files_with_numbers(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": s, "loss": 3.0 / s, "eval_loss": None}) for s in range(1, 20)))
    paths = write_report(results(), tmp_path / "out", metrics_path=metrics)
    for name in ("report.md", "report.html", "before_after", "categories", "loss"):
        assert paths[name].exists() and paths[name].stat().st_size > 0
    md = paths["report.md"].read_text()
    assert "| heldout_phrasings | 0.010 | 0.620 | 0.040 |" in md
    assert "3 2 1" in md  # a failure is shown
    page = paths["report.html"].read_text()
    assert "<table>" in page and 'src="loss.png"' in page and "0.620" in page


def test_next_steps_names_weak_tasks_per_split():
    advice = next_steps(results())
    assert len(advice) == 1
    assert advice[0].startswith("heldout_phrasings: 1 task(s)") and "sort_numbers (34%)" in advice[0]
    assert "phrasings" in advice[0]


def test_report_without_loss_curve(tmp_path):
    paths = write_report(results(), tmp_path)
    assert "loss" not in paths and paths["report.md"].exists()


def test_load_metrics_skips_a_torn_last_line(tmp_path):
    from instillm.report import load_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert load_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
