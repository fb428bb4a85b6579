"""Quality scoring: IFD against a hand computation and a trained model, the rating parser, selection, files, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from instillm.curate.score import (
    IFDConfig,
    IFDScore,
    IFDScorer,
    RatingConfig,
    RowScores,
    ScoreConfig,
    parse_rating,
    rating_fields,
    rating_request,
    score_file,
    select,
)
from instillm.data.importer import read_examples, write_examples
from instillm.data.render import IGNORE_INDEX, Renderer
from instillm.data.schema import Example, Message
from instillm.errors import ConfigError, DataError, RowError
from instillm.llm.backend import BackendConfig
from instillm.models.loading import load_model, load_tokenizer

torch.set_num_threads(1)


def _ex(*turns: str, system: str | None = None, **fields) -> Example:
    msgs = [Message("system", system)] if system else []
    msgs += [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    return Example(messages=tuple(msgs), **fields)


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path) -> IFDScorer:
    config = IFDConfig(model=str(tiny_model_dir), max_length=96, batch_size=4)
    return IFDScorer(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), config)


# --------------------------------------------------------------------------------------------
# IFD


def _hand_loss(model, tok, prompt: str, response: str) -> float:
    """Mean CE of `response` after `prompt`, from a plain forward pass (no instillm rendering)."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (L, V)
    return -sum(logp[len(p) + j - 1, tok_id].item() for j, tok_id in enumerate(r)) / len(r)


def test_ifd_equals_a_hand_computation(scorer):
    model, tok = scorer.model, scorer.tokenizer
    question, answer = "Repeat after me: the quick brown fox", "the quick brown fox"
    got = scorer.score([_ex(question, answer)])[0]
    # chatml as the tiny model's template writes it; trained tokens = answer + <|im_end|>
    cond = _hand_loss(
        model, tok, f"<s><|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", answer + "<|im_end|>"
    )
    direct = _hand_loss(model, tok, "<s><|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n", answer + "<|im_end|>")
    assert got.n_tokens == len(tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"])
    assert got.conditioned_loss == pytest.approx(cond, abs=1e-5)
    assert got.direct_loss == pytest.approx(direct, abs=1e-5)
    assert got.ifd == pytest.approx(cond / direct, abs=1e-5)
    assert not got.truncated


def test_multi_turn_scores_the_last_turn_only(scorer):
    tok = scorer.tokenizer
    ex = _ex("Say hi.", "hi there my friend", "Now say bye.", "bye", system="Be brief.")
    (ids, labels), (d_ids, d_labels), _ = scorer.sequences(ex)
    scored = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.decode(scored) == "bye<|im_end|>"
    assert [i for i, lab in zip(d_ids, d_labels) if lab != IGNORE_INDEX] == scored
    assert "Be brief" not in tok.decode(d_ids) and "hi there" not in tok.decode(d_ids)


def test_batched_equals_one_by_one(tiny_model_dir: Path, scorer):
    examples = [
        _ex("Name a color.", "red"),
        _ex("Write a long sentence about the sea and the wind.", "The sea is wide and the wind is strong today."),
        _ex("Hi.", "Hello, how can I help?", "Count to five.", "one two three four five"),
        _ex("x", "y"),
        _ex("Translate 'chat' to English.", "cat"),
    ]
    batched = scorer.score(examples)
    single = IFDScorer(
        scorer.model, scorer.tokenizer, IFDConfig(model=str(tiny_model_dir), max_length=96, batch_size=1)
    )
    one_by_one = [single.score([ex])[0] for ex in examples]
    for b, s in zip(batched, one_by_one):
        assert b.n_tokens == s.n_tokens
        assert b.conditioned_loss == pytest.approx(s.conditioned_loss, abs=1e-5)
        assert b.direct_loss == pytest.approx(s.direct_loss, abs=1e-5)


def test_too_long_rows_are_errors_and_prompt_truncation_is_flagged(scorer):
    long_prompt, long_answer = _ex("word " * 200, "ok"), _ex("ok", "word " * 200)
    cut, too_long = scorer.score([long_prompt, long_answer])
    assert isinstance(cut, IFDScore) and cut.truncated
    assert isinstance(too_long, RowError) and too_long.reason == "too_long"
    drop = IFDScorer(scorer.model, scorer.tokenizer, IFDConfig(model="m", max_length=96, truncation="drop"))
    assert drop.score([long_prompt])[0].reason == "too_long"


PAIRS = {
    "Name a color.": "red green blue",
    "Name an animal.": "cat dog horse",
    "Name a fruit.": "apple pear plum",
    "Name a number.": "one two three",
}


def _train(model, tok, examples, steps: int, lr: float) -> float:
    """Real AdamW steps on the response-only loss training uses; returns the last loss."""
    from instillm.train.loss import token_loss_sum

    rendered = [Renderer(tok).render(ex) for ex in examples]
    width = max(len(r) for r in rendered)
    ids = torch.full((len(rendered), width), tok.pad_token_id)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rendered):
        ids[i, : len(r)], labels[i, : len(r)], mask[i, : len(r)] = torch.tensor(r.input_ids), torch.tensor(r.labels), 1
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss_sum, n = token_loss_sum(model, ids, labels, mask)
        loss = loss_sum / n
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def test_an_instruction_that_predicts_the_response_gives_low_ifd(tiny_model_dir: Path):
    """Train a tiny model on instruction -> fixed answer; matched pairs get IFD < 1, swapped ones higher.

    The same response is scored under its own and under another instruction, so its direct loss is
    identical and only the instruction's help differs.
    """
    torch.manual_seed(0)
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    questions, answers = list(PAIRS), list(PAIRS.values())
    assert _train(model, tok, [_ex(q, a) for q, a in PAIRS.items()], steps=100, lr=3e-3) < 0.1
    scorer = IFDScorer(model, tok, IFDConfig(model=str(tiny_model_dir)))
    matched = scorer.score([_ex(q, a) for q, a in PAIRS.items()])
    swapped = scorer.score([_ex(questions[(i + 1) % 4], a) for i, a in enumerate(answers)])
    assert all(m.ifd < 0.5 for m in matched), [m.ifd for m in matched]
    for m, s in zip(matched, swapped):
        assert m.direct_loss == pytest.approx(s.direct_loss, abs=1e-6)
        assert s.ifd > m.ifd
    assert sum(s.ifd for s in swapped) / 4 > 1


