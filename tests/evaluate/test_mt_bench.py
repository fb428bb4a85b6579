"""MT-Bench: the published data and prompts, rating parsing, answer turns, grading end to end."""

from __future__ import annotations

import json

import pytest

from instillm.errors import DataError
from instillm.evaluate.mt_bench import (
    FAILED,
    GradeConfig,
    Question,
    generate_answers,
    judge_messages,
    judge_prompt_name,
    load_mt_bench,
    load_questions,
    local_responder,
    parse_rating,
    run_mt_bench,
    summarize,
    temperature_of,
    user_prompt,
)

FASTCHAT_JUDGMENT_KEYS = {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}


@pytest.fixture(scope="module")
def bench(shared_data):
    return load_mt_bench(shared_data / "mt_bench")


def test_loads_the_published_data(bench):
    qs = bench.questions
    assert len(qs) == 80 and all(len(q.turns) == 2 for q in qs)
    cats = {}
    for q in qs:
        cats[q.category] = cats.get(q.category, 0) + 1
    assert cats == {
        c: 10 for c in ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
    }
    need_ref = {q.question_id for q in qs if q.category in ("math", "reasoning", "coding")}
    assert need_ref <= set(bench.references) and len(need_ref) == 30
    assert all(len(bench.references[i]) == 2 for i in need_ref)
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} <= set(bench.prompts)
    assert bench.prompts["single-v1"].output_format == "[[rating]]"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is good. Rating: [[7]]", 7),
        ("Rating: [[10]]", 10),
        ("[[8.5]]", 8.5),
        ("Rating: [[6.]]", 6.0),
        ("Rating: [7]", 7),  # FastChat's fallback pattern
        ("Rating: [[5]] ... on reflection [[9]]", 5),  # the first match, as FastChat's re.search
        ("[3] is a citation; Rating: [[6]]", 6),  # "[[N]]" wins over the fallback
        ("Rating: [[1]]", 1),
    ],
)
def test_parse_rating(text, expected):
    got = parse_rating(text)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "Rating: 7",
        "Rating: [[seven]]",
        "[[ 7 ]]",
        "[[7/10]]",
        "Rating: [[0]]",
        "Rating: [[11]]",
        "\n\n\n\n",
        "the model scored -1",
    ],
)
def test_unparseable_rating_is_minus_one(text):
    assert parse_rating(text) == FAILED == -1


def _expected_single(bench, question, answer):
    # the published instruction text, then the question and answer blocks written out here
    instruction = bench.prompts["single-v1"].prompt_template.split("[Question]")[0]
    assert instruction.startswith("[Instruction]\nPlease act as an impartial judge")
    return (
        instruction
        + "[Question]\n"
        + question.turns[0]
        + "\n\n[The Start of Assistant's Answer]\n"
        + answer
        + "\n[The End of Assistant's Answer]"
    )


def test_single_prompt_is_the_published_template_filled_in(bench):
    q = next(q for q in bench.questions if q.question_id == 81)
    assert q.category == "writing" and judge_prompt_name(q.category, False) == "single-v1"
    prompt = bench.prompts["single-v1"]
    filled = user_prompt(prompt, q, ["My {trip} answer.", "A second one."], None, False)
    assert filled == _expected_single(bench, q, "My {trip} answer.")
    assert judge_messages(prompt, filled) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": filled},
    ]


def test_math_prompt_carries_the_reference_answer(bench):
    q = next(q for q in bench.questions if q.question_id == 111)
    ref = bench.references[111]
    assert q.category == "math" and judge_prompt_name(q.category, False) == "single-math-v1"
    filled = user_prompt(bench.prompts["single-math-v1"], q, ["Area 3.", "Circle."], ref, False)
    tail = (
        "[Question]\n"
        + q.turns[0]
        + "\n\n[The Start of Reference Answer]\n"
        + ref[0]
        + "\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\nArea 3.\n"
        "[The End of Assistant's Answer]"
    )
    assert filled.endswith(tail)
    assert (
        filled.startswith("[Instruction]\nPlease act as an impartial judge") and "correctness and helpfulness" in filled
    )


