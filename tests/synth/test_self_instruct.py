"""Self-Instruct: prompts, parsers and filters on crafted teacher outputs, a scripted run, and a run
against a real teacher endpoint (`instillm serve` over a tiny random model)."""

from __future__ import annotations

import json
import random
import re

import pytest

from instillm.data.schema import Example
from instillm.errors import ConfigError, DataError
from instillm.llm.backend import BackendConfig, LLMResponse, LLMSample, make_backend
from instillm.synth.pipeline import config_from_mapping, load_config
from instillm.synth.self_instruct import (
    DEFAULT_SEEDS,
    InstructionFilter,
    InstructionPool,
    SelfInstructConfig,
    clf_prompt,
    encode_prompt,
    instance_prompt,
    judge_candidates,
    load_seed_tasks,
    mark_truncated,
    parse_classification_instances,
    parse_generation_instances,
    parse_input_output,
    parse_is_classification,
    postprocess_instances,
    run_self_instruct,
    split_instructions,
)
from instillm.synth.self_instruct_prompts import CLF_TEMPLATE, INPUT_FIRST_TEMPLATE, OUTPUT_FIRST_TEMPLATE

CFG = SelfInstructConfig()


# ---------------------------------------------------------------- seeds and config


def test_our_seed_tasks_load_and_mix_classification():
    tasks = load_seed_tasks()
    assert len(tasks) >= 25
    assert 5 <= sum(t.is_classification for t in tasks) < len(tasks)
    assert len({t.instruction for t in tasks}) == len(tasks)
    assert all(t.instances and all(o.strip() for _, o in t.instances) for t in tasks)
    assert DEFAULT_SEEDS.name == "seed_tasks.jsonl"


def test_shared_seed_tasks_load_by_path(shared_data):
    tasks = load_seed_tasks(shared_data / "self_instruct" / "seed_tasks.jsonl")
    assert len(tasks) == 175 and sum(t.is_classification for t in tasks) > 0


def test_bad_seed_row_names_file_and_line(tmp_path):
    p = tmp_path / "seeds.jsonl"
    good = {
        "id": "a",
        "name": "a",
        "instruction": "Do it.",
        "instances": [{"input": "", "output": "x"}],
        "is_classification": False,
    }
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "is_classification": "no"}) + "\n")
    with pytest.raises(DataError, match=r"seeds.jsonl:2: .*is_classification"):
        load_seed_tasks(p)


def test_config_defaults_are_the_published_ones():
    assert (CFG.num_prompt_instructions, CFG.num_machine_instructions, CFG.request_batch_size) == (8, 2, 5)
    assert (CFG.temperature, CFG.top_p, CFG.max_tokens, CFG.rouge_threshold) == (0.7, 0.5, 1024, 0.7)
    assert CFG.stop == ("\n\n", "\n16", "16.", "16 .") and CFG.max_instances == 5
    assert "go to" in CFG.blacklist and "plot" in CFG.blacklist


def test_config_from_yaml_maps_one_to_one_and_rejects_unknown_keys(tmp_path):
    y = tmp_path / "si.yaml"
    y.write_text("num_instructions: 12\nblacklist: [foo, bar]\nrouge_threshold: 0.5\n")
    cfg = load_config(SelfInstructConfig, y, ["max_batches=3"], "self-instruct")
    assert (cfg.num_instructions, cfg.blacklist, cfg.rouge_threshold, cfg.max_batches) == (12, ("foo", "bar"), 0.5, 3)
    with pytest.raises(ConfigError, match="rouge_treshold: unknown key"):
        config_from_mapping(SelfInstructConfig, {"rouge_treshold": 0.5}, "self-instruct")
    with pytest.raises(ConfigError, match="num_machine_instructions"):
        SelfInstructConfig(num_machine_instructions=9)
    with pytest.raises(ConfigError, match="on_truncated"):
        SelfInstructConfig(on_truncated="sometimes")


# ---------------------------------------------------------------- stage 1: prompt, parsing, filters