# --------------------------------------------------------------------------------------------
# rating


@pytest.mark.parametrize(
    "text,rating",
    [
        ("4.5\nThe response is accurate and complete.", 4.5),
        ("5", 5.0),
        ("Score: 3\nIt misses one step.", 3.0),
        ("**4**\n\nExplanation: good.", 4.0),
        ("4/5\nmostly right", 4.0),
        ("4 out of 5", 4.0),
        ("The answer lists 2 reasons correctly. Score: 4", 4.0),  # a labelled score beats the first number
        ("I would rate this response a 3 because it is vague.", 3.0),  # first number anywhere
        ("The score is 2.5, since half of it is wrong.", 2.5),
        ("Step 1 is right, step 2 is not.\nRating: 3.5", 3.5),
        ("0\nCompletely wrong.", 0.0),
        ("7\nGreat answer.", None),  # out of the 0..5 scale
        ("8/10", None),
        ("-1", None),
        ("The response has 12 steps, I give it 4.", None),  # first number 12 is out of range: no later one is tried
        ("Excellent, accurate answer.", None),
        ("", None),
        ("ⅷ ⅸ qq zzz 3d", None),  # "3d" is a word, not a number
    ],
)
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


def test_rating_prompt_fields():
    alpaca = _ex(
        "Summarize.\n\nThe cat sat on the mat.",
        "A cat sat.",
        meta={"instruction": "Summarize.", "input": "The cat sat on the mat."},
    )
    assert rating_fields(alpaca) == ("Summarize.", "The cat sat on the mat.", "A cat sat.")
    assert rating_fields(_ex("Name a color.", "red")) == ("Name a color.", "", "red")
    inst, inp, resp = rating_fields(_ex("Hi.", "Hello!", "Say bye.", "bye", system="Be brief."))
    assert inst == "System: Be brief.\n\nUser: Hi.\n\nAssistant: Hello!\n\nUser: Say bye." and resp == "bye"
    req = rating_request(alpaca, max_tokens=32)
    assert req.messages[0]["role"] == "system" and "feedback on the performance" in req.messages[0]["content"]
    assert "### Input:\nThe cat sat on the mat.\n\n### Response:\nA cat sat.\n\n" in req.messages[1]["content"]
    assert "scale of 0 to 5" in req.messages[1]["content"]
    assert req.params.temperature == 0 and req.params.max_tokens == 32