def test_multi_turn_prompts_show_the_whole_conversation(bench):
    q = next(q for q in bench.questions if q.question_id == 81)
    assert judge_prompt_name("writing", True) == "single-v1-multi-turn"
    filled = user_prompt(bench.prompts["single-v1-multi-turn"], q, ["ANS-1", "ANS-2"], None, True)
    assert filled == (
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n"
        + q.turns[0]
        + "\n\n### Assistant A:\nANS-1\n\n### User:\n"
        + q.turns[1]
        + "\n\n### Assistant A:\nANS-2\n\n<|The End of Assistant A's Conversation with User|>"
    )
    m = next(q for q in bench.questions if q.question_id == 111)
    ref = bench.references[111]
    assert judge_prompt_name("math", True) == "single-math-v1-multi-turn"
    filled = user_prompt(bench.prompts["single-math-v1-multi-turn"], m, ["A1", "A2"], ref, True)
    assert filled.startswith(
        "<|The Start of Reference Answer|>\n\n### User:\n"
        + m.turns[0]
        + "\n\n### Reference answer:\n"
        + ref[0]
        + "\n\n### User:\n"
        + m.turns[1]
        + "\n\n### Reference answer:\n"
        + ref[1]
        + "\n\n<|The End of Reference Answer|>"
    )
    assert filled.endswith("### Assistant A:\nA2\n\n<|The End of Assistant A's Conversation with User|>")
    system = judge_messages(bench.prompts["single-math-v1-multi-turn"], filled)[0]["content"]
    assert "focus on the assistant's answer to the second question" in system


def test_turn_two_sees_the_first_answer_and_category_temperatures():
    qs = [
        Question(1, "writing", ("Write a poem.", "Make it shorter.")),
        Question(2, "math", ("2+2?", "Times 3?")),
        Question(3, "stem", ("Why is the sky blue?",)),
    ]
    calls = []

    def respond(conversations, temperature):
        calls.append((temperature, [list(c) for c in conversations]))
        return [f"reply {len(c)} to {c[-1]['content']}" for c in conversations]

    rows = generate_answers(qs, respond, "m1")
    assert [r["choices"][0]["turns"] for r in rows] == [
        ["reply 1 to Write a poem.", "reply 3 to Make it shorter."],
        ["reply 1 to 2+2?", "reply 3 to Times 3?"],
        ["reply 1 to Why is the sky blue?"],
    ]
    turn2_poem = next(c for t, convs in calls for c in convs if len(c) == 3 and c[0]["content"] == "Write a poem.")
    assert turn2_poem == [
        {"role": "user", "content": "Write a poem."},
        {"role": "assistant", "content": "reply 1 to Write a poem."},
        {"role": "user", "content": "Make it shorter."},
    ]
    assert sorted({t for t, _ in calls}) == [0.0, 0.1, 0.7]
    assert temperature_of(qs[0]) == 0.7 and temperature_of(qs[0], greedy=True) == 0.0
    assert {r["model_id"] for r in rows} == {"m1"} and all(len(r["answer_id"]) == 22 for r in rows)
    calls.clear()
    generate_answers(qs, respond, "m1", greedy=True)
    assert {t for t, _ in calls} == {0.0}


def test_summary_excludes_and_counts_failures():
    qs = [Question(1, "writing", ("a", "b")), Question(2, "math", ("c", "d"))]
    rows = [
        {"question_id": 1, "model": "m", "judge": ["j", "single-v1"], "score": 8, "turn": 1},
        {"question_id": 1, "model": "m", "judge": ["j", "single-v1-multi-turn"], "score": -1, "turn": 2},
        {"question_id": 2, "model": "m", "judge": ["j", "single-math-v1"], "score": 4, "turn": 1},
        {"question_id": 2, "model": "m", "judge": ["j", "single-math-v1-multi-turn"], "score": 3, "turn": 2},
    ]
    s = summarize(rows, qs)
    assert s["score"] == pytest.approx(5.0) and s["n_failures"] == 1 and s["n_judgments"] == 4
    assert s["per_turn"]["1"] == {"score": 6.0, "n": 2, "n_failures": 0}
    assert s["per_turn"]["2"] == {"score": 3.0, "n": 1, "n_failures": 1}
    assert s["per_category"]["writing"] == {"score": 8.0, "n": 1, "n_failures": 1}
    assert s["per_category"]["math"]["score"] == pytest.approx(3.5)
    empty = summarize(rows[1:2], qs)
    assert empty["score"] is None and empty["n_failures"] == 1


