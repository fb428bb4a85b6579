"""The judge's failure modes (parse failures, position flips, first-position picks) and its agreement
with another judge's annotations, on crafted rows with known answers and on AlpacaEval's GPT-4 rows."""

from __future__ import annotations

import json

import pytest

from instillm.evaluate.judge import (
    agreement,
    annotation_row,
    decision,
    failure_modes,
    judge_pairwise,
    summarize,
    write_annotations,
)
from tests.evaluate.test_judge import RuleJudge


def _row(i: int, texts, o1: str | None = None, o2: str | None = None) -> dict:
    return annotation_row(
        f"instruction {i}", o1 or f"reference answer {i}", o2 or f"model answer {i}", "ref", "mine", "judge", texts
    )


def test_failure_modes_of_crafted_verdicts():
    rows = [
        _row(0, ("M", "m")),  # output_2 in both orders: consistent; the swapped "m" is the first position
        _row(1, ("m", "m")),  # always position 1: a flip, both verdicts first-position
        _row(2, ("M", "M")),  # always position 2: a flip, neither first-position
        _row(3, ("gibberish", "m")),  # one reply unread: no flip to judge; the read one is first-position
        _row(4, ("", "??")),  # both unread
        _row(5, ("[[C]]", "m")),  # a tie, then output_2: the verdict changed (a flip); the tie names no position
        _row(6, None, "same", "same"),  # identical outputs: no judge replies, left out of every rate
    ]
    fm = failure_modes(rows)
    assert (fm.n_replies, fm.n_failed_orders) == (12, 3)
    assert (fm.n_both_read, fm.n_flips) == (4, 3)  # rows 0, 1, 2, 5; flips 1, 2, 5
    assert (fm.n_decided_verdicts, fm.n_first_position) == (8, 5)  # 2+2+2+1+1 verdicts; 1+2+0+1+1 first
    assert fm.parse_failure_rate == pytest.approx(3 / 12)
    assert fm.position_flip_rate == pytest.approx(3 / 4)
    assert fm.first_position_rate == pytest.approx(5 / 8)
    d = summarize(rows).to_dict()
    assert d["n_failed_orders"] == 3 and d["n_identical"] == 1
    assert d["parse_failure_rate"] == pytest.approx(0.25)
    assert d["position_flip_rate"] == pytest.approx(0.75)
    assert d["first_position_rate"] == pytest.approx(0.625)
    assert (d["n_replies"], d["n_both_read"], d["n_flips"]) == (12, 4, 3)
    assert (d["n_decided_verdicts"], d["n_first_position"]) == (8, 5)
    assert d["agreement"] is None
    json.dumps(d)


def test_failure_modes_without_replies_are_none():
    fm = failure_modes([_row(0, None, "x", "x"), {"instruction": "q", "output_1": "a", "output_2": "b"}])
    assert fm.n_replies == 0
    assert (fm.parse_failure_rate, fm.position_flip_rate, fm.first_position_rate) == (None, None, None)


@pytest.mark.parametrize(
    "rule, flip, first",
    [("first", 1.0, 1.0), ("second", 1.0, 0.0), ("length", 0.0, 0.5)],
)
def test_failure_modes_expose_a_position_biased_judge(rule, flip, first):
    instructions = ["q0", "q1", "q2", "q3"]
    model = ["a much longer answer", "short", "the longest answer of all", "same"]
    ref = ["brief", "a longer reference", "tiny", "same"]
    s = summarize(judge_pairwise(instructions, model, ref, RuleJudge(rule)))
    fm = s.failure_modes
    assert (fm.n_replies, fm.n_both_read, fm.n_decided_verdicts) == (6, 3, 6)
    assert fm.parse_failure_rate == 0.0
    assert fm.position_flip_rate == pytest.approx(flip)
    assert fm.first_position_rate == pytest.approx(first)


