"""The report's zero-shot section: a per-cluster table of the stages given, absent without results."""

from __future__ import annotations

from instillm.report import write_report, zeroshot_markdown


def zs(acc: float, rouge: float) -> dict:
    return {
        "clusters": {
            "sentiment": {"accuracy": acc, "rouge_l": None, "datasets": ["imdb"]},
            "summarization": {"accuracy": None, "rouge_l": rouge, "datasets": ["xsum"]},
        }
    }


def run_results(**extra) -> dict:
    return {"name": "unit", "before": {"heldout": 0.1}, "after": {"heldout": 0.5}, **extra}


def test_before_and_after_columns(tmp_path):
    md = write_report(
        run_results(suites={"zeroshot": {"before": zs(0.25, 0.125), "after": zs(0.75, 0.375)}}), tmp_path
    )["report.md"].read_text()
    assert "## Zero-shot T0 clusters" in md
    assert "| cluster | accuracy before | accuracy after | ROUGE-L before | ROUGE-L after |" in md
    assert "| sentiment | 0.250 | 0.750 | — | — |" in md  # no template of that kind: a dash, never nan
    assert "| summarization | — | — | 0.125 | 0.375 |" in md
    assert "Zero-shot T0 clusters" in (tmp_path / "report.html").read_text()


def test_one_stage_or_none():
    lines = zeroshot_markdown({"after": zs(0.5, 0.2)})
    assert "| cluster | accuracy after | ROUGE-L after |" in lines
    assert zeroshot_markdown({}) == [] and zeroshot_markdown({"before": None}) == []


def test_report_without_zeroshot_has_no_section(tmp_path):
    md = write_report(run_results(), tmp_path)["report.md"].read_text()
    assert "Zero-shot" not in md