def test_encode_prompt_is_the_original_numbered_list():
    p = encode_prompt(["Sort  the\nlist:", "Name a colour."])
    assert p == "Come up with a series of tasks:\n1. Sort the list\n2. Name a colour.\n3."
    assert encode_prompt(["A b c d."], classification=True).startswith(
        "Come up with a series of classification tasks. Try to specify the possible output labels when possible.\n"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            " Give three tips.\n10. Name a fruit that is red.\n11. Translate hello into French.",
            ["Give three tips.", "Name a fruit that is red.", "Translate hello into french."],
        ),  # capitalize() lowers
        (
            "Just one instruction without numbering, spread\nover two lines.",
            ["Just one instruction without numbering, spread over two lines."],
        ),
        ("", []),
        ("\n10. \n11. ", []),
        (
            " First.\n10. Second one here.\n10. Duplicated number here.",
            ["First.", "Second one here.", "Duplicated number here."],
        ),
        (" A task.\n12 . Spaced number task.", ["A task.", "Spaced number task."]),
        (
            "Sure! Here are some more tasks:\n10. Write a poem about rain.",
            ["Sure! here are some more tasks:", "Write a poem about rain."],
        ),
        (" Inline 10. numbers stay", ["Inline 10. numbers stay"]),
    ],
)
def test_split_instructions_handles_malformed_completions(text, expected):
    assert split_instructions(text) == expected


def test_split_keeps_case_when_capitalize_is_off():
    assert split_instructions(" Translate into USA English.", capitalize=False) == ["Translate into USA English."]


def test_truncated_completion_drops_its_last_instruction():
    insts = ["a", "b", "c"]
    assert mark_truncated(insts, "length", "drop_last") == [False, False, True]
    assert mark_truncated(insts, "length", "drop_all") == [True, True, True]
    assert mark_truncated(insts, "length", "keep") == [False, False, False]
    assert mark_truncated(insts, "stop", "drop_last") == [False, False, False]
    assert mark_truncated([], "length", "drop_last") == []


@pytest.mark.parametrize(
    "inst, reason",
    [
        ("Name three fruits", "instruction_too_short"),  # the original: `<= 3` words
        ("Name three red fruits", None),
        ("Name fruits now", "instruction_too_short"),
        (" ".join(["word"] * 150), None),
        (" ".join(["word"] * 151), "instruction_too_long"),
        ("Describe the image in one sentence.", "blacklisted_keyword"),
        ("Describe the IMAGES in one sentence.", "blacklisted_keyword"),
        ("Please go to the store and report prices.", "blacklisted_keyword"),
        ("List the files that were filed yesterday.", "blacklisted_keyword"),
        ("Summarize what was filed in court today.", None),  # whole words only
        ("Create a plot twist for a story.", "blacklisted_keyword"),
        ("Write a program that adds two numbers.", "write_a_program"),
        ("write a program that adds two numbers.", None),  # the original is case-sensitive
        ('"Quote" the following text back please.', "starts_with_punctuation"),
        ("- list three colours of the rainbow", "starts_with_punctuation"),
        ("Écris une phrase en français maintenant.", "starts_with_non_ascii"),
    ],
)
def test_instruction_filter_rules(inst, reason):
    err = InstructionFilter(CFG).check(inst)
    assert (err.reason if err else None) == reason


def test_blacklist_is_configurable():
    rules = InstructionFilter(SelfInstructConfig(blacklist=("recipe",)))
    assert rules.check("Describe the image in one sentence.") is None
    assert rules.check("Give me a recipe for soup tonight.").reason == "blacklisted_keyword"


def test_rouge_pool_matches_rouge_score_decisions():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seeds = ["Give three tips for staying healthy.", "Translate the sentence into French."]
    cands = [
        "Give three tips for staying very healthy.",
        "Translate the sentence into German please.",
        "Name the capital city of Peru.",
        "Name the capital city of Chile.",
        "Give three tips for sleeping.",
        "Suggest ways to sleep better at night.",
    ]
    pool, kept = InstructionPool(seeds, 0.7), []
    for c in cands:
        expected_dup = max(scorer.score(c, o)["rougeL"].fmeasure for o in seeds + kept) > 0.7
        err = pool.similar(c)
        assert (err is not None) == expected_dup, c
        if err is None:
            pool.add(c)
            kept.append(c)
        else:
            assert err.reason == "rouge_l_duplicate" and "ROUGE-L F" in err.detail
    assert kept == pool.instructions and len(kept) >= 2


