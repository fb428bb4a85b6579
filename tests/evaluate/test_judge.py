"""Pairwise judge: verdict parsing, position-swap aggregation, winrate.py round trip, a real endpoint."""

from __future__ import annotations

import json
import math
import re
import statistics

import pytest

from instillm.errors import ConfigError, DataError
from instillm.evaluate.judge import (
    JudgeConfig,
    annotation_row,
    combine,
    judge_pairwise,
    load_outputs,
    pair_outputs,
    pairwise_messages,
    parse_verdict,
    summarize,
    write_annotations,
)
from instillm.evaluate.winrate import load_annotations, win_rates


@pytest.mark.parametrize(
    "text, expected",
    [
        ("m", 1.0),
        ("M", 2.0),
        ("  M\n", 2.0),
        ("`m`", 1.0),
        ('"M".', 2.0),
        ("### Concise explanation\nThe second is accurate.\n\n### Which is best, m or M?\nM", 2.0),
        ("Output (a)", 1.0),
        ("Output (b) is better because it answers the question.", 2.0),
        ("[[A]]", 1.0),
        ("My final verdict: [[B]]", 2.0),
        ("[[C]]", 1.5),
        ("[{'model': 'model_1', 'rank': 2}, {'model': 'model_2', 'rank': 1}]", 2.0),
        ('[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]', 1.0),
        ("```python\n[\n    {'model': 'model_2', 'rank': 1},\n    {'model': 'model_1', 'rank': 2}\n]\n```", 2.0),
        ('{"ordered_models": [{"model": "M", "rank": 1}, {"model": "m", "rank": 2}]}', 2.0),
        ('{"model_identifier": "m"}', 1.0),
        ('Here you go: {"winner": "model_2"}', 2.0),
    ],
)
def test_parse_verdict_reads_every_supported_format(text, expected):
    v = parse_verdict(text)
    assert v.error is None
    assert v.preference == expected


@pytest.mark.parametrize(
    "text, error",
    [
        (None, "empty"),
        ("", "empty"),
        ("   \n ", "empty"),
        ("m or M", "no verdict"),
        ("Both outputs are fine.", "no verdict"),
        ("xq zzl ⁂ mM Mm ]]][[{", "no verdict"),
        ("[{'model': 'model_1', 'rank': 3}, {'model': 'model_2', 'rank': 1}]", "no verdict"),
        ("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 1}]", "no verdict"),
        ("[{'model': 'model_1', 'rank': True}]", "no verdict"),
        ("Output (a) is clear, but Output (b) is correct.", "ambiguous"),
        ("[[A]] no wait [[B]]", "ambiguous"),
        ("[[A]]\nM", "ambiguous"),
    ],
)
def test_parse_verdict_turns_malformed_text_into_an_error(text, error):
    v = parse_verdict(text)
    assert v.preference is None
    assert error in v.error


@pytest.mark.parametrize(
    "original, swapped, expected",
    [
        (2.0, 1.0, 2.0),  # model wins in both orders
        (1.0, 2.0, 1.0),  # reference wins in both orders
        (1.0, 1.0, 1.5),  # always position 1: the orders disagree, a tie
        (2.0, 2.0, 1.5),  # always position 2
        (2.0, 1.5, 1.75),  # a win and a tie
        (1.5, 1.5, 1.5),
        (None, 1.0, None),
        (2.0, None, None),
    ],
)
def test_combine_maps_the_swapped_order_back(original, swapped, expected):
    assert combine(original, swapped) == expected


def _row(i: int, texts, o1: str | None = None, o2: str | None = None) -> dict:
    return annotation_row(
        f"instruction {i}", o1 or f"reference answer {i}", o2 or f"model answer {i}", "ref", "mine", "judge", texts
    )


@pytest.mark.parametrize("always", ["m", "M", "Output (a)", "[[B]]"])
def test_a_judge_that_always_picks_one_position_gives_ties(always):
    rows = [_row(i, (always, always)) for i in range(12)]
    s = summarize(rows)
    assert [r["preference"] for r in rows] == [1.5] * 12
    assert s.n_failures == 0 and s.n_judged == 12
    assert s.win_rate.win_rate == pytest.approx(50.0)
    assert s.win_rate.discrete_win_rate == pytest.approx(50.0)
    assert s.win_rate.n_draws == 12