@pytest.mark.parametrize(
    "preference, expected",
    [
        (1.0, 1.0),
        (1.0000001, 1.0),
        (1.49, 1.0),
        (1.5, 1.5),
        (1.51, 2.0),
        (2.0, 2.0),
        (0, 1.5),
        (None, None),
        ("", None),
        ("NA", None),  # not a number: no decision, not a ValueError
        ("2.0", 2.0),
        (float("nan"), None),
        ([2.0], None),
    ],
)
def test_decision_thresholds_preferences(preference, expected):
    assert decision(preference) == expected


def _ann(instruction: str, o1: str, o2: str, preference) -> dict:
    return {"instruction": instruction, "output_1": o1, "output_2": o2, "preference": preference}


def test_agreement_counts_a_non_numeric_reference_preference_as_missing():
    ours = [_ann("a", "A1", "A2", 2.0), _ann("b", "B1", "B2", 1.0)]
    reference = [_ann("a", "A1", "A2", "NA"), _ann("b", "B2", "B1", "n/a")]  # the second one swapped
    a = agreement(ours, reference)
    assert (a["n_matched"], a["n_missing"], a["n_decided"], a["agreement"]) == (2, 2, 0, None)


def test_agreement_with_a_crafted_reference():
    ours = [
        _ann("a", "A1", "A2", 2.0),
        _ann("b", "B1", "B2", 1.0),
        _ann("c", "C1", "C2", 1.75),
        _ann("d", "D1", "D2", 1.5),  # our tie
        _ann("e", "E1", "E2", 1.25),
        _ann("e2", "F1", "F2", 1.0),
        _ann("f", "G1", "G2", None),  # our parse failure
        _ann("g", "H1", "H2", 2.0),  # not in the reference
        _ann("h", "I1", "I2", 2.0),  # in the reference with other outputs
        _ann("i", "J1", "J2", 1.0),
    ]
    reference = [
        {**_ann("a", "A1", "A2\n", 1.9), "annotator": "gpt4"},  # same orientation (whitespace aside): output_2
        _ann("b", "B2", "B1", 1.2),  # swapped: its output_1 is our output_2, so it prefers our output_2
        _ann("c", "C2", "C1", 1.1),  # swapped: our output_2
        _ann("d", "D1", "D2", 1.0),
        _ann("e", "E1", "E2", 1.5),  # reference tie
        _ann("e2", "F1", "F2", 0),  # AlpacaEval's 0: a tie
        _ann("f", "G1", "G2", 2.0),
        _ann("h", "I1", "other", 2.0),
        _ann("i", "J1", "J2", 1.01),
        _ann("zz", "Z1", "Z2", 1.0),  # a reference row nobody asked about
    ]
    a = agreement(ours, reference)
    assert (a["n_rows"], a["n_matched"], a["n_swapped"], a["n_unmatched"], a["n_missing"]) == (10, 8, 2, 2, 1)
    assert (a["n_ties_ours"], a["n_ties_reference"]) == (1, 2)
    # decided on both sides: a (2, 2), b (1, 2), c (2, 2), i (1, 1): 3 of 4 agree
    assert (a["n_decided"], a["n_agree"]) == (4, 3)
    assert a["agreement"] == pytest.approx(0.75)
    assert a["output_2_share_ours"] == pytest.approx(0.5) and a["output_2_share_reference"] == pytest.approx(0.75)
    # p_e = .5 * .75 + .5 * .25 = .5; kappa = (.75 - .5) / (1 - .5)
    assert a["kappa"] == pytest.approx(0.5)
    assert a["reference_annotator"] == "gpt4"
    # the same pairs with our outputs shown the other way round (and preferences mirrored): the same answer
    mirrored = [
        {**r, "output_1": r["output_2"], "output_2": r["output_1"], "preference": decision_mirror(r["preference"])}
        for r in ours
    ]
    m = agreement(mirrored, reference)
    assert (m["n_matched"], m["n_swapped"], m["n_decided"], m["n_agree"]) == (8, 6, 4, 3)
    assert m["kappa"] == pytest.approx(0.5)