def test_judge_candidates_grows_the_pool_and_stops_at_the_target():
    cfg = SelfInstructConfig(num_instructions=2)
    pool = InstructionPool(["Give three tips for staying healthy."], cfg.rouge_threshold)
    text = (
        " Name the capital city of Peru.\n10. Name the capital city of Peru today.\n11. Draw a map of Spain."
        "\n12. List five animals that live in the ocean.\n13. Explain why the sky is blue to a child."
        "\n14. Write half of a"
    )
    got = judge_candidates(text, "length", pool, InstructionFilter(cfg), cfg)
    reasons = [(i, e.reason if e else None) for i, e in got]
    assert reasons == [
        ("Name the capital city of peru.", None),
        ("Name the capital city of peru today.", "rouge_l_duplicate"),
        ("Draw a map of spain.", "blacklisted_keyword"),
        ("List five animals that live in the ocean.", None),
        ("Explain why the sky is blue to a child.", "target_reached"),
        ("Write half of a", "truncated"),
    ]
    assert pool.instructions == ["Name the capital city of peru.", "List five animals that live in the ocean."]


# ---------------------------------------------------------------- stage 2: classification or not


def test_classification_prompt_and_answer():
    p = clf_prompt("  Is this email spam?  ")
    assert p.startswith(CLF_TEMPLATE) and p.endswith("Task: Is this email spam?\nIs it classification?")
    assert CLF_TEMPLATE.startswith("Can the following task be regarded as a classification task")
    assert [parse_is_classification(t) for t in (" Yes", "yes\n", "YES", "Yes.", "No", "", "yes it is")] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]


# ---------------------------------------------------------------- stages 3-4: instances


def test_instance_prompts_pick_the_template_by_type():
    assert instance_prompt("Classify x.", True) == OUTPUT_FIRST_TEMPLATE + " Classify x.\n"
    assert instance_prompt("Write y.", False) == INPUT_FIRST_TEMPLATE + " Write y.\n"
    assert OUTPUT_FIRST_TEMPLATE.endswith("Class label: (e)\n\nTask:") and INPUT_FIRST_TEMPLATE.endswith("Task:")


def test_parse_generation_instances():
    text = (
        "Example 1\nList: [3, 1, 2]\nOutput: [1, 2, 3]\nExample 2\nInput 2 - List: [9, 8]\nOutput: [8, 9]\n"
        "Example 3\nList: [5]\nOutput: [5]\nInput: trailing pair\nOutput: ignored"
    )
    assert parse_generation_instances(text) == [
        ("List: [3, 1, 2]", "[1, 2, 3]"),
        ("Input 2 - List: [9, 8]", "[8, 9]"),
        ("List: [5]", "[5]"),
    ]
    assert parse_generation_instances("Output:\n- Plank\n- Squats") == [("", "- Plank\n- Squats")]
    assert parse_generation_instances("Input: 85 F\nOutput: 29.4 C") == [("85 F", "29.4 C")]
    assert parse_generation_instances("just some prose without the markers") == []
    assert parse_generation_instances("") == []
    assert parse_input_output("no output marker here") == ("", "no output marker here")


def test_parse_classification_instances_output_first():
    text = "Class label: Positive\nSentence: I loved it.\nClass label: Negative\nSentence: Awful.\nClass label: Neutral"
    assert parse_classification_instances(text) == [
        ("Sentence: I loved it.", "Positive"),
        ("Sentence: Awful.", "Negative"),
        ("", "Neutral"),
    ]
    assert parse_classification_instances("Label: yes\nText: hi") == []
    assert parse_classification_instances("") == []


def test_postprocess_rules_in_the_original_order():
    rng = random.Random(0)
    parsed = [
        ("a", "a"),
        ("b", ""),
        ("c:", "x"),
        ("d", "y:"),
        ("e", "out e"),
        ("e", "out e"),
        ("", "f"),
        ("g", "out g"),
        ("h", "cut"),
    ]
    kept, rejected = postprocess_instances(parsed, "length", 5, rng)
    assert kept == [("e", "out e"), ("", "f"), ("g", "out g")]
    assert [(r["input"], r["reason"]) for r in rejected] == [
        ("h", "truncated"),
        ("a", "input_equals_output"),
        ("b", "empty_output"),
        ("c:", "ends_with_colon"),
        ("d", "ends_with_colon"),
        ("e", "duplicate_instance"),
    ]
    assert len(kept) + len(rejected) == len(parsed)


