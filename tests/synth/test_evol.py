"""Evol-Instruct: prompts, elimination rules on crafted teacher outputs, a scripted multi-round run,
and a run against a real teacher endpoint (`instillm serve` over a tiny random model)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from instillm.data.schema import Example, Message
from instillm.errors import ConfigError, DataError
from instillm.llm.backend import BackendConfig, LLMResponse, LLMSample, make_backend
from instillm.synth.evol import (
    EvolConfig,
    _plan,
    copied_template_phrase,
    evolution_problem,
    judge_verdict,
    judgement_problem,
    read_lineages,
    response_problem,
    run_evol,
)
from instillm.synth.evol_prompts import OPERATIONS, equality_prompt, evolve_prompt
from instillm.synth.pipeline import config_from_mapping


def _write(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(ex.to_json() + "\n" for ex in examples))
    return path


def _ex(i: int, q: str, a: str = "An answer.") -> Example:
    return Example(messages=(Message("user", q), Message("assistant", a)), id=f"ex{i}", source="seed.jsonl")


# ---------------------------------------------------------------- prompts and config


def test_config_defaults_follow_wizardlm():
    cfg = EvolConfig()
    assert (cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.sorry_max_words) == (1.0, 0.95, 2048, 80)
    assert cfg.system_prompt == "You are a helpful assistant." and set(cfg.operations) == set(OPERATIONS)
    assert set(OPERATIONS) == {
        "add_constraints",
        "deepen",
        "concretize",
        "increase_reasoning",
        "complicate_input",
        "breadth",
    }
    with pytest.raises(ConfigError, match="operations"):
        EvolConfig(operations=("add_constraints", "fly"))
    with pytest.raises(ConfigError, match="judge_treshold: unknown key"):
        config_from_mapping(EvolConfig, {"judge_treshold": 1}, "evol")


@pytest.mark.parametrize(
    "op, must_contain",
    [
        ("add_constraints", "Please add one more constraints/requirements into #The Given Prompt#'"),
        ("deepen", "the depth and breadth of the inquiry can be increased"),
        ("concretize", "Please replace general concepts with more specific concepts."),
        ("increase_reasoning", "explicitly request multiple-step reasoning"),
        ("complicate_input", "You must add JSON data format text as input data in #Rewritten Prompt#"),
        ("breadth", "This new prompt should belong to the same domain as the #Given Prompt# but be even more rare."),
    ],
)
def test_evolve_prompts(op, must_contain):
    p = evolve_prompt(op, "Name a {braced} fruit.", "JSON data")
    assert must_contain in p and "Name a {braced} fruit." in p
    end = "#Created Prompt#:\n" if op == "breadth" else "#Rewritten Prompt#:\n"
    assert p.endswith(end)
    assert p.startswith("I want you act as a Prompt " + ("Creator." if op == "breadth" else "Rewriter."))


def test_equality_prompt_is_the_papers():
    p = equality_prompt("A", "B")
    assert "1. They have same constraints and requirments.\n2. They have same depth and breadth of the inquiry." in p
    assert "The First Prompt: A\nThe Second Prompt: B\n" in p
    assert p.endswith("Your Judgement (Just answer: Equal or Not Equal. No need to explain the reason.):")


def test_operation_draws_are_seeded_and_cover_every_operation():
    cfg = EvolConfig()
    draws = [_plan(cfg, 1, i) for i in range(300)]
    assert draws == [_plan(cfg, 1, i) for i in range(300)]
    counts = Counter(op for op, _ in draws)
    assert set(counts) == set(OPERATIONS) and min(counts.values()) > 25
    assert all((fmt in cfg.input_formats) == (op == "complicate_input") for op, fmt in draws)
    assert draws != [_plan(EvolConfig(seed=7), 1, i) for i in range(300)]
    assert draws != [_plan(cfg, 2, i) for i in range(300)]


# ---------------------------------------------------------------- elimination rules


@pytest.mark.parametrize(
    "evolved, reason",
    [
        ("Name three fruits that grow in cold climates.", None),
        ("", "empty_evolution"),
        ("   \n", "empty_evolution"),
        ("#Rewritten Prompt#: Name three fruits.", "copied_template_words"),
        ("Using the given prompt, name three fruits.", "copied_template_words"),
        ("As the REWRITTEN PROMPT asks, name fruits.", "copied_template_words"),
        ("#Created Prompt#\nName fruits.", "copied_template_words"),
        ("Here is the #Given Prompt# again.", "copied_template_words"),
        ("A prompt that was given to me: name fruits.", None),
    ],
)
def test_evolution_rules(evolved, reason):
    err = evolution_problem(evolved, EvolConfig())
    assert (err.reason if err else None) == reason


def test_copied_phrase_names_the_phrase():
    assert copied_template_phrase("see the Rewritten Prompt") == "rewritten prompt"
    assert copied_template_phrase("nothing here") is None


@pytest.mark.parametrize(
    "answer, verdict",
    [
        ("Equal", "equal"),
        ("equal.", "equal"),
        (" Not Equal", "not_equal"),
        ("NOT EQUAL", "not_equal"),
        ("They are not equal.", "not_equal"),
        ("Unequal", "not_equal"),
        ("not_equal", "not_equal"),
        ("The two are equal to each other", "equal"),
        ("maybe", None),
        ("", None),
        ("inequality", None),
    ],
)
def test_judge_verdicts(answer, verdict):
    assert judge_verdict(answer) == verdict


def test_judgement_rules():
    cfg = EvolConfig()
    assert judgement_problem("Equal", cfg).reason == "no_information_gain"
    assert judgement_problem("Not Equal", cfg) is None
    assert judgement_problem("hmm", cfg).reason == "unclear_judgement"
    assert judgement_problem("hmm", EvolConfig(on_unclear_judgement="keep")) is None


@pytest.mark.parametrize(
    "response, reason",
    [
        ("Sorry, I cannot help with that request.", "sorry_short_response"),
        ("I'm SORRY but no.", "sorry_short_response"),
        (" ".join(["word"] * 78) + " sorry", "sorry_short_response"),  # 79 words < 80
        (" ".join(["word"] * 79) + " sorry", None),  # 80 words: long enough
        ("The of and, to a; in!", "stopwords_only_response"),
        ("... ?! --", "stopwords_only_response"),
        ("", "stopwords_only_response"),
        ("It is what it is.", "stopwords_only_response"),
        ("Paris is the capital of France.", None),
        ("42", None),
    ],
)
def test_response_rules(response, reason):
    err = response_problem(response)
    assert (err.reason if err else None) == reason


# ---------------------------------------------------------------- input


def test_input_rows_that_are_not_single_turn_are_rejected_with_file_and_line(tmp_path):
    multi = Example(
        messages=(
            Message("user", "Hi"),
            Message("assistant", "Hello"),
            Message("user", "More?"),
            Message("assistant", "Sure"),
        ),
        id="multi",
    )
    with_system = Example(
        messages=(Message("system", "Be brief."), Message("user", "Name a fruit."), Message("assistant", "Apple")),
        id="sys",
    )
    p = _write(tmp_path / "in.jsonl", [_ex(0, "Name a fruit."), multi, with_system, _ex(0, "Duplicate id.")])
    lineages, rejects = read_lineages(p)
    assert [lin.instruction for lin in lineages] == ["Name a fruit.", "Name a fruit."]
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "not_single_turn"), (4, "duplicate_id")]
    assert all(r["file"] == str(p) for r in rejects)
    with pytest.raises(DataError, match="no single-turn example"):
        read_lineages(_write(tmp_path / "none.jsonl", [multi]))


# ---------------------------------------------------------------- a scripted teacher, several rounds


class ScriptedTeacher:
    """A Backend answering evolve / judge / response requests by markers in the instruction."""

    model = "scripted"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, requests, progress=None, on_response=None):
        out = [LLMResponse((LLMSample(self.answer(r.messages[-1]["content"]), "stop"),), self.model) for r in requests]
        for i, resp in enumerate(out):
            if on_response:
                on_response(i, resp)
        self.calls += len(requests)
        if progress:
            progress(len(requests))
        return out

    @staticmethod
    def answer(content: str) -> str:
        if content.startswith("I want you act as a Prompt"):
            given = content.split("Prompt#: \n ", 1)[1].rsplit(" \n#", 1)[0]
            if "COPY" in given:
                return "#Rewritten Prompt#: " + given
            if "EMPTY" in given:
                return "  "
            return given + " Explain each step."
        if content.startswith("Here are two Instructions"):
            return "maybe" if "UNCLEAR" in content else ("Equal" if "SAME" in content else "Not Equal")
        if "SORRY" in content:
            return "Sorry, I can't do that."
        if "STOP" in content:
            return "It is what it is."
        return "A detailed answer to: " + content

    def close(self):
        pass


def test_scripted_rounds_keep_the_parent_of_a_failed_evolution(tmp_path):
    qs = [
        "Name a fruit.",
        "SAME question here.",
        "COPY this one.",
        "Answer SORRY now.",
        "Answer STOP now.",
        "EMPTY please.",
        "UNCLEAR case.",
        "List three rivers.",
    ]
    data = _write(tmp_path / "in.jsonl", [_ex(i, q) for i, q in enumerate(qs)])
    res = run_evol(ScriptedTeacher(), data, tmp_path / "evol.jsonl", EvolConfig(rounds=3, request_batch_size=3))
    s = res.stats
    assert [r["attempted"] for r in s["rounds"]] == [8, 8, 8]
    for r in s["rounds"]:
        assert r["attempted"] == r["kept"] + sum(r["eliminated"].values())
        assert r["eliminated"] == {
            "copied_template_words": 1,
            "empty_evolution": 1,
            "no_information_gain": 1,
            "sorry_short_response": 1,
            "stopwords_only_response": 1,
            "unclear_judgement": 1,
        }
        assert sum(v["attempted"] for v in r["by_operation"].values()) == r["attempted"]
    rows = [Example.from_dict(json.loads(line)) for line in res.output.read_text().splitlines()]
    assert len(rows) == s["examples"] == 6  # two good lineages x three rounds
    fruit = [r for r in rows if r.meta["root_id"] == "ex0"]
    assert [r.meta["round"] for r in fruit] == [1, 2, 3] and [r.meta["evol_depth"] for r in fruit] == [1, 2, 3]
    assert fruit[2].messages[0].content == "Name a fruit." + " Explain each step." * 3
    assert fruit[1].meta["parent_id"] == fruit[0].id == "ex0-evol1"
    assert fruit[0].reference.startswith("A detailed answer to: Name a fruit.")
    rejects = [json.loads(line) for line in res.rejects.read_text().splitlines()]
    assert len(rejects) == 18 and all(r["reason"] and r["stage"] == "evol" for r in rejects)
    same = [r["raw"] for r in rejects if r["reason"] == "no_information_gain"]
    assert [x["parent"] for x in same] == ["SAME question here."] * 3  # the parent stays for the next round
    assert [x["round"] for x in same] == [1, 2, 3] and all(x["response"] is None for x in same)


def test_judge_can_be_turned_off(tmp_path):
    data = _write(tmp_path / "in.jsonl", [_ex(0, "SAME question here.")])
    teacher = ScriptedTeacher()
    res = run_evol(teacher, data, tmp_path / "o.jsonl", EvolConfig(rounds=1, judge=False))
    assert res.stats["rounds"][0]["kept"] == 1 and teacher.calls == 2  # evolve + response, no judge


def test_resume_after_an_error_mid_run_redoes_only_the_unfinished_batch(tmp_path):
    data = _write(tmp_path / "in.jsonl", [_ex(i, f"Question number {i} about rivers.") for i in range(6)])
    cfg = EvolConfig(rounds=2, request_batch_size=2)

    class Failing(ScriptedTeacher):
        def generate(self, requests, progress=None, on_response=None):
            if self.calls >= 9:
                raise RuntimeError("teacher went away")
            return super().generate(requests, progress, on_response)

    with pytest.raises(RuntimeError):
        run_evol(Failing(), data, tmp_path / "o.jsonl", cfg)
    teacher = ScriptedTeacher()
    res = run_evol(teacher, data, tmp_path / "o.jsonl", cfg)
    reference = run_evol(ScriptedTeacher(), data, tmp_path / "ref.jsonl", cfg)
    assert res.resumed and res.output.read_text() == reference.output.read_text()
    # 36 requests in all (6 lineages x 2 rounds x evolve/judge/response); batch 1 (2 lineages x 3) was
    # committed before the failure, batch 2 failed at its responses and is redone whole.
    assert teacher.calls == 36 - 6


# ---------------------------------------------------------------- against a real endpoint


def test_end_to_end_against_tiny_server(tiny_server, tmp_path):
    data = _write(
        tmp_path / "in.jsonl",
        [
            _ex(i, q)
            for i, q in enumerate(
                ["Name a fruit.", "Give two tips for sleeping well.", "Translate cat into French.", "What is 2 + 3?"]
            )
        ],
    )
    backend = make_backend(
        BackendConfig(
            kind="openai", model=tiny_server.model, base_url=tiny_server.base_url, cache=str(tmp_path / "cache.sqlite")
        )
    )
    # A random model never answers "Equal"/"Not Equal": keep unclear judgements so responses get checked too.
    cfg = EvolConfig(
        rounds=2,
        max_tokens=24,
        response_max_tokens=24,
        judge_max_tokens=4,
        on_unclear_judgement="keep",
        request_batch_size=3,
    )
    res = run_evol(backend, data, tmp_path / "evol.jsonl", cfg)
    backend.close()
    s = res.stats
    assert s["input"] == {"rows": 4, "lineages": 4, "rejected": {}}
    assert [r["attempted"] for r in s["rounds"]] == [4, 4]
    for r in s["rounds"]:
        assert r["attempted"] == r["kept"] + sum(r["eliminated"].values())
    rows = [Example.from_dict(json.loads(line)) for line in res.output.read_text().splitlines()]
    assert len(rows) == s["examples"] == sum(r["kept"] for r in s["rounds"]) > 0
    assert all(r.task == "evol_instruct" and r.meta["teacher"] == "tiny" for r in rows)
    assert len({r.id for r in rows}) == len(rows)
    rejects = [json.loads(line) for line in res.rejects.read_text().splitlines()]
    assert len(rejects) == sum(sum(r["eliminated"].values()) for r in s["rounds"])
    assert all(r["reason"] for r in rejects)


class SurrogateTeacher(ScriptedTeacher):
    """Answers questions marked SURROGATE with a lone surrogate, which JSON allows but UTF-8 cannot hold."""

    @staticmethod
    def answer(content: str) -> str:
        if "SURROGATE" in content and not content.startswith(("I want you act", "Here are two")):
            return "A detailed answer \ud800 with a lone surrogate."
        return ScriptedTeacher.answer(content)


def test_a_teacher_reply_with_a_lone_surrogate_is_rejected_and_outputs_stay_utf8(tmp_path):
    from instillm.data.importer import read_examples

    data = _write(tmp_path / "in.jsonl", [_ex(0, "Name a fruit."), _ex(1, "SURROGATE fruit.")])
    old_umask = os.umask(0o022)
    try:
        res = run_evol(SurrogateTeacher(), data, tmp_path / "evol.jsonl", EvolConfig(rounds=1, request_batch_size=2))
    finally:
        os.umask(old_umask)
    kept = list(read_examples(res.output))  # before: undecodable_bytes
    assert [ex.meta["root_id"] for ex in kept] == ["ex0"]
    rejects = [json.loads(line) for line in res.rejects.read_bytes().decode("utf-8").splitlines()]
    assert [(r["stage"], r["reason"]) for r in rejects] == [("output", "invalid_unicode")]
    assert "\ud800" in rejects[0]["raw"]["messages"][1]["content"]
    assert res.stats["output"] == {"examples": 2, "kept": 1, "rejected": {"invalid_unicode": 1}}
    assert res.stats["examples"] == len(kept) == 1
    assert json.loads(res.stats_path.read_text()) == res.stats
    for path in (res.output, res.rejects, res.stats_path, tmp_path / "evol.run" / "state.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path  # the umask's, not mkstemp's 0600