def decision_mirror(preference):
    return None if preference is None else 3.0 - preference


def test_agreement_edge_cases():
    nothing = agreement([_ann("a", "x", "y", 2.0)], [_ann("b", "x", "y", 2.0)])
    assert nothing["n_matched"] == 0 and nothing["agreement"] is None and nothing["kappa"] is None
    ties = agreement([_ann("a", "x", "y", 1.5)], [_ann("a", "x", "y", 1.5)])
    assert (ties["n_decided"], ties["n_ties_ours"], ties["n_ties_reference"]) == (0, 1, 1)
    assert ties["agreement"] is None
    constant = agreement(
        [_ann("a", "x", "y", 1.0), _ann("b", "x", "y", 1.0)], [_ann("a", "x", "y", 1), _ann("b", "x", "y", 1)]
    )
    assert constant["agreement"] == 1.0 and constant["kappa"] is None  # chance agreement is 1: kappa undefined


def test_summary_carries_agreement(tmp_path):
    rows = [_row(0, ("M", "m")), _row(1, ("m", "M")), _row(2, ("m", "m"))]  # prefs 2, 1, 1.5
    reference = [{**r, "preference": p} for r, p in zip(rows, (1.8, 1.3, 1.0))]
    d = summarize(rows, reference).to_dict()
    assert d["agreement"]["n_matched"] == 3 and d["agreement"]["agreement"] == 1.0
    assert d["agreement"]["n_ties_ours"] == 1
    json.loads(json.dumps(d))
    write_annotations(rows, tmp_path / "a.json")


# --------------------------------------------------------------------------------------------
# AlpacaEval's GPT-4-turbo annotations (generator_1 = gpt4_1106_preview, generator_2 = alpaca-7b)


def _gpt4_rows(shared_data, k: int = 20) -> list[dict]:
    path = shared_data / "alpaca_eval" / "alpaca-7b_annotations_weighted_gpt4_turbo.json"
    return json.loads(path.read_text(encoding="utf-8"))[:k]


def test_gpt4_annotations_agree_with_themselves_and_not_with_their_flip(shared_data):
    rows = _gpt4_rows(shared_data)
    same = agreement(rows, rows)
    assert same["n_matched"] == 20 and same["n_unmatched"] == 0 and same["n_swapped"] == 0
    assert same["n_decided"] > 0 and same["agreement"] == 1.0
    assert same["reference_annotator"] == "weighted_alpaca_eval_gpt4_turbo"
    flipped = [{**r, "preference": 3.0 - float(r["preference"])} for r in rows]
    opposite = agreement(flipped, rows)
    assert opposite["n_matched"] == 20 and opposite["n_decided"] == same["n_decided"]
    assert opposite["agreement"] == 0.0
    # our rows with the outputs the other way round (reference first or second), preferences mirrored
    swapped = [
        {**r, "output_1": r["output_2"], "output_2": r["output_1"], "preference": 3.0 - r["preference"]} for r in rows
    ]
    mirrored = agreement(swapped, rows)
    identical = sum(r["output_1"] == r["output_2"] for r in rows)
    assert mirrored["n_matched"] == 20 and mirrored["n_swapped"] == 20 - identical
    assert mirrored["agreement"] == 1.0


# --------------------------------------------------------------------------------------------
# `instillm eval judge` prints them


