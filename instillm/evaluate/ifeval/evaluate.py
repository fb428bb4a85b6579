"""IFEval scoring: strict and loose verdicts per prompt, summaries and output files.

Strict checks the response as is. Loose (as the reference's ``evaluation_lib``) also tries the
response without its first line, without its last line, without both, and each of these four
with every ``*`` removed: an instruction passes loose if any non-blank variant passes. In both
modes a blank response fails every instruction. Responses are joined to prompts on the exact
prompt text, like the reference; prompts without a response are skipped (and counted in the
summary as ``missing``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from instillm.data.io import write_atomic
from instillm.evaluate.ifeval.registry import check

Mode = Literal["strict", "loose"]


@dataclass
class PromptResult:
    """Verdicts for one prompt."""

    key: int | None
    prompt: str
    instruction_id_list: list[str]
    follow_instruction_list: list[bool]
    follow_all_instructions: bool


def load_inputs(path: str | Path) -> list[dict[str, Any]]:
    """IFEval input rows ``{key, prompt, instruction_id_list, kwargs}`` from a JSONL file."""
    return _read_jsonl(path)


def load_responses(path: str | Path) -> dict[str, str]:
    """Prompt → response from a JSONL file of ``{prompt, response}`` rows."""
    return {row["prompt"]: row["response"] for row in _read_jsonl(path)}


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Non-blank lines of a JSONL file, parsed."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def response_variants(response: str, mode: Mode) -> list[str]:
    """The texts an instruction is checked against: 1 (strict) or 8 (loose)."""
    if mode == "strict":
        return [response]
    if mode != "loose":
        raise ValueError(f"mode must be 'strict' or 'loose', got {mode!r}")
    lines = response.split("\n")
    cut = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    return cut + [v.replace("*", "") for v in cut]


def follows(instruction_id: str, kwargs: dict[str, Any], response: str, mode: Mode) -> bool:
    """Whether `response` follows one instruction in `mode`."""
    variants = response_variants(response, mode)
    return any(v.strip() and check(instruction_id, v, kwargs) for v in variants)


def evaluate_prompt(row: dict[str, Any], response: str, mode: Mode) -> PromptResult:
    """Verdicts for every instruction of one input row."""
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    verdicts = [follows(i, k or {}, response, mode) for i, k in zip(ids, kwargs)]
    return PromptResult(row.get("key"), row["prompt"], list(ids), verdicts, all(verdicts))


def evaluate_responses(inputs: list[dict[str, Any]], responses: dict[str, str], mode: Mode) -> list[PromptResult]:
    """Verdicts for every input whose prompt has a response, in input order."""
    return [evaluate_prompt(row, responses[row["prompt"]], mode) for row in inputs if row["prompt"] in responses]


def _rates(results: list[PromptResult]) -> tuple[float, float]:
    """(prompt-level accuracy, instruction-level accuracy)."""
    flat = [v for r in results for v in r.follow_instruction_list]
    prompt = sum(r.follow_all_instructions for r in results) / len(results) if results else 0.0
    return prompt, (sum(flat) / len(flat) if flat else 0.0)


def _per_instruction(strict: list[PromptResult], loose: list[PromptResult]) -> dict[str, dict[str, float]]:
    """Instruction id → {strict, loose, n} accuracies."""
    tally: dict[str, list[int]] = {}
    for s, lo in zip(strict, loose):
        verdicts = zip(s.follow_instruction_list, lo.follow_instruction_list)
        for iid, (vs, vl) in zip(s.instruction_id_list, verdicts):
            t = tally.setdefault(iid, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + vs, t[1] + vl, t[2] + 1
    return {k: {"strict": a / n, "loose": b / n, "n": n} for k, (a, b, n) in sorted(tally.items())}


def summarize(strict: list[PromptResult], loose: list[PromptResult]) -> dict[str, Any]:
    """Prompt- and instruction-level accuracies (strict, loose) and a per-instruction breakdown."""
    if [r.prompt for r in strict] != [r.prompt for r in loose]:
        raise ValueError("strict and loose results must cover the same prompts in the same order")
    ps, is_ = _rates(strict)
    pl, il = _rates(loose)
    return {
        "prompt_level_strict": ps,
        "instruction_level_strict": is_,
        "prompt_level_loose": pl,
        "instruction_level_loose": il,
        "num_prompts": len(strict),
        "num_instructions": sum(len(r.instruction_id_list) for r in strict),
        "per_instruction": _per_instruction(strict, loose),
    }


def _result_row(result: PromptResult, response: str | None) -> dict[str, Any]:
    """One output line in the reference's per-prompt format."""
    row = asdict(result)
    row.pop("key")
    if response is not None:
        row["response"] = response
    return row


def write_outputs(
    out_dir: str | Path,
    strict: list[PromptResult],
    loose: list[PromptResult],
    summary: dict[str, Any],
    responses: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write ifeval_strict.jsonl, ifeval_loose.jsonl and ifeval_summary.json into `out_dir`."""
    out = Path(out_dir)
    paths = {"strict": out / "ifeval_strict.jsonl", "loose": out / "ifeval_loose.jsonl"}
    for mode, results in (("strict", strict), ("loose", loose)):
        rows = (_result_row(r, responses.get(r.prompt) if responses else None) for r in results)
        write_atomic(paths[mode], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    paths["summary"] = write_atomic(out / "ifeval_summary.json", json.dumps(summary, indent=2) + "\n")
    return paths


def score_file(
    responses_path: str | Path, inputs_path: str | Path, out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Score a ``{prompt, response}`` JSONL against IFEval inputs; write outputs if `out_dir`."""
    inputs, responses = load_inputs(inputs_path), load_responses(responses_path)
    strict = evaluate_responses(inputs, responses, "strict")
    loose = evaluate_responses(inputs, responses, "loose")
    summary = summarize(strict, loose)
    summary["missing"] = sum(1 for row in inputs if row["prompt"] not in responses)
    if out_dir is not None:
        write_outputs(out_dir, strict, loose, summary, responses)
    return summary
