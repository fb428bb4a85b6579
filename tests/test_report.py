"""The report: files, numbers and advice come from the results given."""

from __future__ import annotations

import html
import json
import re

from instillm.report import load_metrics, loss_points, next_steps, write_report


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


def sample(task: str, prompt: str, reference: str, prediction: str, correct: float) -> dict:
    return {
        "id": f"{task}-{prompt}",
        "task": task,
        "category": "list",
        "prompt": prompt,
        "reference": reference,
        "prediction": prediction,
        "exact_match": correct,
        "rouge_l": 0.5,
        "correct": correct,
    }


def empty_split() -> dict:
    return {"n": 0, "exact_match": 0.0, "rouge_l": 0.0, "correct": 0.0, "per_task": {}, "per_category": {}}


def test_no_nan_or_none_cells_where_a_split_has_no_rows(tmp_path):
    res = results()
    res["after"]["heldout_families"] = 0.0  # the split exists but holds no rows
    res["details"]["after"]["heldout_families"] = empty_split()
    res["details"]["after"]["heldout_instances"]["per_category"].pop("list")  # a category one split lacks
    del res["before"]["heldout_phrasings"]  # a stage without that split
    res["train"]["eval_loss"] = None
    paths = write_report(res, tmp_path)
    md, page = paths["report.md"].read_text(), paths["report.html"].read_text()
    for text in (md, page):
        assert not re.search(r"\bnan\b", text, re.IGNORECASE) and not re.search(r"\bNone\b", text)
    assert "| heldout_families | — | — | — |" in md and "| heldout_phrasings | — | 0.620 | 0.040 |" in md
    assert "| list | — | 0.340 | — |" in md and "| eval_loss | — |" in md


def test_loss_curve_starts_at_the_first_logged_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "loss": 7.5},
        {"step": 50, "loss": 3.0},
        {"step": 50, "eval_loss": 3.2},
        {"step": 99, "loss": 1},
    ]
    metrics.write_text("\n".join(json.dumps(r) for r in rows))
    md = write_report(results(), tmp_path / "out", metrics_path=metrics)["report.md"].read_text()
    assert "from step 1 (7.500) to step 99 (1.000), 3 point(s)" in md
    assert loss_points(load_metrics(metrics)) == [(1, 7.5), (50, 3.0), (99, 1)]


def test_report_embeds_the_training_data_card(tmp_path):
    from instillm.data.card import data_card
    from instillm.data.schema import from_prompt_completion

    rows = [from_prompt_completion(f"Sort the numbers {i} 3 1", "1 3", id=f"r{i}", task="sort") for i in range(4)]
    res = {**results(), "data_card": data_card(rows)}
    paths = write_report(res, tmp_path)
    md, page = paths["report.md"].read_text(), paths["report.html"].read_text()
    assert "## Training data card" in md and "4 training row(s): 1 task(s)" in md
    card = page[page.index('<h2 id="data-card">') : page.index('<h2 id="failing-tasks">')]
    assert card.count('<img src="data:image/png;base64,') >= 3  # composition, lengths, languages (+ verbs)
    assert "<h3>Composition</h3>" in card and "<td>sort</td>" in card and "instillm:data-card" not in page
    assert "Near-duplicate clusters" not in card  # a card without it (an older run's): left out, not "not computed"
    assert "and leading verbs." in md


def test_report_card_shows_near_duplicates_and_overlap_with_the_eval_splits(tmp_path):
    from instillm.curate.card import card_with_checks
    from instillm.data.schema import from_prompt_completion

    twice = "Sort the numbers 9 3 1 for me, from the smallest to the largest"
    prompts = [twice, twice + "!", "Sort the numbers 2 3 1", "Sort the numbers 5 4"]
    rows = [from_prompt_completion(p, "1 3", id=f"r{i}", task="sort") for i, p in enumerate(prompts)]
    held = {"heldout_instances": [from_prompt_completion("Sort the numbers 2 3 1", "1 2 3", id="h0")]}
    res = {**results(), "data_card": card_with_checks(rows, eval_sets=held)}
    paths = write_report(res, tmp_path)
    md, page = paths["report.md"].read_text(), paths["report.html"].read_text()
    assert "; 1 near-duplicate cluster(s) of 2 row(s); 1 row(s) overlap the run's eval splits." in md
    assert "near-duplicate clusters and overlap with the run's eval splits (template text" in md
    card = page[page.index('<h2 id="data-card">') : page.index('<h2 id="failing-tasks">')]
    assert "<h3>Near-duplicate clusters</h3>" in card and "<h3>Overlap with eval sets</h3>" in card
    assert "same prompt: sort the numbers 2 3 1" in card and "heldout_instances" in card


def test_each_failing_task_links_to_its_failing_rows(tmp_path):
    res = results()
    odd = "cut|paste [v2]"  # markdown-hostile name: its link and anchor must still work
    after = res["details"]["after"]["heldout_instances"]
    after["per_task"][odd] = {"n": 4, "exact_match": 0.5, "rouge_l": 0.5, "correct": 0.5}
    after["samples"][odd] = [sample(odd, "Cut [a|b]", "b", "", 0.0), sample(odd, "Cut c", "c", "c", 1.0)]
    page = write_report(res, tmp_path)["report.html"].read_text()
    links = re.findall(r'<a href="#([^"]+)">([^<]+)</a>', page)
    ids = set(re.findall(r' id="([^"]+)"', page))
    failing = [(t, a) for a, t in links if a.startswith("fail-")]
    assert sorted(t for t, _ in failing) == sorted([html.escape(odd), "sort_numbers", "sort_numbers", "reverse_word"])
    assert all(anchor in ids for _, anchor in failing) and all(a in ids for a, _ in links)
    rows = page[page.index(f'id="{dict(failing)[html.escape(odd)]}"') :]
    assert "<td>Cut [a|b]</td><td>b</td><td>(empty)</td><td>wrong; exact match 0" in rows
    assert "<td>Cut c</td>" not in page  # a right answer is not a failing row