def test_a_consistent_judge_is_not_cancelled():
    # "M" in the original order and "m" in the swapped one both name the model's output
    rows = [_row(i, ("M", "m")) for i in range(5)] + [_row(i, ("m", "M")) for i in range(5, 8)]
    s = summarize(rows)
    assert [r["preference"] for r in rows] == [2.0] * 5 + [1.0] * 3
    assert s.win_rate.win_rate == pytest.approx(500 / 8)
    assert (s.win_rate.n_wins, s.win_rate.n_wins_base, s.win_rate.n_draws) == (5, 3, 0)


class RuleJudge:
    """A deterministic judge (a Backend): prefers the longer output shown, or always one position."""

    def __init__(self, rule: str) -> None:
        self.model, self.rule, self.seen = f"rule-{rule}", rule, []

    def generate(self, requests, progress=None):
        from instillm.llm.backend import LLMResponse, LLMSample

        out = []
        for r in requests:
            first, second = re.findall(r'"output": """(.*?)"""', r.messages[-1]["content"], re.S)
            self.seen.append((first, second))
            verdict = {"first": "m", "second": "M"}.get(self.rule) or ("m" if len(first) > len(second) else "M")
            out.append(LLMResponse((LLMSample(verdict, "stop"),), self.model))
        return out

    def close(self) -> None:
        pass


def test_judge_pairwise_asks_both_orders_and_cancels_position_bias():
    instructions = ["q0", "q1", "q2", "q3"]
    model = ["a much longer answer", "short", "the longest answer of all", "same"]
    ref = ["brief", "a longer reference", "tiny", "same"]
    length = RuleJudge("length")
    rows = judge_pairwise(instructions, model, ref, length, model_name="mine", reference_name="ref")
    # identical outputs are not sent; every other pair is shown reference-first, then model-first
    assert length.seen == [
        (ref[0], model[0]),
        (model[0], ref[0]),
        (ref[1], model[1]),
        (model[1], ref[1]),
        (ref[2], model[2]),
        (model[2], ref[2]),
    ]
    assert [r["preference"] for r in rows] == [2.0, 1.0, 2.0, 1.5]
    assert rows[0]["order_preferences"] == [2.0, 2.0] and rows[0]["annotator"] == "rule-length (identifier)"
    for rule in ("first", "second"):
        biased = judge_pairwise(instructions, model, ref, RuleJudge(rule))
        assert [r["preference"] for r in biased] == [1.5] * 4
        assert summarize(biased).win_rate.win_rate == pytest.approx(50.0)


def test_annotations_round_trip_through_winrate(tmp_path):
    rows = [
        _row(0, ("M", "m")),  # model better in both orders: 2
        _row(1, ("m", "M")),  # reference better in both: 1
        _row(2, ("M", "[[C]]")),  # a win and a tie: 1.75
        _row(3, ("Output (b)", "Output (a)")),  # 2
        _row(4, None, "same", "same"),  # identical outputs: a tie, no judge call
        _row(5, ("gibberish", "m")),  # one order unreadable: no preference
    ]
    path = write_annotations(rows, tmp_path / "annotations.json")
    loaded = load_annotations(path)
    assert loaded[5]["preference"] is None and "original: no verdict" in loaded[5]["failure"]
    assert loaded[5]["raw_completion"] == {"original": "gibberish", "swapped": "m"}
    assert loaded[2]["order_preferences"] == [2.0, 1.5]
    [wr] = win_rates([path])
    # by hand: preferences 2, 1, 1.75, 2, 1.5 (row 5 skipped) → model shares 1, 0, .75, 1, .5
    shares = [1.0, 0.0, 0.75, 1.0, 0.5]
    assert wr.n == 5
    assert wr.win_rate == pytest.approx(100 * sum(shares) / 5)  # 65
    assert wr.standard_error == pytest.approx(100 * statistics.stdev(shares) / math.sqrt(5))
    assert wr.discrete_win_rate == pytest.approx(100 * (3 + 1 / 2) / 5)  # 3 wins, 1 loss, 1 tie
    assert wr.model == "mine"
    s = summarize(rows)
    assert (s.n_pairs, s.n_judged, s.n_failures, s.n_failed_orders, s.n_identical) == (6, 5, 1, 1, 1)
    assert s.win_rate.win_rate == pytest.approx(wr.win_rate)
    assert s.win_rate.lc_win_rate == pytest.approx(wr.lc_win_rate)