def test_conflicting_outputs_drop_the_whole_task():
    kept, rejected = postprocess_instances([("q", "yes"), ("r", "no"), ("q", "no")], "stop", 5, random.Random(0))
    assert kept == [] and [r["reason"] for r in rejected] == ["conflicting_outputs"] * 3
    # empty inputs with different outputs are not a conflict (a task without input)
    kept, _ = postprocess_instances([("", "one"), ("", "two")], "stop", 5, random.Random(0))
    assert kept == [("", "one"), ("", "two")]


def test_at_most_max_instances_sampled_per_task():
    parsed = [(f"in {i}", f"out {i}") for i in range(8)]
    kept, rejected = postprocess_instances(parsed, "stop", 5, random.Random(3))
    assert len(kept) == 5 and [r["reason"] for r in rejected] == ["over_max_instances"] * 3
    assert set(kept) | {(r["input"], r["output"]) for r in rejected} == set(parsed)
    again, _ = postprocess_instances(parsed, "stop", 5, random.Random(3))
    assert again == kept


# ---------------------------------------------------------------- a scripted teacher, the whole run


WORDS = (
    "river mountain violin garden planet engine castle ocean desert forest lantern harbor meadow "
    "glacier canyon orchard bakery library museum station tunnel bridge market island volcano "
    "thunder comet rocket pepper cinnamon marble velvet copper silver falcon badger otter"
).split()


class ScriptedTeacher:
    """A Backend whose answers are a pure function of the prompt (crafted, like a well-behaved LLM)."""

    model = "scripted"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, requests, progress=None, on_response=None):
        out = []
        for i, r in enumerate(requests):
            text, fr = self.answer(r.prompt, r.params.seed)
            out.append(LLMResponse((LLMSample(text, fr),), self.model))
            if on_response:
                on_response(i, out[-1])
        self.calls += len(requests)
        if progress:
            progress(len(requests))
        return out

    def answer(self, prompt: str, seed):
        task = prompt.rsplit("Task:", 1)[-1].strip()
        if prompt.endswith("Is it classification?"):
            return (" Yes" if task.startswith("Classify") else " No"), "stop"
        if prompt.startswith(OUTPUT_FIRST_TEMPLATE):
            return "Class label: Good\nReview: Great value.\nClass label: Bad\nReview: Broke in a day.", "stop"
        if prompt.startswith(INPUT_FIRST_TEMPLATE):
            if "colour" in task:
                return "Just prose with no markers.", "stop"
            return "Example 1\nInput: apple\nOutput: fruit\nExample 2\nInput: carrot\nOutput: vegetable", "stop"
        rng = random.Random(seed)
        w = rng.sample(WORDS, 12)
        n = int(re.search(r"(\d+)\.$", prompt).group(1))
        return (
            f" Classify each {w[0]} {w[1]} review as good or bad.\n{n + 1}. Describe {w[2]} {w[3]} {w[4]} "
            f"{w[5]} in detail.\n{n + 2}. Name a colour of {w[6]} {w[7]} {w[8]}.\n{n + 3}. Draw the {w[9]} "
            f"for {w[10]} {w[11]}."
        ), "stop"

    def close(self):
        pass


def test_scripted_run_end_to_end(tmp_path):
    cfg = SelfInstructConfig(num_instructions=6, request_batch_size=2)
    res = run_self_instruct(ScriptedTeacher(), tmp_path / "si.jsonl", config=cfg)
    s = res.stats
    assert s["bootstrap"]["kept"] == 6 and s["bootstrap"]["stopped"] == "target_reached"
    assert s["bootstrap"]["candidates"] == s["bootstrap"]["kept"] + sum(s["bootstrap"]["rejected"].values())
    assert s["bootstrap"]["rejected"]["blacklisted_keyword"] >= 1
    assert s["classification"]["tasks"] == 6 and s["classification"]["classification"] >= 1
    inst = s["instances"]
    assert inst["tasks"] == inst["tasks_kept"] + sum(inst["tasks_rejected"].values()) == 6
    assert inst["parsed"] == inst["kept"] + sum(inst["rejected"].values())
    assert inst["tasks_rejected"].get("no_instances_parsed", 0) >= 1  # the "colour" tasks
    rows = [Example.from_dict(json.loads(line)) for line in res.output.read_text().splitlines()]
    assert len(rows) == s["examples"] == inst["kept"] > 0
    assert len({r.id for r in rows}) == len(rows)
    clf_rows = [r for r in rows if r.meta["is_classification"]]
    assert clf_rows and {r.reference for r in clf_rows} <= {"Good", "Bad"}
    gen = [r for r in rows if not r.meta["is_classification"]]
    assert gen and gen[0].messages[0].content.endswith("\n\napple") and gen[0].reference == "fruit"
    assert all(r.task == "self_instruct" and r.meta["teacher"] == "scripted" for r in rows)
    rejects = [json.loads(line) for line in res.rejects.read_text().splitlines()]
    assert all(r["reason"] and r["stage"] for r in rejects)
    n_dropped = (
        sum(s["bootstrap"]["rejected"].values()) + sum(inst["rejected"].values()) + sum(inst["tasks_rejected"].values())
    )
    assert len(rejects) == n_dropped
    assert json.loads(res.stats_path.read_text()) == s