def test_rating_end_to_end_against_a_served_model(tmp_path: Path, tiny_server):
    rows = [_ex(f"Give me fact number {i} about the sea.", f"The sea covers fact {i}.") for i in range(6)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_examples(rows, inp)
    backend = BackendConfig(
        kind="openai",
        model=tiny_server.model,
        base_url=tiny_server.base_url,
        api_key=tiny_server.api_key,
        cache=str(tmp_path / "cache"),
    )
    config = ScoreConfig(rating=RatingConfig(backend=backend, max_tokens=12), min_rating=4.5)
    summary = score_file(inp, out, config)
    cur = summary.curation
    assert summary.n_rated == 6 and cur.n_in == 6
    assert cur.n_kept + cur.n_rejected == 6
    assert set(cur.rejected_by_reason) <= {"rating_unparseable", "rating_below_min"}
    assert cur.rejected_by_reason.get("rating_unparseable", 0) == summary.n_rating_unparseable
    kept = list(read_examples(out))
    assert all(ex.meta["rating"] >= 4.5 and parse_rating(ex.meta["rating_raw"]) == ex.meta["rating"] for ex in kept)
    rejects = [json.loads(line) for line in cur.rejects_path.read_text().splitlines()]
    assert len(rejects) == cur.n_rejected and all(r["file"] == str(inp) for r in rejects)
    # without a threshold every row is kept, unreadable ratings as None; the cache answers the same
    again = score_file(inp, tmp_path / "all.jsonl", ScoreConfig(rating=config.rating))
    assert again.curation.n_kept == 6 and again.n_rating_unparseable == summary.n_rating_unparseable
    assert (
        sum(ex.meta["rating"] is None for ex in read_examples(tmp_path / "all.jsonl")) == summary.n_rating_unparseable
    )


# --------------------------------------------------------------------------------------------
# selection


def _row(
    line: int, ifd: float | None = None, rating: float | None = None, rated: bool = False, error: str | None = None
) -> RowScores:
    score = None if ifd is None else IFDScore(conditioned_loss=ifd, direct_loss=1.0, n_tokens=3)
    return RowScores(
        line,
        ifd=score,
        error=RowError(error) if error else None,
        rated=rated or rating is not None,
        rating=rating,
        rating_raw=str(rating),
    )


IFD_ONLY = IFDConfig(model="m")
JUDGE = RatingConfig(backend=BackendConfig(model="j", base_url="http://127.0.0.1:1/v1"))


def _reasons(rows, **kw) -> dict[int, str | None]:
    return {line: (e.reason if e else None) for line, e in select(rows, ScoreConfig(**kw)).items()}


def test_selection_thresholds():
    rows = [_row(1, 0.5), _row(2, 1.0), _row(3, 1.2), _row(4, error="too_long"), _row(5, 0.0)]
    assert _reasons(rows, ifd=IFD_ONLY) == {1: None, 2: None, 3: "ifd_above_max", 4: "too_long", 5: None}
    assert _reasons(rows, ifd=IFD_ONLY, max_ifd=None)[3] is None
    rated = [_row(1, rating=4.5), _row(2, rating=4.4), _row(3, rated=True), _row(4, rating=5.0)]
    assert _reasons(rated, rating=JUDGE, min_rating=4.5) == {
        1: None,
        2: "rating_below_min",
        3: "rating_unparseable",
        4: None,
    }
    assert _reasons(rated, rating=JUDGE) == {1: None, 2: None, 3: None, 4: None}


def test_top_selection_keeps_highest_ifd_below_max():
    rows = [_row(1, 0.2), _row(2, 0.9), _row(3, 1.5), _row(4, 0.7), _row(5, 0.9), _row(6, 0.1)]
    got = _reasons(rows, ifd=IFD_ONLY, top_fraction=0.4)  # 5 candidates -> floor(2.0) = 2 kept
    assert got == {1: "not_in_top", 2: None, 3: "ifd_above_max", 4: "not_in_top", 5: None, 6: "not_in_top"}
    got = _reasons(rows, ifd=IFD_ONLY, top_k=1)  # tie 0.9 at lines 2 and 5: the earlier line wins
    assert [line for line, r in got.items() if r is None] == [2]
    assert _reasons(rows, ifd=IFD_ONLY, top_k=50)[1] is None
    both = [_row(1, 0.9, rating=3.0), _row(2, 0.8, rating=5.0), _row(3, 0.3, rating=5.0)]
    got = _reasons(both, ifd=IFD_ONLY, rating=JUDGE, min_rating=4.5, top_k=1)
    assert got == {1: "rating_below_min", 2: None, 3: "not_in_top"}


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"rating": JUDGE, "top_k": 3},
        {"ifd": IFD_ONLY, "min_rating": 4.5},
        {"ifd": IFD_ONLY, "top_k": 2, "top_fraction": 0.5},
        {"ifd": IFD_ONLY, "top_fraction": 1.5},
        {"rating": JUDGE, "min_rating": 7.0},
        {"ifd": IFD_ONLY, "max_ifd": 0},
    ],
)
def test_bad_settings_are_config_errors(kw):
    with pytest.raises(ConfigError):
        ScoreConfig(**kw)