def test_summary_without_any_preference_has_no_win_rate():
    s = summarize([_row(0, ("", "??")), _row(1, ("nope", "m"))])
    assert s.win_rate is None and s.n_failures == 2 and s.n_failed_orders == 3


@pytest.mark.parametrize("style", ["identifier", "ranking"])
def test_prompt_shows_both_outputs_in_the_given_order(style):
    [system, user] = pairwise_messages("Name a prime.", "FIRST-OUT {x}", "SECOND-OUT", style)
    assert system["role"] == "system" and user["role"] == "user"
    body = user["content"]
    assert "Name a prime." in body
    assert body.index("FIRST-OUT {x}") < body.index("SECOND-OUT")  # braces in outputs stay literal
    ids = ('"m"', '"M"') if style == "identifier" else ('"model_1"', '"model_2"')
    assert body.index(ids[0]) < body.index("FIRST-OUT") < body.index(ids[1]) < body.index("SECOND-OUT")


def test_config_and_inputs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="judge.style"):
        JudgeConfig(style="logprobs")
    with pytest.raises(ConfigError, match="max_tokens"):
        JudgeConfig(max_tokens=0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(DataError, match=r"bad.json: row 2"):
        load_outputs(bad)
    with pytest.raises(DataError, match="ref.json: no output for 1 instruction"):
        pair_outputs(
            [{"instruction": "a", "output": "x"}, {"instruction": "q", "output": "y"}],
            [{"instruction": "a", "output": "z"}],
            where="ref.json",
        )


# --------------------------------------------------------------------------------------------
# against a real endpoint: `instillm serve` over the tiny random model


def _shortest_pairs(shared_data, k: int):
    folder = shared_data / "alpaca_eval"
    model = load_outputs(folder / "alpaca-7b_outputs.json")
    ref = load_outputs(folder / "text_davinci_003_outputs.json")
    instructions, outs, refs = pair_outputs(model, ref)
    different = [i for i in range(len(instructions)) if outs[i] != refs[i]]
    order = sorted(different, key=lambda i: len(instructions[i]) + len(outs[i]) + len(refs[i]))
    return [instructions[i] for i in order[:k]], [outs[i] for i in order[:k]], [refs[i] for i in order[:k]]


def test_judge_pairwise_end_to_end_against_tiny_server(tiny_server, shared_data, tmp_path):
    from instillm.llm.backend import BackendConfig, make_backend

    instructions, outs, refs = _shortest_pairs(shared_data, 3)
    instructions.append("Say hi.")
    outs.append("hi")
    refs.append("hi")  # identical: a tie without a judge call
    cfg = BackendConfig(
        kind="openai",
        model=tiny_server.model,
        base_url=tiny_server.base_url,
        cache=str(tmp_path / "judge-cache.sqlite"),
    )
    judge_cfg = JudgeConfig(max_tokens=12)
    backend = make_backend(cfg)
    before = tiny_server.app.state.stats.requests
    try:
        rows = judge_pairwise(instructions, outs, refs, backend, judge_cfg, "alpaca-7b", "text_davinci_003")
    finally:
        backend.close()
    assert tiny_server.app.state.stats.requests - before == 6  # 3 pairs x 2 orders
    assert len(rows) == 4
    for r in rows[:3]:
        assert set(r["raw_completion"]) == {"original", "swapped"}
        assert all(isinstance(t, str) for t in r["raw_completion"].values())
        assert len(r["order_preferences"]) == 2
        assert (r["preference"] is None) == (r["failure"] is not None)
        assert r["preference"] in (None, 1.0, 1.25, 1.5, 1.75, 2.0)
        assert (r["generator_1"], r["generator_2"]) == ("text_davinci_003", "alpaca-7b")
    assert rows[3]["preference"] == 1.5 and rows[3]["raw_completion"] is None
    s = summarize(rows)
    assert s.n_failures == sum(r["preference"] is None for r in rows)
    assert s.n_judged + s.n_failures == 4
    path = write_annotations(rows, tmp_path / "annotations.json")
    [wr] = win_rates([path])  # the identical pair always gives winrate.py a preference to read
    assert wr.n == s.n_judged

    backend = make_backend(cfg)  # a re-run is answered from the cache: nothing re-sent
    before = tiny_server.app.state.stats.requests
    try:
        again = judge_pairwise(instructions, outs, refs, backend, judge_cfg, "alpaca-7b", "text_davinci_003")
    finally:
        backend.close()
    assert tiny_server.app.state.stats.requests == before
    assert [r["raw_completion"] for r in again] == [r["raw_completion"] for r in rows]


def test_cli_eval_judge(tiny_server, tmp_path):
    from typer.testing import CliRunner

    from instillm.cli import app

    model = [
        {"instruction": "Name a colour.", "output": "Blue.", "generator": "mine"},
        {"instruction": "Add 2 and 2.", "output": "4", "generator": "mine"},
    ]
    ref = [
        {"instruction": "Add 2 and 2.", "output": "Four.", "generator": "base"},
        {"instruction": "Name a colour.", "output": "Red.", "generator": "base"},
    ]
    (tmp_path / "m.json").write_text(json.dumps(model))
    (tmp_path / "r.json").write_text(json.dumps(ref))
    out = tmp_path / "ann.json"
    args = [
        "eval",
        "judge",
        "--outputs",
        str(tmp_path / "m.json"),
        "--reference",
        str(tmp_path / "r.json"),
        "--judge-base-url",
        tiny_server.base_url,
        "--judge-model",
        tiny_server.model,
        "--judge-cache",
        str(tmp_path / "cache.sqlite"),
        "--judge-max-tokens",
        "8",
        "-o",
        str(out),
        "--json",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    rows = json.loads(out.read_text())
    assert [r["instruction"] for r in rows] == ["Name a colour.", "Add 2 and 2."]
    assert [r["output_1"] for r in rows] == ["Red.", "Four."]
    assert (rows[0]["generator_1"], rows[0]["generator_2"]) == ("base", "mine")
    assert summary["n_pairs"] == 2
    assert summary["n_failures"] == sum(r["preference"] is None for r in rows)
    before = tiny_server.app.state.stats.requests
    table = CliRunner().invoke(app, args[:-1])  # the same run, printed as a table, from the cache
    assert table.exit_code == 0, table.output
    assert "LC win rate" in table.stdout and "failures" in table.stdout
    assert tiny_server.app.state.stats.requests == before
    assert json.loads(out.read_text()) == rows
    missing = CliRunner().invoke(app, ["eval", "judge", "--outputs", str(tmp_path / "m.json"), "-o", str(out)])
    assert missing.exit_code == 1 and "--reference" in missing.output


@pytest.mark.parametrize(
    "text,position",
    [
        ("The model whose output is better is m.", 1.0),
        ("The output of the model whose output is better is M.", 2.0),
        ("Answer: M", 2.0),
        ("The better one is `m`!", 1.0),
        ("The model whose output is better is m. No wait, it is M.", 2.0),  # the last word counts
    ],
)
def test_a_sentence_ending_in_the_identifier_is_a_verdict(text, position):
    # small judges (SmolLM2-135M) answer the identifier prompt in a sentence like these
    from instillm.evaluate.judge import parse_verdict

    assert parse_verdict(text).preference == position


@pytest.mark.parametrize(
    "text",
    [
        "The leaderboard of the game is a game called kickball",
        "I'm glad you asked: M is a letter, m too.",
        "The model whose output is better is m.\nThe model whose output is better is M.",
    ],
)
def test_sentences_without_one_identifier_are_not_verdicts(text):
    from instillm.evaluate.judge import parse_verdict

    assert parse_verdict(text).preference is None


@pytest.mark.parametrize(
    "text",
    [
        "Model m is better than model M.",  # ends in M, but M is the loser
        "m is better. The worse one is M.",  # the last sentence names the loser
        "M is better, so the worse answer is m.",
    ],
)
def test_a_sentence_naming_an_identifier_that_is_not_its_verdict_is_a_parse_failure(text):
    v = parse_verdict(text)
    assert v.preference is None and "unclear" in v.error
    row = annotation_row("q", "ref", "mine", "ref", "mine", "judge", (text, "M"))
    assert row["preference"] is None and row["order_preferences"] == [None, 1.0]
    assert summarize([row]).failure_modes.n_failed_orders == 1


@pytest.mark.parametrize(
    "text,position",
    [
        ("I'm sure the model whose output is better is M.", 2.0),  # the m of "I'm" names nothing
        ("Which is better, m or M? The better one is m.", 1.0),  # a question names no verdict
        ("The better one is M.\nM", 2.0),
    ],
)
def test_sentences_with_one_identifier_beside_other_text_are_still_verdicts(text, position):
    v = parse_verdict(text)
    assert v.error is None and v.preference == position