def test_rerunning_a_finished_run_sends_nothing_and_writes_the_same(tmp_path):
    cfg = SelfInstructConfig(num_instructions=4, request_batch_size=2)
    first = run_self_instruct(ScriptedTeacher(), tmp_path / "si.jsonl", config=cfg)
    rows = first.output.read_text()
    teacher = ScriptedTeacher()
    again = run_self_instruct(teacher, tmp_path / "si.jsonl", config=cfg)
    assert teacher.calls == 0 and again.resumed and again.output.read_text() == rows
    with pytest.raises(ConfigError, match="other settings.*differs in: config"):
        run_self_instruct(ScriptedTeacher(), tmp_path / "si.jsonl", config=SelfInstructConfig(num_instructions=5))


def test_too_few_seeds_for_the_prompt_is_an_error(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(
        json.dumps(
            {"instruction": "Do a thing now.", "instances": [{"input": "", "output": "x"}], "is_classification": False}
        )
        + "\n"
    )
    with pytest.raises(DataError, match="num_prompt_instructions"):
        run_self_instruct(ScriptedTeacher(), tmp_path / "o.jsonl", seeds=p)


# ---------------------------------------------------------------- against a real endpoint

SHORT = {
    "clf_template": CLF_TEMPLATE.split("\n\nTask: Replace")[0] + "\n\nTask:",
    "input_first_template": INPUT_FIRST_TEMPLATE.split("\n\nTask: Extract")[0] + "\n\nTask:",
    "output_first_template": OUTPUT_FIRST_TEMPLATE.split("\n\nTask: Given a dialogue")[0] + "\n\nTask:",
}


def test_end_to_end_against_tiny_server(tiny_server, tmp_path):
    backend = make_backend(
        BackendConfig(
            kind="openai", model=tiny_server.model, base_url=tiny_server.base_url, cache=str(tmp_path / "cache.sqlite")
        )
    )
    # A random model rarely ends a completion on its own: keep truncated ones so the stages get work.
    # Its context is 1024 tokens: the few-shot prompts are cut to their first examples.
    cfg = SelfInstructConfig(
        num_instructions=4,
        request_batch_size=3,
        max_tokens=40,
        on_truncated="keep",
        instance_max_tokens=40,
        clf_instance_max_tokens=40,
        max_stalled_batches=3,
        **SHORT,
    )
    res = run_self_instruct(backend, tmp_path / "si.jsonl", config=cfg)
    backend.close()
    s = res.stats
    b = s["bootstrap"]
    assert b["requests"] > 0 and b["requests"] % 3 == 0  # whole batches only
    assert b["candidates"] == b["kept"] + sum(b["rejected"].values())
    assert b["kept"] == s["classification"]["tasks"] == s["instances"]["tasks"]
    assert s["classification"]["classification"] + s["classification"]["generation"] == b["kept"]
    inst = s["instances"]
    assert inst["tasks"] == inst["tasks_kept"] + sum(inst["tasks_rejected"].values())
    assert inst["parsed"] == inst["kept"] + sum(inst["rejected"].values())
    rows = [Example.from_dict(json.loads(line)) for line in res.output.read_text().splitlines()]
    assert len(rows) == s["examples"] == inst["kept"]
    rejects = [json.loads(line) for line in res.rejects.read_text().splitlines()]
    assert len(rejects) == (
        sum(b["rejected"].values()) + sum(inst["rejected"].values()) + sum(inst["tasks_rejected"].values())
    )
    assert all(isinstance(r["reason"], str) and r["reason"] for r in rejects)
