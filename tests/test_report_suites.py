"""The report's suite sections from crafted results: tables, plots and advice come from the numbers given."""

from __future__ import annotations

from instillm.report import next_steps, suite_advice, write_report


def cat(score: float, n: int = 2, failures: int = 0) -> dict:
    return {"score": score, "n": n, "n_failures": failures}


def mt(score: float, writing: float, math: float, turn2: float) -> dict:
    return {
        "model": "m",
        "judge": "judge-llm",
        "n_questions": 2,
        "n_judgments": 4,
        "n_failures": 0,
        "n": 4,
        "score": score,
        "per_turn": {"1": cat(score), "2": cat(turn2)},
        "per_category": {"math": cat(math), "writing": cat(writing)},
    }


def wr(rate: float, se: float, lc: float | None = None) -> dict:
    return {"win_rate": rate, "standard_error": se, "lc_win_rate": lc, "discrete_win_rate": rate, "n": 10}


def judged(rate: float, se: float, lc: float, koala: float, oasst: float, failures: int) -> dict:
    part = lambda r: {"n_pairs": 5, "n_judged": 5, "n_failures": 0, "win_rate": wr(r, 1.0)}  # noqa: E731
    return {
        "model": "tuned",
        "reference": "gpt4",
        "judge": "judge-llm",
        "n_pairs": 10,
        "n_judged": 10 - failures,
        "n_failures": failures,
        "n_failed_orders": failures,
        "n_identical": 0,
        "win_rate": wr(rate, se, lc),
        "per_dataset": {"koala": part(koala), "oasst": part(oasst)},
    }


def ife(strict: float, formats: float, keywords: float) -> dict:
    return {
        "prompt_level_strict": strict,
        "instruction_level_strict": strict,
        "prompt_level_loose": strict,
        "instruction_level_loose": strict,
        "num_prompts": 4,
        "num_instructions": 6,
        "per_group": {
            "detectable_format": {"strict": formats, "loose": formats, "n": 2},
            "keywords": {"strict": keywords, "loose": 1.0, "n": 4},
        },
    }


def results() -> dict:
    return {
        "name": "unit",
        "before": {"heldout": 0.1},
        "after": {"heldout": 0.5},
        "suites": {
            "mt_bench": {"before": mt(3.0, 4.0, 2.0, 2.5), "after": mt(5.0, 4.5, 6.0, 4.0)},
            "judge": {
                "before": judged(10.0, 5.0, 12.0, 5.0, 15.0, failures=1),
                "after": judged(40.0, 7.5, 45.0, 20.0, 60.0, failures=0),
            },
            "ifeval": {"before": ife(0.5, 0.5, 0.75), "after": ife(0.25, 0.0, 0.5)},
        },
    }


def test_mt_bench_and_judge_sections(tmp_path):
    paths = write_report(results(), tmp_path)
    md = paths["report.md"].read_text()
    for row in (
        "## MT-Bench",
        "| score (1-10) | 3.000 | 5.000 |",
        "| failures | 0 | 0 |",
        "| turn 2 | 2.500 | 4.000 | 2 | 2 | 0 | 0 |",
        "| writing | 4.000 | 4.500 |",
        "## Pairwise judge",
        "tuned vs gpt4, judged by judge-llm",
        "| win rate (%) ± se | 10.00 ± 5.00 | 40.00 ± 7.50 |",
        "| LC win rate (%) | 12.00 | 45.00 |",
        "| pairs judged / total | 9 / 10 | 10 / 10 |",
        "| failures (pairs; orders) | 1; 1 | 0; 0 |",
        "| koala | 5.00 ± 1.00 | 20.00 ± 1.00 | 5 / 5 | 5 / 5 |",
        "![MT-Bench before vs after](suite_mt_bench.png)",
        "![Pairwise judge before vs after](suite_judge.png)",
    ):
        assert row in md, row
    for name in ("suite_mt_bench", "suite_judge", "suite_ifeval"):
        assert paths[name].stat().st_size > 0
    page = paths["report.html"].read_text()
    assert 'src="suite_judge.png"' in page and "40.00 ± 7.50" in page


def test_ifeval_section_per_group(tmp_path):
    md = write_report(results(), tmp_path)["report.md"].read_text()
    assert "| group | n | strict before | strict after | loose before | loose after |" in md
    assert "| detectable_format | 2 | 0.500 | 0.000 | 0.500 | 0.000 |" in md
    assert "| prompt level strict | 0.500 | 0.250 |" in md


def test_advice_names_weakest_categories_and_regressions():
    advice = suite_advice(results()["suites"])
    mt_line = next(a for a in advice if a.startswith("MT-Bench: weakest"))
    assert "after: writing (4.50), math (6.00)" in mt_line and "fell" not in mt_line
    judge_line = next(a for a in advice if a.startswith("Pairwise judge: datasets losing"))
    assert "after: koala (20.0)." in judge_line and "oasst" not in judge_line  # 60% beats the reference
    ifeval_line = next(a for a in advice if a.startswith("IFEval"))
    assert "detectable_format (0%), keywords (50%)" in ifeval_line
    assert "fell from 50% to 25% with fine-tuning" in ifeval_line
    assert not any("no readable verdict" in a for a in advice)  # no failure after training
    failing = {"judge": {"after": judged(40.0, 7.5, 45.0, 20.0, 60.0, failures=3)}}
    assert any(
        a.startswith("Pairwise judge, after: 3 of 10 pairs have no readable verdict") for a in suite_advice(failing)
    )
    assert all(a in next_steps(results()) for a in advice)
    strong = {"ifeval": {"after": ife(0.9, 0.85, 0.95)}}
    assert suite_advice(strong) == [
        "IFEval: weakest instruction groups (strict accuracy), after: every category at or above 80%."
    ]


def test_one_stage_and_no_suites(tmp_path):
    only_after = {
        "name": "u",
        "after": {"h": 0.2},
        "suites": {"mt_bench": {"before": None, "after": mt(5.0, 4.5, 6.0, 4.0)}},
    }
    md = write_report(only_after, tmp_path / "a")["report.md"].read_text()
    assert "| metric | after |" in md and "| score (1-10) | 5.000 |" in md
    md = write_report({"name": "u", "after": {"h": 0.2}, "suites": {}}, tmp_path / "b")["report.md"].read_text()
    assert "MT-Bench" not in md and "IFEval" not in md and not (tmp_path / "b" / "suite_mt_bench.png").exists()
