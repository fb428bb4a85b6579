"""The canonical example: validation reasons, defaults, round trip."""

from __future__ import annotations

import pytest

from instillm.data.schema import Example, Message, from_prompt_completion
from instillm.errors import RowError


def reason(row) -> str:
    with pytest.raises(RowError) as e:
        Example.from_dict(row)
    return e.value.reason


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_round_trip_and_defaults():
    row = {
        "id": "x1",
        "source": "f.jsonl",
        "task": "t",
        "category": "c",
        "meta": {"k": 1},
        "messages": msgs(("system", "s"), ("user", "u"), ("assistant", "a")),
    }
    ex = Example.from_dict(row)
    assert ex.to_dict() == row
    assert Example.from_dict(ex.to_dict()) == ex
    assert [m.trained for m in ex.messages] == [False, False, True]
    assert ex.reference == "a" and len(ex.prompt_messages) == 2


def test_train_flag_and_content_id():
    row = {
        "messages": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a", "train": False},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"},
        ]
    }
    ex = Example.from_dict(row)
    assert [m.trained for m in ex.messages if m.role == "assistant"] == [False, True]
    assert ex.to_dict()["messages"][1]["train"] is False
    assert len(ex.id) == 16 and Example.from_dict(row).id == ex.id


@pytest.mark.parametrize(
    "row,expected",
    [
        ([1, 2], "not_an_object"),
        ({"id": "x"}, "missing_field"),
        ({"messages": "hi"}, "wrong_type"),
        ({"messages": [{"role": "user"}]}, "missing_field"),
        ({"messages": [{"role": "user", "content": 3}]}, "wrong_type"),
        ({"messages": msgs(("user", "u"), ("assistant", "a")), "bogus": 1}, "unknown_field"),
        ({"messages": msgs(("user", "u"), ("bot", "a"))}, "unknown_role"),
        ({"messages": msgs(("user", "u"), ("user", "a"))}, "non_alternating_turns"),
        (
            {
                "messages": msgs(
                    ("assistant", "a"),
                )
            },
            "non_alternating_turns",
        ),
        ({"messages": msgs(("user", "u"), ("system", "s"), ("assistant", "a"))}, "non_alternating_turns"),
        ({"messages": msgs(("user", "u"), ("assistant", "  "))}, "empty_response"),
        ({"messages": msgs(("user", ""), ("assistant", "a"))}, "empty_prompt"),
        (
            {
                "messages": msgs(
                    ("user", "u"),
                )
            },
            "no_response",
        ),
        ({"messages": []}, "empty_conversation"),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "train": False}]},
            "nothing_to_train",
        ),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "train": "yes"}]},
            "wrong_type",
        ),
    ],
)
def test_validation_reasons(row, expected):
    assert reason(row) == expected


def test_prompt_completion_maps_into_messages():
    ex = from_prompt_completion("Q?", "A.", system="S", task="t")
    assert [(m.role, m.content) for m in ex.messages] == [("system", "S"), ("user", "Q?"), ("assistant", "A.")]
    assert ex.task == "t"


def test_direct_construction_validates():
    with pytest.raises(RowError):
        Example(messages=(Message("user", "u"),))
