"""IFEval conformance with the reference implementation's verdicts on the GPT-4 responses.

Acceptance bar: per-instruction agreement >= 99% (strict and loose separately) and the set of
disagreements equal to the explained list in tests/fixtures/ifeval_disagreements.json. Upstream
caveats: the response file has 541 rows, but the response for key 2785 was written for an older
wording of its prompt ("at least one placeholder"), so 540 prompts join, as in the reference
results; keys 2078, 337 and 30 have prompt/kwargs mismatches upstream (we score the kwargs, as
the reference does). The perturbed response sets have no reference verdicts: they are used for
determinism, internal consistency and regression pins.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from instillm.evaluate.ifeval import evaluate_responses, load_inputs, load_responses, summarize

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ifeval_disagreements.json"
MODES = ("strict", "loose")
LANGDETECT_IDS = {
    "language:response_language",
    "change_case:english_capital",
    "change_case:english_lowercase",
}
# Regression pins for the perturbed sets: (prompt strict, instruction strict, prompt loose,
# instruction loose), over 476 prompts and 708 instructions each.
PERTURBED_PINS = {
    "a": (273, 484, 324, 544),
    "b": (271, 478, 327, 541),
}


@pytest.fixture(scope="module")
def ifeval_dir(shared_data: Path) -> Path:
    return shared_data / "ifeval"


@pytest.fixture(scope="module")
def inputs(ifeval_dir: Path) -> list[dict]:
    return load_inputs(ifeval_dir / "input_data.jsonl")


@pytest.fixture(scope="module")
def ours(ifeval_dir: Path, inputs: list[dict]) -> dict:
    responses = load_responses(ifeval_dir / "gpt4_responses.jsonl")
    return {m: evaluate_responses(inputs, responses, m) for m in MODES}


def _compare(ours, reference_rows) -> tuple[int, list[dict]]:
    """(instructions compared, disagreements) between our results and reference rows."""
    ref = {r["prompt"]: r for r in reference_rows}
    assert len(ref) == len(reference_rows) == len(ours)
    total, diffs = 0, []
    for res in ours:
        row = ref[res.prompt]
        assert row["instruction_id_list"] == res.instruction_id_list
        for i, (iid, a, b) in enumerate(
            zip(res.instruction_id_list, res.follow_instruction_list, row["follow_instruction_list"])
        ):
            total += 1
            if a != b:
                diffs.append({"key": res.key, "index": i, "instruction_id": iid, "ours": a, "reference": b})
    return total, diffs


def _listed(mode: str) -> list[dict]:
    """The fixture's disagreements for `mode`, without the explanation."""
    rows = json.loads(FIXTURE.read_text())["disagreements"]
    keep = ("key", "index", "instruction_id", "ours", "reference")
    return [{k: d[k] for k in keep} for d in rows if d["mode"] == mode]


def test_join_covers_540_prompts_and_skips_only_key_2785(ifeval_dir, inputs, ours):
    responses = load_responses(ifeval_dir / "gpt4_responses.jsonl")
    missing = [r["key"] for r in inputs if r["prompt"] not in responses]
    assert len(inputs) == 541 and missing == [2785]
    assert all(len(ours[m]) == 540 for m in MODES)


@pytest.mark.parametrize("mode", MODES)
def test_agreement_with_reference(ifeval_dir, ours, mode):
    reference = load_inputs(ifeval_dir / f"gpt4_reference_results_{mode}.jsonl")
    total, diffs = _compare(ours[mode], reference)
    assert total == 832
    assert 1 - len(diffs) / total >= 0.99
    key = lambda d: (d["key"], d["index"])  # noqa: E731
    assert sorted(diffs, key=key) == sorted(_listed(mode), key=key)


def test_every_listed_disagreement_is_explained():
    rows = json.loads(FIXTURE.read_text())["disagreements"]
    for d in rows:
        assert d["mode"] in MODES and len(d["explanation"]) > 40, d


def test_reference_summary_numbers(ours):
    summary = summarize(ours["strict"], ours["loose"])
    # Reference on these 540 prompts: strict 415/540 prompts, 695/832 instructions; loose 431/540,
    # 713/832. Ours differ only by the two listed strict disagreements (both prompts pass here).
    assert summary["prompt_level_strict"] == pytest.approx(417 / 540)
    assert summary["prompt_level_loose"] == pytest.approx(431 / 540)
    assert summary["instruction_level_strict"] == pytest.approx(697 / 832)
    assert summary["instruction_level_loose"] == pytest.approx(713 / 832)
    assert summary["num_prompts"] == 540 and summary["num_instructions"] == 832
    assert sum(v["n"] for v in summary["per_instruction"].values()) == 832


@pytest.fixture(scope="module", params=["a", "b"])
def perturbed(request, shared_data: Path, inputs: list[dict]):
    path = shared_data / "conformance" / f"ifeval_perturbed_responses_{request.param}.jsonl"
    responses = load_responses(path)
    results = {m: evaluate_responses(inputs, responses, m) for m in MODES}
    return request.param, path, inputs, responses, results


def test_perturbed_sets_join_every_row(perturbed):
    _, path, _, responses, results = perturbed
    rows = load_inputs(path)
    assert len(rows) == len(responses) == len(results["strict"]) == 476


def test_perturbed_strict_pass_implies_loose_pass(perturbed):
    _, _, _, _, results = perturbed
    for s, lo in zip(results["strict"], results["loose"]):
        assert s.prompt == lo.prompt
        assert all(lv for sv, lv in zip(s.follow_instruction_list, lo.follow_instruction_list) if sv)


def test_perturbed_results_are_identical_across_runs_and_pinned(perturbed):
    name, _, inputs, responses, results = perturbed
    assert evaluate_responses(inputs, responses, "strict") == results["strict"]
    s = summarize(results["strict"], results["loose"])
    n_p, n_i = s["num_prompts"], s["num_instructions"]
    assert (n_p, n_i) == (476, 708)
    got = tuple(
        round(s[k] * n)
        for k, n in (
            ("prompt_level_strict", n_p),
            ("instruction_level_strict", n_i),
            ("prompt_level_loose", n_p),
            ("instruction_level_loose", n_i),
        )
    )
    assert got == PERTURBED_PINS[name]


def test_language_verdicts_are_identical_in_a_fresh_process(perturbed):
    """langdetect is seeded: a new interpreter gives the same language-dependent verdicts."""
    _, path, inputs, _, results = perturbed
    rows = [r for r in inputs if LANGDETECT_IDS & set(r["instruction_id_list"])]
    code = (
        "import json, sys\n"
        "from instillm.evaluate.ifeval import evaluate_responses, load_responses\n"
        "rows = json.loads(sys.stdin.read())\n"
        f"res = evaluate_responses(rows, load_responses({str(path)!r}), 'strict')\n"
        "print(json.dumps([r.follow_instruction_list for r in res]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(rows),
        capture_output=True,
        text=True,
        check=True,
        cwd=FIXTURE.parents[2],
    ).stdout
    by_prompt = {r.prompt: r.follow_instruction_list for r in results["strict"]}
    expected = [by_prompt[r["prompt"]] for r in rows if r["prompt"] in by_prompt]
    assert json.loads(out) == expected and len(expected) > 50
