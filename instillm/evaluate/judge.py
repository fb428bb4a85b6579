"""Pairwise LLM judge, AlpacaEval-style: which of two outputs to an instruction is better.

Every pair (reference output, model output) is judged **twice**, once in each order, through any
`instillm.llm.backend.Backend`: LLM judges prefer one position, and asking both ways cancels that
bias. A verdict names the preferred position; it is mapped back to the outputs and the two
orders are averaged, so when they disagree the pair is a tie (1.5).

Preferences use AlpacaEval's convention: `output_1` is the reference (`generator_1`), `output_2`
the model, 1 = reference better, 2 = model better, 1.5 = tie. The annotation rows written here are
AlpacaEval-format and `instillm.evaluate.winrate` reads them as is. Each row also keeps
`raw_completion` ({"original": judge text with output_1 shown first, "swapped": with output_2
first}), `order_preferences` (the preference for output_2 each order gave, None where unread)
and `failure` (why a text could not be read, else None).

Judge prompts (our wording, AlpacaEval's layout): `identifier` (default) asks for the identifier
of the better output, `m` or `M`, as `weighted_alpaca_eval_gpt4_turbo` does (which reads the
token's log-probabilities; we read the text); `ranking` asks for a ranking list of `model_1` /
`model_2`, as `alpaca_eval_gpt4` does. `parse_verdict` reads every format either prompt can
produce (see there); a text it cannot read is a counted failure, and a pair missing either
order's verdict has no preference (winrate.py skips it) but keeps both raw texts.

Two outputs that are identical are a tie without asking the judge (as AlpacaEval does).

A judge's failure modes are counted from those rows (`failure_modes`, in `summarize`): the share
of replies it could not read, the share of pairs whose verdict flips when the outputs swap places
(it followed the position, not the content) and the share of verdicts naming whichever output was
shown first. `agreement` compares our preferences with another judge's annotations of the same
pairs, e.g. AlpacaEval's GPT-4-turbo ones.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instillm.config import Config, check_choice, check_min, check_min_int
from instillm.data.io import write_atomic
from instillm.errors import ConfigError, DataError
from instillm.evaluate.winrate import WinRate, length_controlled, win_rate
from instillm.llm.backend import Backend, LLMRequest, Progress, SamplingParams

PROMPT_STYLES = ("identifier", "ranking")
FIRST, SECOND, TIE = 1.0, 2.0, 1.5  # preference of a position, in AlpacaEval's 1..2 convention


@dataclass(frozen=True)
class JudgeConfig(Config):
    """How to ask the judge: prompt `style`, sampling (`max_tokens`, `temperature`, `seed`)."""

    path_prefix = "judge"
    style: str = "identifier"
    max_tokens: int = 100
    temperature: float = 0.0
    seed: int | None = None

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_choice(problems, "style", v["style"], PROMPT_STYLES)
        check_min_int(problems, "max_tokens", v["max_tokens"])
        check_min(problems, "temperature", v["temperature"], 0)
        return problems

    def params(self) -> SamplingParams:
        """Sampling settings of every judge request."""
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)


# --------------------------------------------------------------------------------------------
# prompts

SYSTEM_PROMPT = (
    "You are a meticulous and fair evaluator of AI assistants. You compare the outputs that two "
    "language models gave to the same instruction and pick the one most people would prefer. "
    "Your choices are used to build a leaderboard of models."
)

_SHARED = (
    "I am building a leaderboard of large language models. Below is an instruction that was given to two models, "
    "and the output each of them produced. Decide which output a careful human reader would prefer: consider "
    "helpfulness, correctness, relevance and clarity. The order in which the outputs are listed means nothing, "
    "and a longer output is not better for being longer."
    '''

## Instruction

{{
    "instruction": """{instruction}""",
}}

## Model outputs

The outputs, in no particular order, each labelled with the identifier of the model that wrote it:

[
    {{
        "{key}": "{id_1}",
        "output": """{output_1}"""
    }},
    {{
        "{key}": "{id_2}",
        "output": """{output_2}"""
    }}
]

## Task

'''
)

_TASKS = {
    "identifier": "Reply with the identifier of the model whose output is better. Your reply is read as the name "
    "of that model, so it must be exactly one of these identifiers and nothing else (no quotes, "
    "no punctuation, no explanation): m or M.",
    "ranking": "Rank the two models by the quality of their outputs, rank 1 for the better one. Reply with a "
    "list of the model names and their ranks, and nothing else, exactly in this form:\n"
    "[\n    {'model': <model name>, 'rank': <1 or 2>},\n    {'model': <model name>, 'rank': <1 or 2>}\n]",
}
_NAMES = {"identifier": ("model_identifier", "m", "M"), "ranking": ("model", "model_1", "model_2")}


def pairwise_messages(instruction: str, first: str, second: str, style: str = "identifier") -> list[dict[str, str]]:
    """The chat messages that ask the judge to compare `first` (position 1) with `second` (position 2)."""
    if style not in PROMPT_STYLES:
        raise ConfigError(f"judge.style: {style!r} is not one of {', '.join(PROMPT_STYLES)}")
    key, id_1, id_2 = _NAMES[style]
    user = (
        _SHARED.format(instruction=instruction, key=key, id_1=id_1, id_2=id_2, output_1=first, output_2=second)
        + _TASKS[style]
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------------
# verdict parsing


@dataclass(frozen=True)
class Verdict:
    """What a judge text says: the preferred position (FIRST, SECOND or TIE) or an `error`."""

    preference: float | None
    error: str | None = None


_POSITION = {"m": FIRST, "M": SECOND, "model_1": FIRST, "model_2": SECOND}
_CLEAN = " \t\r\n`'\"*.:!#()[]"
_OUTPUT_AB = re.compile(r"Output \(([ab])\)")
_OUTPUT_AB_POSITION = {"a": FIRST, "b": SECOND}
_BRACKETS = re.compile(r"\[\[([ABC])\]\]")
_BRACKETS_POSITION = {"A": FIRST, "B": SECOND, "C": TIE}
_VERDICT_KEYS = ("model_identifier", "best_model", "best", "winner", "preferred")
# A sentence that ends by naming the identifier: "The model whose output is better is m." (small
# judges answer in a sentence rather than with the bare identifier).
_IS_IDENTIFIER = re.compile(r"\b(?i:is|be|model|answer)\s*:?\s*[`'\"*]*(m|M)[`'\"*]*\s*[.!]?\s*$", re.MULTILINE)
# A standalone identifier (not the "m" of "I'm"), and the sentence boundaries of a reply.
_MENTION = re.compile(r"(?<!\w)(?<!\w['’])[mM](?!\w)")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n")


def _identifier(text: str) -> set[float]:
    """The whole reply, or its last line, is `m` or `M` (the identifier prompt's answer)."""
    lines = [ln.strip(_CLEAN) for ln in text.strip().splitlines() if ln.strip(_CLEAN)]
    return {_POSITION[c] for c in (text.strip(_CLEAN), lines[-1] if lines else "") if c in ("m", "M")}


def _sentence_identifier(text: str) -> set[float]:
    """A line ending in "is m" / "is M" (or "answer: M", "model M"): the identifier named in a sentence."""
    return {_POSITION[x] for x in _IS_IDENTIFIER.findall(text)}


def _unclear_sentence(text: str) -> bool:
    """A sentence verdict in a reply with a sentence that names an identifier other than as its answer.

    "Model m is better than model M." or "m is better. The worse one is M." end in an identifier
    that is not the verdict; only replies whose every (non-question) sentence naming an identifier
    names exactly one, as its last word ("is m.", "No wait, it is M."), or is that identifier alone, are read.
    """
    if not _IS_IDENTIFIER.search(text):
        return False
    return not all(_names_one_identifier(s.strip()) for s in _SENTENCES.split(text))


def _names_one_identifier(sentence: str) -> bool:
    """No identifier, a question, a bare identifier, or exactly one identifier that ends the sentence."""
    n = len(_MENTION.findall(sentence))
    if n == 0 or sentence.endswith("?") or sentence.strip(_CLEAN) in ("m", "M"):
        return True
    return n == 1 and _IS_IDENTIFIER.search(sentence) is not None


def _output_ab(text: str) -> set[float]:
    """AlpacaFarm's "Output (a)" / "Output (b)"."""
    return {_OUTPUT_AB_POSITION[x] for x in _OUTPUT_AB.findall(text)}


def _brackets(text: str) -> set[float]:
    """MT-Bench pairwise "[[A]]" / "[[B]]" / "[[C]]" (tie)."""
    return {_BRACKETS_POSITION[x] for x in _BRACKETS.findall(text)}


def _literal(text: str, open_: str, close: str) -> Any:
    """The JSON or Python literal between the first `open_` and the last `close` (None if none)."""
    start, end = text.find(open_), text.rfind(close)
    if start < 0 or end <= start:
        return None
    chunk = text[start : end + 1]
    try:
        return json.loads(chunk)
    except ValueError:
        pass
    try:
        return ast.literal_eval(chunk)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _ranking_of(items: Any) -> float | None:
    """Position preferred by a ranking list [{'model': 'model_1', 'rank': 1}, ...] (m/M names too)."""
    if not isinstance(items, list):
        return None
    ranks: dict[float, Any] = {}
    for item in items:
        if isinstance(item, dict) and item.get("model") in _POSITION:
            ranks[_POSITION[item["model"]]] = item.get("rank")
    first, second = ranks.get(FIRST), ranks.get(SECOND)
    if first not in (1, 2) or isinstance(first, bool) or (second is not None and second == first):
        return None
    return FIRST if first == 1 else SECOND


def _ranking(text: str) -> set[float]:
    """A ranking list, bare or as the `ordered_models` / `ranking` field of an object."""
    obj = _literal(text, "{", "}")
    items = _literal(text, "[", "]")
    if isinstance(obj, dict):
        items = next((obj[k] for k in ("ordered_models", "ranking") if k in obj), items)
    found = _ranking_of(items)
    return set() if found is None else {found}


def _json_choice(text: str) -> set[float]:
    """A JSON object naming the better model: {"model_identifier": "M"}, {"winner": "model_1"}, ..."""
    obj = _literal(text, "{", "}")
    if not isinstance(obj, dict):
        return set()
    return {_POSITION[str(obj[k])] for k in _VERDICT_KEYS if k in obj and str(obj[k]) in _POSITION}


_FORMATS = (_identifier, _sentence_identifier, _output_ab, _brackets, _ranking, _json_choice)


def parse_verdict(text: str | None) -> Verdict:
    """The position a judge text prefers, read in every supported format; formats that disagree fail.

    Formats: the identifier `m` / `M` (the whole reply or its last line, or ending a line's
    sentence: "The model whose output is better is m."; a reply with a sentence naming an identifier
    otherwise, as in "m is better than M", is a failure), "Output (a)" /
    "Output (b)", "[[A]]" / "[[B]]" / "[[C]]" (C: tie), a ranking list of `model_1` / `model_2`
    (or m / M) as JSON or a Python literal, and a JSON object such as {"model_identifier": "m"}.
    """
    if text is None or not text.strip():
        return Verdict(None, "empty judge output")
    if _unclear_sentence(text):
        return Verdict(None, "unclear: a sentence names an identifier that is not its verdict (e.g. 'm beats M')")
    found = set().union(*(fmt(text) for fmt in _FORMATS))
    if not found:
        return Verdict(None, "no verdict found")
    if len(found) > 1:
        return Verdict(None, "ambiguous: the reply names more than one verdict")
    return Verdict(found.pop())


# --------------------------------------------------------------------------------------------
# both orders


def combine(original: float | None, swapped: float | None) -> float | None:
    """Preference for output_2 from the verdicts of both orders (positions), None if either is missing.

    `original` showed (output_1, output_2), `swapped` showed (output_2, output_1): a position
    preference p there is 3 - p for output_2. Disagreeing orders average to a tie.
    """
    if original is None or swapped is None:
        return None
    return (original + (3.0 - swapped)) / 2.0


def _requests(
    instructions: Sequence[str], out_1: Sequence[str], out_2: Sequence[str], todo: Sequence[int], config: JudgeConfig
) -> list[LLMRequest]:
    """For each pair in `todo`: the original order, then the swapped one."""
    params = config.params()
    reqs = []
    for i in todo:
        for first, second in ((out_1[i], out_2[i]), (out_2[i], out_1[i])):
            msgs = pairwise_messages(instructions[i], first, second, config.style)
            reqs.append(LLMRequest(messages=tuple(msgs), params=params))
    return reqs


def annotation_row(
    instruction: str, o1: str, o2: str, g1: str, g2: str, annotator: str, texts: tuple[str | None, str | None] | None
) -> dict[str, Any]:
    """One AlpacaEval-format row; `texts` are the judge replies of both orders (None: identical outputs)."""
    row: dict[str, Any] = {
        "instruction": instruction,
        "output_1": o1,
        "generator_1": g1,
        "output_2": o2,
        "generator_2": g2,
        "annotator": annotator,
    }
    if texts is None:
        return {**row, "preference": TIE, "raw_completion": None, "order_preferences": None, "failure": None}
    verdicts = [parse_verdict(t) for t in texts]
    errors = [f"{name}: {v.error}" for name, v in zip(("original", "swapped"), verdicts) if v.error]
    return {
        **row,
        "preference": combine(verdicts[0].preference, verdicts[1].preference),
        "raw_completion": {"original": texts[0], "swapped": texts[1]},
        "order_preferences": [verdicts[0].preference, _flip(verdicts[1].preference)],
        "failure": "; ".join(errors) or None,
    }


def _flip(position: float | None) -> float | None:
    """A swapped order's position preference as a preference for output_2."""
    return None if position is None else 3.0 - position


def judge_pairwise(
    instructions: Sequence[str],
    model_outputs: Sequence[str],
    reference_outputs: Sequence[str],
    backend: Backend,
    config: JudgeConfig | None = None,
    model_name: str = "model",
    reference_name: str = "reference",
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """AlpacaEval-format annotations of model vs reference outputs, each pair judged in both orders."""
    config = config or JudgeConfig()
    n = len(instructions)
    if not n == len(model_outputs) == len(reference_outputs):
        raise DataError(
            f"judge_pairwise: {n} instructions, {len(model_outputs)} model outputs and "
            f"{len(reference_outputs)} reference outputs; they must be the same length"
        )
    todo = [i for i in range(n) if model_outputs[i] != reference_outputs[i]]
    replies = backend.generate(_requests(instructions, reference_outputs, model_outputs, todo, config), progress)
    texts: dict[int, tuple[str, str]] = {i: (replies[2 * k].text, replies[2 * k + 1].text) for k, i in enumerate(todo)}
    annotator = f"{backend.model} ({config.style})"
    return [
        annotation_row(
            instructions[i], reference_outputs[i], model_outputs[i], reference_name, model_name, annotator, texts.get(i)
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------
# inputs, outputs and summary


def load_outputs(path: str | Path) -> list[dict[str, Any]]:
    """An AlpacaEval outputs file: a JSON list of {instruction, output, generator}; DataError names the row."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read outputs {path}: {e}") from e
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list of {{instruction, output, generator}}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise DataError(f"{path}: row {i + 1}: needs string fields 'instruction' and 'output'")
    return rows


def pair_outputs(
    model_rows: Sequence[dict[str, Any]], reference_rows: Sequence[dict[str, Any]], where: str = "reference outputs"
) -> tuple[list[str], list[str], list[str]]:
    """(instructions, model outputs, reference outputs) paired by instruction, in the model file's order."""
    refs: dict[str, str] = {}
    for r in reference_rows:
        refs.setdefault(r["instruction"], r["output"])
    missing = [r["instruction"] for r in model_rows if r["instruction"] not in refs]
    if missing:
        raise DataError(
            f"{where}: no output for {len(missing)} instruction(s) of the model outputs, e.g. {missing[0][:80]!r}"
        )
    instructions = [r["instruction"] for r in model_rows]
    return instructions, [r["output"] for r in model_rows], [refs[i] for i in instructions]


def generator_name(rows: Sequence[dict[str, Any]], default: str) -> str:
    """The `generator` of an outputs file (its first row), else `default`."""
    name = rows[0].get("generator") if rows else None
    return str(name) if name else default


def judge_output_files(
    model_path: str | Path,
    reference_path: str | Path,
    backend: Backend,
    config: JudgeConfig | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Annotations of two AlpacaEval outputs files paired by instruction (the first `limit` model rows)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit: must be >= 1, got {limit}")
    model_rows = load_outputs(model_path)[:limit]
    ref_rows = load_outputs(reference_path)
    instructions, outs, refs = pair_outputs(model_rows, ref_rows, where=str(reference_path))
    return judge_pairwise(
        instructions,
        outs,
        refs,
        backend,
        config,
        generator_name(model_rows, "model"),
        generator_name(ref_rows, "reference"),
        progress,
    )


def write_annotations(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write annotation rows as an AlpacaEval annotations JSON list (atomically: a failed write leaves no half file)."""
    return write_atomic(Path(path), json.dumps(list(rows), indent=1, ensure_ascii=False))


# --------------------------------------------------------------------------------------------
# failure modes of the judge


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


@dataclass(frozen=True)
class FailureModes:
    """How a judge fails, from the per-order verdicts of annotation rows (identical-output pairs excluded).

    - `parse_failure_rate` = `n_failed_orders / n_replies`: the share of judge replies, over both
      orders of every judged pair, that `parse_verdict` could not read.
    - `position_flip_rate` = `n_flips / n_both_read`: of the pairs whose two replies were both read,
      the share where the verdict for the *outputs* changed when the outputs swapped places, i.e.
      `order_preferences[0] != order_preferences[1]`. A content-following judge has 0; a judge that
      names the same position in both orders flips every pair (output_2 wins in one order, output_1
      in the other), and a winner in one order with a tie ([[C]]) in the other is a flip too.
    - `first_position_rate` = `n_first_position / n_decided_verdicts`: of the read verdicts that name
      a winner (ties left out), the share naming the output shown first (output_1 in the original
      order, output_2 in the swapped one): the position bias. 0.5 is unbiased, 1.0 always-first.

    Rates are None when their denominator is 0.
    """

    n_replies: int
    n_failed_orders: int
    n_both_read: int
    n_flips: int
    n_decided_verdicts: int
    n_first_position: int

    @property
    def parse_failure_rate(self) -> float | None:
        return _rate(self.n_failed_orders, self.n_replies)

    @property
    def position_flip_rate(self) -> float | None:
        return _rate(self.n_flips, self.n_both_read)

    @property
    def first_position_rate(self) -> float | None:
        return _rate(self.n_first_position, self.n_decided_verdicts)


def failure_modes(rows: Sequence[Mapping[str, Any]]) -> FailureModes:
    """Parse failures, position flips and first-position picks of annotation rows (see `FailureModes`).

    Reads each row's `order_preferences` ([original, swapped], both as the preference for output_2);
    rows without it (identical outputs, files of other annotators) have no replies to count.
    """
    replies = failed = both = flips = decided = first = 0
    for r in rows:
        orders = r.get("order_preferences")
        if not isinstance(orders, (list, tuple)) or len(orders) != 2:
            continue
        replies += 2
        failed += sum(p is None for p in orders)
        if None not in orders:
            both += 1
            flips += orders[0] != orders[1]
        for shown_first, p in zip((FIRST, SECOND), orders):  # output shown first: output_1, then output_2
            if p is not None and p != TIE:
                decided += 1
                first += p == shown_first
    return FailureModes(replies, failed, both, flips, decided, first)


# --------------------------------------------------------------------------------------------
# agreement with another judge's annotations


def decision(preference: Any) -> float | None:
    """FIRST (output_1 preferred), SECOND (output_2) or TIE from a 1..2 preference; None if there is none
    (missing, or not a number: "NA", NaN), which `agreement` counts as a missing decision.

    Continuous preferences (a weighted judge's probabilities) are thresholded: > 1.5 is output_2,
    < 1.5 output_1, exactly 1.5 a tie; 0 is a tie too (AlpacaEval's mark for identical outputs).
    """
    p = _number(preference)
    if p is None:
        return None
    if p == 0 or p == TIE:
        return TIE
    return SECOND if p > TIE else FIRST


def _number(value: Any) -> float | None:
    """`value` as a finite float; None for a missing, non-numeric ("NA") or non-finite one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if math.isfinite(p) else None


def _same(a: Any, b: Any) -> bool:
    return str(a).strip() == str(b).strip()


def agreement(rows: Sequence[Mapping[str, Any]], reference_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How often our annotations prefer the same output as `reference_rows` (e.g. AlpacaEval's GPT-4 ones).

    A row of ours is matched to a reference row with the same instruction and the same two outputs
    (whitespace-stripped), in either orientation: when the reference shows them the other way round
    (its output_1 is our output_2), its preference p counts as 3 - p. Both preferences become a
    `decision` (output_1, output_2 or tie). Keys:

    - `n_rows`, `n_matched`, `n_swapped` (matched the other way round), `n_unmatched`;
    - `n_missing`: matched, but ours or the reference's preference is missing (e.g. a parse failure);
    - `n_ties_ours`, `n_ties_reference`: matched pairs with both preferences where that side is a tie;
    - `n_decided`: both sides name a winner; `n_agree`: of those, the same output;
    - `agreement` = n_agree / n_decided (None when n_decided is 0);
    - `kappa`: Cohen's kappa of the two decisions on the decided pairs, (p_o - p_e) / (1 - p_e) with
      p_e from each side's share of output_2 wins (`output_2_share_ours`, `output_2_share_reference`);
      None when p_e is 1 (a side that always picks the same output and the other agreeing with it);
    - `reference_annotator`: the reference rows' `annotator`, if they name one.
    """
    by_instruction: dict[str, list[Mapping[str, Any]]] = {}
    for ref in reference_rows:
        by_instruction.setdefault(str(ref.get("instruction", "")).strip(), []).append(ref)
    counts = dict.fromkeys(("n_matched", "n_swapped", "n_missing", "n_ties_ours", "n_ties_reference"), 0)
    pairs: list[tuple[float, float]] = []
    for r in rows:
        ref_pref, matched = None, False
        for ref in by_instruction.get(str(r.get("instruction", "")).strip(), ()):
            if _same(ref.get("output_1"), r.get("output_1")) and _same(ref.get("output_2"), r.get("output_2")):
                ref_pref, matched = decision(ref.get("preference")), True
                break
            if _same(ref.get("output_1"), r.get("output_2")) and _same(ref.get("output_2"), r.get("output_1")):
                ref_pref, matched = _flip(decision(ref.get("preference"))), True
                counts["n_swapped"] += 1
                break
        if not matched:
            continue
        counts["n_matched"] += 1
        ours = decision(r.get("preference"))
        if ours is None or ref_pref is None:
            counts["n_missing"] += 1
            continue
        counts["n_ties_ours"] += ours == TIE
        counts["n_ties_reference"] += ref_pref == TIE
        if TIE not in (ours, ref_pref):
            pairs.append((ours, ref_pref))
    n = len(pairs)
    n_agree = sum(a == b for a, b in pairs)
    share_ours = _rate(sum(a == SECOND for a, _ in pairs), n)
    share_ref = _rate(sum(b == SECOND for _, b in pairs), n)
    kappa = None
    if share_ours is not None and share_ref is not None:
        expected = share_ours * share_ref + (1 - share_ours) * (1 - share_ref)
        kappa = (n_agree / n - expected) / (1 - expected) if expected < 1 else None
    annotators = {str(ref["annotator"]) for ref in reference_rows if ref.get("annotator")}
    return {
        "n_rows": len(rows),
        **counts,
        "n_unmatched": len(rows) - counts["n_matched"],
        "n_decided": n,
        "n_agree": n_agree,
        "agreement": _rate(n_agree, n),
        "kappa": kappa,
        "output_2_share_ours": share_ours,
        "output_2_share_reference": share_ref,
        "reference_annotator": ", ".join(sorted(annotators)) or None,
    }


# --------------------------------------------------------------------------------------------
# summary


@dataclass(frozen=True)
class JudgeSummary:
    """Counts of a judged set, its win rates (None when no pair got a preference), the judge's failure
    modes (`FailureModes`) and, when reference annotations were given, `agreement` with them."""

    n_pairs: int
    n_judged: int
    n_failures: int
    n_failed_orders: int
    n_identical: int
    win_rate: WinRate | None
    failure_modes: FailureModes | None = None
    agreement: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the counts, `win_rate`, the failure-mode rates and counts, `agreement`."""
        d = {k: getattr(self, k) for k in ("n_pairs", "n_judged", "n_failures", "n_failed_orders", "n_identical")}
        fm = self.failure_modes
        modes: dict[str, Any] = {}
        if fm is not None:
            modes = {
                "parse_failure_rate": fm.parse_failure_rate,
                "position_flip_rate": fm.position_flip_rate,
                "first_position_rate": fm.first_position_rate,
                "n_replies": fm.n_replies,
                "n_both_read": fm.n_both_read,
                "n_flips": fm.n_flips,
                "n_decided_verdicts": fm.n_decided_verdicts,
                "n_first_position": fm.n_first_position,
            }
        return {
            **d,
            "win_rate": self.win_rate.to_dict() if self.win_rate else None,
            **modes,
            "agreement": self.agreement,
        }


def summarize(
    rows: Sequence[dict[str, Any]], reference_annotations: Sequence[Mapping[str, Any]] | None = None
) -> JudgeSummary:
    """Failures, win rate ± standard error, discrete and length-controlled (winrate.py), and the judge's
    failure modes of annotations; with `reference_annotations`, also the `agreement` with them."""
    judged = [r for r in rows if r["preference"] is not None]
    modes = failure_modes(rows)
    identical = sum(r.get("raw_completion") is None for r in rows)
    rate = None
    if judged:
        plain = win_rate(judged)
        lc, coef = length_controlled(judged, None)
        rate = WinRate(**{**plain.to_dict(), "lc_win_rate": lc, "length_coefficient": coef})
    agree = None if reference_annotations is None else agreement(rows, reference_annotations)
    return JudgeSummary(
        len(rows), len(judged), len(rows) - len(judged), modes.n_failed_orders, identical, rate, modes, agree
    )