def test_bad_question_file_names_the_line(tmp_path):
    p = tmp_path / "question.jsonl"
    p.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["a"]}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"question.jsonl:2"):
        load_questions(p)
    with pytest.raises(DataError, match="lacks reference_answer_gpt4.jsonl, judge_prompts.jsonl"):
        load_mt_bench(tmp_path)


def test_grading_refuses_missing_answers_and_references(bench):
    import dataclasses

    from instillm.evaluate.mt_bench import grade_answers
    from instillm.llm.backend import BackendConfig, make_backend

    nowhere = make_backend(BackendConfig(kind="openai", model="j", base_url="http://127.0.0.1:9/v1"))
    math = next(q for q in bench.questions if q.category == "math")
    answer = {"question_id": math.question_id, "model_id": "m", "choices": [{"index": 0, "turns": ["a", "b"]}]}
    with pytest.raises(DataError, match=rf"no answer for MT-Bench question\(s\) \[{math.question_id + 1}\]"):
        grade_answers(bench, [answer], nowhere, questions=[math, bench.questions[bench.questions.index(math) + 1]])
    no_refs = dataclasses.replace(bench, references={})
    with pytest.raises(
        DataError, match=rf"reference_answer_gpt4.jsonl: no reference answer for question {math.question_id}"
    ):
        grade_answers(no_refs, [answer], nowhere, questions=[math])
    nowhere.close()


def test_mt_bench_end_to_end_with_tiny_models(bench, tiny_model_dir, tiny_server, tmp_path):
    import dataclasses

    import torch

    from instillm.llm.backend import BackendConfig, make_backend
    from instillm.models.loading import load_model, load_tokenizer

    torch.set_num_threads(1)
    # short questions, so judge prompts fit the tiny model's 1024 positions; 104 needs a reference
    picked = tuple(q for q in bench.questions if q.question_id in (152, 104, 87))
    small = dataclasses.replace(bench, questions=picked)
    respond = local_responder(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), max_new_tokens=16)
    judge = make_backend(BackendConfig(kind="openai", model=tiny_server.model, base_url=tiny_server.base_url))
    try:
        summary = run_mt_bench(small, respond, "tiny-answerer", judge, tmp_path, GradeConfig(max_tokens=12))
    finally:
        judge.close()
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    judgments = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [87, 104, 152]
    assert all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    assert len(judgments) == 6
    for j in judgments:
        assert set(j) == FASTCHAT_JUDGMENT_KEYS
        assert j["score"] == FAILED or 1 <= j["score"] <= 10
        assert j["score"] == parse_rating(j["judgment"])
        q = next(q for q in picked if q.question_id == j["question_id"])
        assert j["judge"] == ["tiny", judge_prompt_name(q.category, j["turn"] == 2)]
        a = next(a for a in answers if a["question_id"] == j["question_id"])["choices"][0]["turns"]
        ref = bench.references.get(q.question_id) if q.category == "reasoning" else None
        assert j["user_prompt"] == user_prompt(bench.prompts[j["judge"][1]], q, a, ref, j["turn"] == 2)
    assert sorted((j["question_id"], j["turn"]) for j in judgments) == [(q, t) for q in (87, 104, 152) for t in (1, 2)]
    reasoning = next(j for j in judgments if j["question_id"] == 104 and j["turn"] == 2)
    assert bench.references[104][1] in reasoning["user_prompt"]
    failures = sum(j["score"] == FAILED for j in judgments)
    assert summary == json.loads((tmp_path / "mt_bench_summary.json").read_text())
    assert summary["n_failures"] == failures and summary["n_judgments"] == 6
    assert sum(t["n_failures"] for t in summary["per_turn"].values()) == failures
    assert sum(c["n"] + c["n_failures"] for c in summary["per_category"].values()) == 6
    assert set(summary["per_category"]) == {"writing", "reasoning", "humanities"}