def test_cli_eval_judge_prints_failure_modes_and_agreement(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from instillm.cli import app
    from instillm.cli._common import BackendOptions

    judge = RuleJudge("first")
    monkeypatch.setattr(BackendOptions, "open", lambda self, default_cache=None: judge)
    model = [
        {"instruction": "Name a colour.", "output": "Blue.", "generator": "mine"},
        {"instruction": "Add 2 and 2.", "output": "4", "generator": "mine"},
        {"instruction": "Say hi.", "output": "hi", "generator": "mine"},
    ]
    ref = [
        {"instruction": "Add 2 and 2.", "output": "Four.", "generator": "base"},
        {"instruction": "Name a colour.", "output": "Red.", "generator": "base"},
        {"instruction": "Say hi.", "output": "hi", "generator": "base"},
    ]
    # a reference judge: the colour pair in our orientation (prefers Blue), the sum swapped (prefers "4")
    annotations = [
        {
            "instruction": "Name a colour.",
            "output_1": "Red.",
            "output_2": "Blue.",
            "preference": 1.9,
            "annotator": "gpt",
        },
        {"instruction": "Add 2 and 2.", "output_1": "4", "output_2": "Four.", "preference": 1.2, "annotator": "gpt"},
    ]
    for name, data in (("m.json", model), ("r.json", ref), ("gpt.json", annotations)):
        (tmp_path / name).write_text(json.dumps(data))
    args = ["eval", "judge", "--outputs", str(tmp_path / "m.json"), "--reference", str(tmp_path / "r.json")]
    args += ["-o", str(tmp_path / "ann.json"), "--annotations", str(tmp_path / "gpt.json")]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    # an always-first judge: every read pair flips, every verdict is the first position, all pairs are ties
    assert (s["n_replies"], s["parse_failure_rate"], s["position_flip_rate"], s["first_position_rate"]) == (
        4,
        0.0,
        1.0,
        1.0,
    )
    a = s["agreement"]
    assert (a["n_matched"], a["n_swapped"], a["n_unmatched"], a["n_ties_ours"], a["n_decided"]) == (2, 1, 1, 2, 0)
    table = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    text = table.stdout
    for line in (
        "parse failures (replies)",
        "0.0% (0 / 4)",
        "position flips (pairs, both orders read)",
        "100.0% (2 / 2)",
        "first-position picks (verdicts)",
        "100.0% (4 / 4)",
        "reference judge",
        "agreement (decided pairs)",
        "output_2 wins: ours; reference",
        "Cohen's kappa",
        "pairs matched / total (swapped)",
        "2 / 3 (1)",
        "ties: ours; reference",
    ):
        assert line in text, line
    unmatched = tmp_path / "other.json"
    unmatched.write_text(json.dumps([{**annotations[0], "output_2": "Green."}]))
    res = CliRunner().invoke(app, [*args[:-1], str(unmatched)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "no pair matched" in res.stdout
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "missing.json")])
    assert bad.exit_code == 1 and "cannot read annotations" in bad.output


# --------------------------------------------------------------------------------------------
# the report's judge section


def test_report_shows_failure_modes_and_agreement():
    from instillm.report import judge_markdown

    rows = [_row(0, ("M", "m")), _row(1, ("m", "m")), _row(2, ("gibberish", "M"))]
    reference = [{**r, "preference": p} for r, p in zip(rows, (1.9, 1.2, 1.0))]
    names = {"model": "tuned", "reference": "gpt4", "judge": "smollm2"}
    old = {"n_pairs": 3, "n_judged": 2, "n_failures": 1, "n_failed_orders": 1, "win_rate": None}  # an older result
    entry = {"before": {**names, **old}, "after": {**names, **summarize(rows).to_dict()}}
    md = "\n".join(judge_markdown(entry))
    for line in (
        "| parse failure rate (replies) | — | 16.7% (1 / 6) |",
        "| position flip rate (pairs, both read) | — | 50.0% (1 / 2) |",
        "| first-position rate (verdicts) | — | 60.0% (3 / 5) |",
    ):
        assert line in md, line
    assert "agreement" not in md
    entry["after"] = {**names, **summarize(rows, reference).to_dict()}
    md = "\n".join(judge_markdown(entry))
    for line in (
        "| agreement with reference annotations (decided pairs) | — | 100.0% (1 / 1) |",
        "| pairs matched to the annotations | — | 100.0% (3 / 3) |",
        "| ties (ours; reference) | — | 1; 0 |",
    ):
        assert line in md, line
