"""Format converters on tiny handwritten fixtures: field mapping, detection, reasons, OpenAssistant paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from instillm.data.formats import (
    FORMATS,
    RowContext,
    convert_rows,
    detect_format,
    parse_transcript,
)
from instillm.data.io import RawRow, read_rows
from instillm.data.schema import Example
from instillm.errors import RowError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"

EXPECTED_FORMAT = {
    "alpaca.jsonl": "alpaca",
    "alpaca_eval.json": "alpaca",
    "dolly.jsonl": "dolly",
    "sharegpt.json": "sharegpt",
    "openai.jsonl": "openai",
    "canonical.jsonl": "openai",
    "oasst_tree.jsonl": "oasst",
    "oasst_message.jsonl": "oasst",
    "oasst_flat.jsonl": "oasst",
    "hh.jsonl": "hh",
    "openorca.jsonl": "openorca",
    "flan.jsonl": "flan",
    "ag_news_classify.jsonl": "prompt_completion",
    "self_instruct.jsonl": "self_instruct",
    "mt_bench_question.jsonl": "mt_bench",
}


def convert(name: str, fmt: str | None = None, all_paths: bool = False) -> list[Example]:
    """All examples of a fixture file; fails the test on any rejected row."""
    path = FIXTURES / name
    fmt = fmt or EXPECTED_FORMAT[name]
    units = list(convert_rows(read_rows(path), fmt, RowContext.for_file(str(path), all_paths)))
    errors = [(u.rows[0].line, u.error) for u in units if u.error]
    assert not errors, errors
    return [ex for u in units for ex in u.examples]


def turns(ex: Example) -> list[tuple[str, str]]:
    """(role, content) pairs of an example."""
    return [(m.role, m.content) for m in ex.messages]


def ctx(all_paths: bool = False) -> RowContext:
    """A context for converter unit tests."""
    return RowContext.for_file("data/my_set.jsonl", all_paths).at(7)


@pytest.mark.parametrize("name", sorted(EXPECTED_FORMAT))
def test_auto_detection_equals_explicit_format(name: str) -> None:
    rows = [r.record for r in read_rows(FIXTURES / name)]
    assert {detect_format(r) for r in rows} == {EXPECTED_FORMAT[name]}


def test_detect_unknown_format_lists_the_keys() -> None:
    with pytest.raises(RowError) as e:
        detect_format({"foo": 1, "bar": 2})
    assert e.value.reason == "unknown_format"
    assert "['bar', 'foo']" in e.value.detail


def test_alpaca_input_joins_instruction_and_sets_meta() -> None:
    plain, with_input, evol = convert("alpaca.jsonl")
    assert turns(plain) == [
        ("user", "Give three tips for staying healthy."),
        ("assistant", "Eat well, sleep, and exercise."),
    ]
    assert plain.meta == {}
    assert with_input.messages[0].content == "Translate to French.\n\nGood morning"
    assert with_input.meta == {"instruction": "Translate to French.", "input": "Good morning"}
    assert turns(evol)[0] == ("user", "Name a prime number above 10.")
    assert [e.id for e in (plain, with_input, evol)] == ["alpaca-1", "alpaca-2", "alpaca-3"]
    assert plain.source == "alpaca.jsonl" and plain.task == "alpaca"


def test_alpaca_eval_outputs_keep_generator_and_dataset() -> None:
    first, _ = convert("alpaca_eval.json")
    assert first.category == "helpful_base"
    assert first.meta == {"generator": "gpt4", "dataset": "helpful_base"}
    assert first.id == "alpaca_eval-1"


def test_dolly_context_is_input_and_category_is_kept() -> None:
    with_ctx, no_ctx = convert("dolly.jsonl")
    assert with_ctx.messages[0].content.endswith("\n\nVirgin Australia commenced services on 31 August 2000.")
    assert with_ctx.meta["input"].startswith("Virgin Australia")
    assert with_ctx.category == "closed_qa"
    assert no_ctx.meta == {} and no_ctx.category == "classification"


def test_sharegpt_maps_roles_and_system_turn() -> None:
    a, b = convert("sharegpt.json")
    assert [m.role for m in a.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert a.meta == {"id": "conv_a"}
    assert turns(b) == [("user", "2+2?"), ("assistant", "4")]


def test_sharegpt_unknown_role() -> None:
    rec = {"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]}
    with pytest.raises(RowError) as e:
        FORMATS["sharegpt"](rec, ctx())
    assert e.value.reason == "unknown_role" and "narrator" in e.value.detail


def test_openai_parts_weight_developer_and_extras() -> None:
    simple, rich = convert("openai.jsonl")
    assert [m.role for m in simple.messages] == ["system", "user", "assistant"]
    assert simple.id == "openai-1" and simple.task == "openai"
    assert rich.messages[0].role == "system"
    assert rich.messages[1].content == "What is 1+1?"
    assert [m.trained for m in rich.messages] == [False, False, False, False, True]
    assert rich.meta == {"prompt_id": "p-7"}


def test_canonical_rows_round_trip_unchanged() -> None:
    (ex,) = convert("canonical.jsonl")
    assert ex.id == "keep-me" and ex.source == "orig.jsonl" and ex.task == "greet" and ex.category == "chat"
    assert ex.meta == {"k": 1}
    assert [m.trained for m in ex.messages] == [False, False, False, True]


BEST = [
    ("user", "What is a good first pet?"),
    ("assistant", "A cat is a good first pet."),
    ("user", "How do I feed it?"),
    ("assistant", "Twice a day with cat food."),
]


@pytest.mark.parametrize("name", ["oasst_tree.jsonl", "oasst_message.jsonl", "oasst_flat.jsonl"])
def test_oasst_best_path_in_every_layout(name: str) -> None:
    first, second = convert(name)
    # rank 0 beats the unranked first reply, the deleted rank -1 reply is skipped,
    # the unranked tie between the two follow-ups goes to the first one.
    assert turns(first) == BEST
    assert first.meta["message_tree_id"] == "P0"
    assert first.meta["message_ids"] == ["P0", "A0", "P1", "A2"]
    assert first.id == f"{Path(name).stem}-1"
    assert turns(second) == [("user", "Say hello."), ("assistant", "Hello!")]


@pytest.mark.parametrize("name", ["oasst_tree.jsonl", "oasst_message.jsonl", "oasst_flat.jsonl"])
def test_oasst_all_paths_end_on_answers(name: str) -> None:
    examples = convert(name, all_paths=True)
    paths = [e.meta["message_ids"] for e in examples if e.meta["message_tree_id"] == "P0"]
    # Prompter leaves (P3, P2) are dropped; the deleted answer yields no path.
    assert sorted(paths) == sorted([["P0", "A1"], ["P0", "A0", "P1", "A2"], ["P0", "A0"], ["P0", "A3"]])
    assert all(e.messages[-1].role == "assistant" for e in examples)
    ids = {e.id for e in examples if e.meta["message_tree_id"] == "P0"}
    assert ids == {f"{Path(name).stem}-1-{k}" for k in range(4)}


def test_oasst_prompt_without_answer_is_no_response() -> None:
    rec = {"message_id": "X", "parent_id": None, "role": "prompter", "text": "Hello?", "replies": []}
    with pytest.raises(RowError) as e:
        FORMATS["oasst"](rec, ctx())
    assert e.value.reason == "no_response"


def test_oasst_unknown_role() -> None:
    rec = {
        "message_id": "X",
        "parent_id": None,
        "role": "prompter",
        "text": "Hi",
        "replies": [{"message_id": "Y", "role": "moderator", "text": "?", "replies": []}],
    }
    with pytest.raises(RowError) as e:
        FORMATS["oasst"](rec, ctx())
    assert e.value.reason == "unknown_role"


def flat(mid: str, parent: str | None, role: str, tree: str = "T") -> dict:
    """A flat OpenAssistant message row."""
    return {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role, "text": mid, "rank": 0}


def units_of(records: list[dict]):
    rows = [RawRow("f.jsonl", i, r, "") for i, r in enumerate(records, 1)]
    return list(convert_rows(rows, "oasst", RowContext.for_file("f.jsonl")))


def test_oasst_flat_orphans_and_split_trees_are_rejected_row_by_row() -> None:
    units = units_of(
        [
            flat("T", None, "prompter"),
            flat("a", "T", "assistant"),
            flat("o", "missing", "assistant"),
            flat("U", None, "prompter", "U"),
            flat("b", "U", "assistant", "U"),
            flat("late", "T", "assistant"),
        ]
    )
    by_line = {r.line: u for u in units for r in u.rows}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 6]  # every row accounted for exactly once
    assert by_line[1] is by_line[2] and by_line[1].error is None and len(by_line[1].examples) == 1
    assert by_line[3].error.reason == "orphan_message"
    assert by_line[6].error.reason == "split_tree"
    assert by_line[4].examples[0].id == "f-4"


def test_oasst_flat_tree_without_root() -> None:
    (unit,) = units_of([flat("a", "gone", "assistant"), flat("b", "a", "prompter")])
    assert unit.error.reason == "missing_root" and len(unit.rows) == 2


def test_hh_trains_on_chosen_and_keeps_rejected() -> None:
    first, second = convert("hh.jsonl")
    assert turns(first) == [
        ("user", "How do I bake bread?"),
        ("assistant", "Mix flour, water, yeast and salt, then bake."),
        ("user", "How long?"),
        ("assistant", "About 35 minutes."),
    ]
    assert first.meta["rejected"].endswith("No idea.")
    assert second.meta["rejected"].startswith("\n\nHuman: Tell me a joke.")


@pytest.mark.parametrize(
    "text,reason",
    [
        ("\n\nHuman: hi\n\nAssistant: ", "empty_response"),
        ("\n\nHuman: hi\n\nAssistant: a\n\nAssistant: b", "non_alternating_turns"),
        ("preamble\n\nHuman: hi\n\nAssistant: yo", "malformed_transcript"),
        ("just text", "malformed_transcript"),
    ],
)
def test_hh_bad_transcripts(text: str, reason: str) -> None:
    with pytest.raises(RowError) as e:
        FORMATS["hh"]({"chosen": text, "rejected": ""}, ctx())
    assert e.value.reason == reason


def test_parse_transcript_without_leading_newlines() -> None:
    assert [(m.role, m.content) for m in parse_transcript("Human: a\n\nAssistant: b")] == [
        ("user", "a"),
        ("assistant", "b"),
    ]


def test_openorca_system_prompt() -> None:
    with_sys, without = convert("openorca.jsonl")
    assert turns(with_sys)[0] == ("system", "You are an AI assistant.")
    assert with_sys.meta == {"id": "niv.1"}
    assert [m.role for m in without.messages] == ["user", "assistant"]


def test_flan_task_template_and_cot() -> None:
    zs, cot = convert("flan.jsonl")
    assert zs.task == "anli_r1" and zs.meta == {"template_type": "zs_opt"} and zs.category == ""
    assert cot.task == "gsm8k" and cot.category == "cot"


def test_prompt_completion_strips_only_the_marker() -> None:
    first, second = convert("ag_news_classify.jsonl")
    assert turns(first) == [
        ("user", "What label best describes this news article?\nStocks rally on Friday.\n"),
        ("assistant", "Business"),
    ]
    assert second.messages[1].content == " Sports\n"
    assert first.task == "ag_news_classify" and first.id == "ag_news_classify-1"


def test_prompt_completion_empty_after_marker() -> None:
    with pytest.raises(RowError) as e:
        FORMATS["prompt_completion"]({"prompt": "Q?\n", "completion": "<|endoftext|>"}, ctx())
    assert e.value.reason == "empty_response"


def test_self_instruct_one_example_per_instance() -> None:
    one, pos, neg, user = convert("self_instruct.jsonl")
    assert one.id == "self_instruct-1" and one.task == "antonym"
    assert one.meta == {
        "task_id": "seed_task_0",
        "is_classification": False,
        "instruction": "Give the antonym.",
        "input": "hot",
        "instance": 0,
    }
    assert (pos.id, neg.id) == ("self_instruct-2-0", "self_instruct-2-1")
    assert neg.messages[0].content == "Classify the sentiment.\n\nI hate it" and neg.meta["instance"] == 1
    assert user.category == "Grammarly" and user.task == "user_oriented_task_0"
    assert user.messages[0].content == "Write a haiku about rain."


def test_self_instruct_task_without_valid_instance_is_rejected() -> None:
    rec = {"name": "t", "instruction": "Do it.", "instances": [{"input": "x", "output": ""}]}
    with pytest.raises(RowError) as e:
        FORMATS["self_instruct"](rec, ctx())
    assert e.value.reason == "empty_response"
    partial = FORMATS["self_instruct"]({**rec, "instances": [{"output": ""}, {"output": "ok"}]}, ctx())
    assert [e.id for e in partial] == ["my_set-7-1"]
    invalid = partial[0].meta["invalid_instances"]  # the dropped sibling is recorded, not lost
    assert [(x["instance"], x["reason"]) for x in invalid] == [(0, "empty_response")]


def test_mt_bench_inline_reference_and_no_answer() -> None:
    path = FIXTURES / "mt_bench_question.jsonl"
    units = list(convert_rows(read_rows(path), "mt_bench", RowContext.for_file(str(path))))
    assert units[0].error.reason == "no_response"
    (ex,) = units[1].examples
    assert turns(ex) == [
        ("user", "I overtake the second person. My place?"),
        ("assistant", "Second."),
        ("user", "And the last person?"),
        ("assistant", "Impossible."),
    ]
    assert ex.category == "reasoning" and ex.task == "mt_bench" and ex.meta["question_id"] == 101


@pytest.mark.parametrize(
    "fmt,rec,reason",
    [
        ("alpaca", {"instruction": "x"}, "missing_field"),
        ("alpaca", {"instruction": "x", "output": None}, "missing_field"),
        ("alpaca", {"instruction": "x", "output": 3}, "wrong_type"),
        ("alpaca", {"instruction": "x", "output": "   "}, "empty_response"),
        ("alpaca", {"instruction": "", "output": "y"}, "empty_prompt"),
        ("dolly", {"instruction": "x", "context": ["a"], "response": "y"}, "wrong_type"),
        ("sharegpt", {"conversations": "hi"}, "wrong_type"),
        ("sharegpt", {"conversations": [{"from": "human"}]}, "missing_field"),
        (
            "sharegpt",
            {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
            "non_alternating_turns",
        ),
        ("sharegpt", {"conversations": [{"from": "human", "value": "a"}]}, "no_response"),
        ("openai", {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}, "unknown_role"),
        ("openai", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}]}, "wrong_type"),
        ("openorca", {"question": "q"}, "missing_field"),
        ("flan", {"inputs": "q", "targets": ""}, "empty_response"),
        ("self_instruct", {"instruction": "x", "instances": {}}, "wrong_type"),
        ("mt_bench", {"question_id": 1, "turns": ["a", 2], "reference": ["b", "c"]}, "wrong_type"),
    ],
)
def test_converter_reasons(fmt: str, rec: dict, reason: str) -> None:
    with pytest.raises(RowError) as e:
        FORMATS[fmt](rec, ctx())
    assert e.value.reason == reason


def test_unexpected_nesting_is_a_reject_not_a_crash() -> None:
    row = RawRow("f.jsonl", 1, {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}, "x"]}]}, "")
    (unit,) = convert_rows([row], "openai", RowContext.for_file("f.jsonl"))
    assert unit.error is not None and unit.error.reason == "wrong_type"
