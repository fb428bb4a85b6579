"""Strict types and invalid Unicode: 400s naming the field, never a 500 or a silent coercion."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.timeout(30)
MSGS = [{"role": "user", "content": "hi"}]

NOT_INTEGERS = [
    ("max_tokens", "5"),
    ("max_tokens", True),
    ("max_tokens", 5.0),
    ("n", True),
    ("n", "2"),
    ("seed", "1"),
    ("seed", False),
    ("max_completion_tokens", "3"),
]


@pytest.mark.parametrize("field,value", NOT_INTEGERS, ids=[f"{f}={v!r}" for f, v in NOT_INTEGERS])
def test_integers_must_be_integers(limited, field, value):
    body = {"model": "tiny", "messages": MSGS, field: value}
    r = httpx.post(limited.url + "/chat/completions", json=body, timeout=20)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "field,value", [("stream", "true"), ("stream", 1), ("temperature", "0.5"), ("temperature", True)]
)
def test_booleans_and_numbers_are_not_coerced(limited, field, value):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 2, field: value}
    r = httpx.post(limited.url + "/chat/completions", json=body, timeout=20)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_an_integer_temperature_is_a_number(limited):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 2, "temperature": 0, "top_p": 1}
    assert httpx.post(limited.url + "/chat/completions", json=body, timeout=20).status_code == 200


SURROGATES = [
    (
        '{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        "/chat/completions",
        "messages.0.content",
    ),
    ('{"model": "tiny", "max_tokens": 2, "prompt": ["ok", "\\udfff"]}', "/completions", "prompt.1"),
    ('{"model": "tiny", "max_tokens": 2, "prompt": "x", "stop": "\\ud800"}', "/completions", "stop"),
]


@pytest.mark.parametrize("raw,path,field", SURROGATES, ids=[s[2] for s in SURROGATES])
def test_a_lone_surrogate_is_400_naming_the_field(limited, raw, path, field):
    r = httpx.post(limited.url + path, content=raw.encode(), headers={"Content-Type": "application/json"}, timeout=20)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"] and "surrogate" in err["message"]


def test_invalid_json_and_invalid_utf8_are_400(limited):
    for raw in (b'{"model": "tiny",', b'{"model": "tiny\xff"}', b"[1, 2]"):
        r = httpx.post(
            limited.url + "/completions", content=raw, headers={"Content-Type": "application/json"}, timeout=20
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