def test_ifd_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="ifd.truncation"):
        IFDConfig(model="m", truncation="error")
    with pytest.raises(ConfigError, match="max_length"):
        IFDConfig(model="m", max_length=1)


# --------------------------------------------------------------------------------------------
# files and CLI


def _rows() -> list[Example]:
    return [
        _ex("Name a color.", "red"),
        _ex("Write two words.", "two words"),
        _ex("word " * 200, "ok"),  # prompt cut to fit 96 tokens
        _ex("ok", "word " * 200),  # response alone too long
        _ex("Hi.", "Hello!", "Say bye.", "bye bye"),
        _ex("Count to three.", "one two three"),
        _ex("Say yes.", "yes"),
    ]


def test_score_file_accounts_for_every_row(tmp_path: Path, tiny_model_dir: Path, scorer):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_examples(_rows(), inp)
    config = ScoreConfig(ifd=scorer.config, top_fraction=0.5)
    summary = score_file(inp, out, config, scorer=scorer)
    cur = summary.curation
    assert cur.n_in == 7 and cur.n_kept + cur.n_rejected == 7
    assert cur.rejected_by_reason["too_long"] == 1 and summary.n_truncated == 1 and summary.n_ifd_scored == 6
    n_candidates = 6 - cur.rejected_by_reason.get("ifd_above_max", 0)
    assert cur.n_kept == math.floor(0.5 * n_candidates)
    kept = list(read_examples(out))
    assert len(kept) == cur.n_kept
    for ex in kept:
        assert ex.meta["ifd"] == pytest.approx(ex.meta["ifd_conditioned_loss"] / ex.meta["ifd_direct_loss"])
        assert ex.meta["ifd"] <= 1.0 and "rating" not in ex.meta
    rejects = [json.loads(line) for line in cur.rejects_path.read_text().splitlines()]
    assert {r["line"] for r in rejects} | {_line_of(inp, ex) for ex in kept} == set(range(1, 8))
    worst_kept = min(ex.meta["ifd"] for ex in kept)
    for r in rejects:
        if r["reason"] == "not_in_top":
            assert float(r["detail"].split()[1]) <= worst_kept


def _line_of(path: Path, ex: Example) -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if json.loads(line)["id"] == ex.id:
            return i
    raise AssertionError(ex.id)


def test_score_file_bad_input_names_file_and_line(tmp_path: Path, scorer):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(_ex("a b c d", "e").to_dict()) + "\n{not json\n")
    with pytest.raises(DataError, match=r"in\.jsonl:2"):
        score_file(inp, tmp_path / "out.jsonl", ScoreConfig(ifd=scorer.config), scorer=scorer)
    with pytest.raises(DataError, match="overwrite"):
        score_file(inp, inp, ScoreConfig(ifd=scorer.config), scorer=scorer)


def test_cli_data_score(tmp_path: Path, tiny_model_dir: Path):
    from typer.testing import CliRunner

    from instillm.cli import app

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_examples(_rows(), inp)
    res = CliRunner().invoke(
        app,
        [
            "data",
            "score",
            str(inp),
            "-o",
            str(out),
            "--ifd-model",
            str(tiny_model_dir),
            "--max-length",
            "96",
            "--max-ifd",
            "5",
            "--top-k",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "kept 2 of 7" in res.output and "too_long: 1" in res.output and "not_in_top: 4" in res.output
    assert "truncated" in res.output
    assert len(list(read_examples(out))) == 2
    bad = CliRunner().invoke(app, ["data", "score", str(inp), "-o", str(out), "--min-rating", "4.5"])
    assert bad.exit_code == 1 and "min_rating" in bad.output


def test_cli_rate_caches_ratings_beside_the_output_by_default(tmp_path: Path, tiny_server):
    from typer.testing import CliRunner

    from instillm.cli import app

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_examples([_ex(f"Give me fact number {i} about the sea.", f"Fact {i}.") for i in range(3)], inp)
    args = ["data", "score", str(inp), "-o", str(out), "--rate", "--base-url", tiny_server.base_url]
    args += ["--model", tiny_server.model]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out.run" / "cache.sqlite").is_file()  # like self-instruct / evolve: OUT.run/cache.sqlite
    before = tiny_server.app.state.stats.requests
    again = CliRunner().invoke(app, args)  # a rerun (e.g. after a kill) is answered from the cache
    assert again.exit_code == 0, again.output
    assert tiny_server.app.state.stats.requests == before