def test_cli_eval_mt_bench(shared_data, tiny_model_dir, tiny_server, tmp_path):
    from typer.testing import CliRunner

    from instillm.cli import app

    out = tmp_path / "mt"
    args = [
        "eval",
        str(tiny_model_dir),
        "--suite",
        "mt-bench",
        "--data",
        str(shared_data / "mt_bench"),
        "--judge-base-url",
        tiny_server.base_url,
        "--judge-model",
        tiny_server.model,
        "--judge-cache",
        str(tmp_path / "cache.sqlite"),
        "--judge-max-tokens",
        "8",
        "--max-new-tokens",
        "8",
        "--limit",
        "1",
        "-o",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "mt_bench_summary.json").read_text())
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert summary["n_questions"] == 1 and summary["n_judgments"] == len(judgments) == 2
    assert summary["n_failures"] == sum(j["score"] == FAILED for j in judgments)
    assert "failures" in res.stdout and "turn 2" in res.stdout
    no_data = CliRunner().invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "--suite",
            "mt-bench",
            "--judge-model",
            "x",
            "--judge-base-url",
            "http://127.0.0.1:9/v1",
        ],
    )
    assert no_data.exit_code == 1 and "--data DIR" in no_data.output


def test_cli_grades_given_answers_without_a_model(shared_data, tiny_server, tmp_path):
    from typer.testing import CliRunner

    from instillm.cli import app

    refs = (shared_data / "mt_bench" / "reference_answer_gpt4.jsonl").read_text().splitlines()[:2]
    rows = [{**json.loads(r), "question_id": qid} for r, qid in zip(refs, (81, 82))]  # the first two questions
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "graded"
    judge = ["--judge-base-url", tiny_server.base_url, "--judge-model", tiny_server.model, "--judge-max-tokens", "8"]
    common = ["eval", "mt-bench", "--data", str(shared_data / "mt_bench"), *judge]
    res = CliRunner().invoke(app, [*common, "--answers", str(answers), "--limit", "3", "-o", str(out)])
    assert res.exit_code == 1 and "no answer for MT-Bench question(s) [83]" in res.output
    res = CliRunner().invoke(app, [*common, "--answers", str(answers), "--limit", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert {j["model"] for j in judgments} == {"gpt-4"} and len(judgments) == 4
    assert rows[0]["choices"][0]["turns"][0] in judgments[0]["user_prompt"]
    assert not (out / "answers.jsonl").exists()  # graded, not answered
    both = CliRunner().invoke(app, [*common, "some-model", "--answers", str(answers), "-o", str(out)])
    neither = CliRunner().invoke(app, [*common, "-o", str(out)])
    assert both.exit_code == neither.exit_code == 1
    assert "needs a MODEL that answers or --answers FILE" in both.output and both.output == neither.output
    over = CliRunner().invoke(app, [*common, "--answers", str(out / "judgments.jsonl"), "-o", str(out)])
    assert over.exit_code == 1 and "would overwrite input" in over.output


def test_load_answers_names_the_bad_line(tmp_path):
    from instillm.evaluate.mt_bench import load_answers

    bad = tmp_path / "a.jsonl"
    bad.write_text('{"question_id": 81, "choices": [{"turns": ["x"]}]}\n{"question_id": 82, "choices": []}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: needs choices\[0\].turns"):
        load_answers(bad)
    bad.write_text('{"question_id": 81, "choices": [{"turns": ["x"]}]}\n')
    assert load_answers(bad)[0]["model_id"] == "a"  # no model_id: the file's name
    bad.write_text("")
    with pytest.raises(DataError, match="holds no answer rows"):
        load_answers(bad)
