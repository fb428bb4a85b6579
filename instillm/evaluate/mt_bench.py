"""MT-Bench single-answer grading, as FastChat's llm_judge does it.

1. **Data** (`load_mt_bench(DIR)`): FastChat's `question.jsonl` (80 two-turn questions),
   `reference_answer_gpt4.jsonl` (GPT-4 answers, used for the math, reasoning and coding
   categories) and `judge_prompts.jsonl` (the published prompts: single-v1, single-math-v1 and
   their -multi-turn variants), read by path.
2. **Answers** (`generate_answers`): turn 1, then turn 2 with the model's own first answer in the
   conversation, with FastChat's per-category temperatures (or greedy). A `Respond` function
   generates them: `local_responder` (instillm's Generator with the model's saved chat
   template) or `backend_responder` (any `Backend`). Rows are FastChat answer rows.
3. **Grading** (`grade_answers`): one judge call per question and turn with the published
   prompt filled in (`user_prompt`), system prompt as a system message; the rating is the first
   "[[N]]" of the judgment, else the first "[N]" (FastChat's fallback); anything else is -1, a
   counted failure. **Difference from FastChat:** a rating outside 1..10 (e.g. "[[0]]", "[[15]]")
   is also -1 here; FastChat keeps it. Rows are FastChat judgment rows.
4. **Summary** (`summarize`): mean score over the rows that are not -1, per turn, per category
   and overall (FastChat's `show_result` averages), with the failures counted next to each.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instillm.config import Config, check_min, check_min_int
from instillm.data.io import write_atomic
from instillm.errors import ConfigError, DataError
from instillm.llm.backend import Backend, LLMRequest, Progress, SamplingParams, reply_text

QUESTION_FILE = "question.jsonl"
REFERENCE_FILE = "reference_answer_gpt4.jsonl"
PROMPTS_FILE = "judge_prompts.jsonl"
NEED_REF_CATS = ("math", "reasoning", "coding")
# FastChat gen_model_answer.py: sampling temperature per category (0.7 for any other category).
TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7
FAILED = -1  # FastChat's score of a judgment without a rating
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")


# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Question:
    """One MT-Bench question: id, category and its user turns."""

    question_id: int
    category: str
    turns: tuple[str, ...]


@dataclass(frozen=True)
class JudgePrompt:
    """A published judge prompt: `system_prompt`, `prompt_template` (str.format fields), `output_format`."""

    name: str
    system_prompt: str
    prompt_template: str
    output_format: str


@dataclass(frozen=True)
class MTBench:
    """Questions, reference answer turns by question id, and judge prompts by name."""

    questions: tuple[Question, ...]
    references: dict[int, tuple[str, ...]]
    prompts: dict[str, JudgePrompt]


def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-empty line; DataError names file:line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object")
        rows.append((n, obj))
    return rows


def _strings(value: Any, where: str) -> tuple[str, ...]:
    """A non-empty list of strings, or DataError naming `where`."""
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise DataError(f"{where}: expected a non-empty list of strings")
    return tuple(value)


def load_questions(path: str | Path) -> list[Question]:
    """MT-Bench questions {question_id, category, turns} of a JSONL file."""
    out = []
    for n, r in _jsonl(Path(path)):
        if not isinstance(r.get("question_id"), int) or not isinstance(r.get("category"), str):
            raise DataError(f"{path}:{n}: needs an integer question_id and a string category")
        out.append(Question(r["question_id"], r["category"], _strings(r.get("turns"), f"{path}:{n}: turns")))
    return out


def load_reference_answers(path: str | Path) -> dict[int, tuple[str, ...]]:
    """Reference answer turns (`choices[0].turns`) by question id."""
    refs: dict[Any, tuple[str, ...]] = {}  # keyed by the row's question_id as is (not checked to be an int)
    for n, r in _jsonl(Path(path)):
        choices = r.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise DataError(f"{path}:{n}: needs choices[0].turns")
        refs[r.get("question_id")] = _strings(choices[0].get("turns"), f"{path}:{n}: choices[0].turns")
    return refs


def load_judge_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    """Judge prompts by name (FastChat's judge_prompts.jsonl)."""
    prompts = {}
    for n, r in _jsonl(Path(path)):
        fields = ("name", "system_prompt", "prompt_template", "output_format")
        if not all(isinstance(r.get(k), str) for k in fields):
            raise DataError(f"{path}:{n}: a judge prompt needs string fields {', '.join(fields)}")
        prompts[r["name"]] = JudgePrompt(*(r[k] for k in fields))
    return prompts


def load_mt_bench(directory: str | Path) -> MTBench:
    """Questions, GPT-4 reference answers and judge prompts from FastChat's files in `directory`."""
    d = Path(directory)
    missing = [f for f in (QUESTION_FILE, REFERENCE_FILE, PROMPTS_FILE) if not (d / f).is_file()]
    if missing:
        raise DataError(f"MT-Bench data directory {d} lacks {', '.join(missing)} (FastChat's llm_judge data files)")
    return MTBench(
        tuple(load_questions(d / QUESTION_FILE)),
        load_reference_answers(d / REFERENCE_FILE),
        load_judge_prompts(d / PROMPTS_FILE),
    )


# --------------------------------------------------------------------------------------------
# answers

# Replies to conversations (lists of role/content dicts) sampled at one temperature (0: greedy).
Respond = Callable[[Sequence[Sequence[dict[str, str]]], float], list[str]]


def local_responder(
    model: Any, tokenizer: Any, renderer: Any = None, max_new_tokens: int = 1024, batch_size: int = 32, seed: int = 0
) -> Respond:
    """Replies from a local model through instillm's Generator (the model's saved chat template)."""
    from instillm.llm.generation import GenerateOptions, Generator

    gen = Generator(model, tokenizer, renderer)

    def respond(conversations: Sequence[Sequence[dict[str, str]]], temperature: float) -> list[str]:
        """Greedy at temperature 0 (FastChat: below 1e-4), else sampled with the seed."""
        opts = GenerateOptions.sampling(
            temperature, greedy_at=1e-4, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed
        )
        return [reply_text(o) for o in gen.generate_chat(conversations, opts)]

    return respond


def backend_responder(backend: Backend, max_tokens: int = 1024, seed: int | None = None) -> Respond:
    """Replies from any LLM backend (chat requests)."""

    def respond(conversations: Sequence[Sequence[dict[str, str]]], temperature: float) -> list[str]:
        """One chat request per conversation, answered in order."""
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        replies = backend.generate([LLMRequest(messages=tuple(c), params=params) for c in conversations])
        return [reply_text(r) for r in replies]

    return respond


def temperature_of(question: Question, greedy: bool = False) -> float:
    """FastChat's sampling temperature for the question's category (0 when `greedy`)."""
    return 0.0 if greedy else TEMPERATURES.get(question.category, DEFAULT_TEMPERATURE)


def _conversation(question: Question, answers: Sequence[str], turn: int) -> list[dict[str, str]]:
    """User turns 0..turn with the model's earlier answers between them."""
    msgs = []
    for t in range(turn + 1):
        msgs.append({"role": "user", "content": question.turns[t]})
        if t < turn:
            msgs.append({"role": "assistant", "content": answers[t]})
    return msgs


def generate_answers(
    questions: Sequence[Question],
    respond: Respond,
    model_id: str,
    greedy: bool = False,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """FastChat answer rows: every question's turns answered in order, each seeing the earlier answers."""
    answers: list[list[str]] = [[] for _ in questions]
    for turn in range(max((len(q.turns) for q in questions), default=0)):
        by_temp: dict[float, list[int]] = defaultdict(list)
        for i, q in enumerate(questions):
            if len(q.turns) > turn:
                by_temp[temperature_of(q, greedy)].append(i)
        for temp, idx in sorted(by_temp.items()):
            replies = respond([_conversation(questions[i], answers[i], turn) for i in idx], temp)
            for i, text in zip(idx, replies):
                answers[i].append(text)
            if progress:
                progress(len(idx))
    return [_answer_row(q, a, model_id) for q, a in zip(questions, answers)]


def _answer_row(question: Question, turns: list[str], model_id: str) -> dict[str, Any]:
    """One FastChat model-answer row (answer_id: a hash of model, question and answer)."""
    digest = hashlib.sha256(json.dumps([model_id, question.question_id, turns]).encode()).hexdigest()[:22]
    return {
        "question_id": question.question_id,
        "answer_id": digest,
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": time.time(),
    }


# --------------------------------------------------------------------------------------------
# grading


@dataclass(frozen=True)
class GradeConfig(Config):
    """Judge sampling: FastChat asks for at most 2048 tokens at temperature 0."""

    max_tokens: int = 2048
    temperature: float = 0.0

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min_int(problems, "max_tokens", v["max_tokens"])
        check_min(problems, "temperature", v["temperature"], 0)
        return problems


def judge_prompt_name(category: str, multi_turn: bool) -> str:
    """single-v1 / single-math-v1 (reference-based categories), with -multi-turn for turn 2."""
    name = "single-math-v1" if category in NEED_REF_CATS else "single-v1"
    return name + ("-multi-turn" if multi_turn else "")


def user_prompt(
    prompt: JudgePrompt, question: Question, answer: Sequence[str], reference: Sequence[str] | None, multi_turn: bool
) -> str:
    """The published template filled in as FastChat's run_judge_single does."""
    kwargs: dict[str, str] = {}
    if reference is not None:
        kwargs["ref_answer_1"] = reference[0]
        if multi_turn:
            kwargs["ref_answer_2"] = reference[1]
    if multi_turn:
        return prompt.prompt_template.format(
            question_1=question.turns[0], question_2=question.turns[1], answer_1=answer[0], answer_2=answer[1], **kwargs
        )
    return prompt.prompt_template.format(question=question.turns[0], answer=answer[0], **kwargs)


def parse_rating(judgment: str | None) -> float | int:
    """The first "[[N]]" of a judgment, else the first "[N]"; -1 if neither or N is outside 1..10."""
    text = judgment or ""
    match = _RATING.search(text) or _RATING_FALLBACK.search(text)
    if not match:
        return FAILED
    value = float(match.group(1))
    if not 1 <= value <= 10:
        return FAILED
    return int(value) if value.is_integer() and "." not in match.group(1) else value


@dataclass(frozen=True)
class _Match:
    """One judge call to make: question, answer turns, prompt name, reference, turn."""

    question: Question
    answer: tuple[str, ...]
    model: str
    prompt_name: str
    reference: tuple[str, ...] | None
    turn: int


def _reference(bench: MTBench, question: Question) -> tuple[str, ...] | None:
    """The reference answer turns a question's category is graded against (None: not reference-based)."""
    if question.category not in NEED_REF_CATS:
        return None
    ref = bench.references.get(question.question_id)
    if ref is None:
        raise DataError(
            f"{REFERENCE_FILE}: no reference answer for question {question.question_id} ({question.category} needs one)"
        )
    return ref


def _matches(bench: MTBench, questions: Sequence[Question], answers: Sequence[dict[str, Any]]) -> list[_Match]:
    """Turn-1 judgments of every question, then turn-2 judgments of the two-turn ones (FastChat's order)."""
    by_id = {a["question_id"]: a for a in answers}
    missing = [q.question_id for q in questions if q.question_id not in by_id]
    if missing:
        raise DataError(f"no answer for MT-Bench question(s) {missing}")
    return [
        _Match(
            q,
            tuple(by_id[q.question_id]["choices"][0]["turns"]),
            by_id[q.question_id]["model_id"],
            judge_prompt_name(q.category, multi),
            _reference(bench, q),
            2 if multi else 1,
        )
        for multi in (False, True)
        for q in questions
        if not multi or len(q.turns) == 2
    ]


def judge_messages(prompt: JudgePrompt, filled: str) -> list[dict[str, str]]:
    """The judge conversation: the prompt's system message, then the filled-in user prompt."""
    return [{"role": "system", "content": prompt.system_prompt}, {"role": "user", "content": filled}]


def grade_answers(
    bench: MTBench,
    answers: Sequence[dict[str, Any]],
    backend: Backend,
    config: GradeConfig | None = None,
    questions: Sequence[Question] | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """FastChat judgment rows (score -1 where the judgment has no rating) for every answer turn."""
    config = config or GradeConfig()
    matches = _matches(bench, questions if questions is not None else bench.questions, answers)
    missing = sorted({m.prompt_name for m in matches} - set(bench.prompts))
    if missing:
        raise DataError(f"{PROMPTS_FILE}: lacks the judge prompt(s) {', '.join(missing)}")
    filled = [
        user_prompt(bench.prompts[m.prompt_name], m.question, m.answer, m.reference, m.turn == 2) for m in matches
    ]
    params = SamplingParams(max_tokens=config.max_tokens, temperature=config.temperature)
    requests = [
        LLMRequest(messages=tuple(judge_messages(bench.prompts[m.prompt_name], u)), params=params)
        for m, u in zip(matches, filled)
    ]
    replies = backend.generate(requests, progress)
    return [
        {
            "question_id": m.question.question_id,
            "model": m.model,
            "judge": [backend.model, m.prompt_name],
            "user_prompt": u,
            "judgment": r.text,
            "score": parse_rating(r.text),
            "turn": m.turn,
            "tstamp": time.time(),
        }
        for m, u, r in zip(matches, filled, replies)
    ]


# --------------------------------------------------------------------------------------------
# summary and files


def _mean(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean score of the rows that are not failures, their count and the failures."""
    valid = [r["score"] for r in rows if r["score"] != FAILED]
    return {"score": sum(valid) / len(valid) if valid else None, "n": len(valid), "n_failures": len(rows) - len(valid)}


def summarize(judgments: Sequence[dict[str, Any]], questions: Sequence[Question]) -> dict[str, Any]:
    """Mean scores (failures excluded, as FastChat does) overall, per turn and per category."""
    category = {q.question_id: q.category for q in questions}
    by_turn: dict[str, list] = defaultdict(list)
    by_cat: dict[str, list] = defaultdict(list)
    for r in judgments:
        by_turn[str(r["turn"])].append(r)
        by_cat[category.get(r["question_id"], "(unknown)")].append(r)
    overall = _mean(judgments)
    models = sorted({r["model"] for r in judgments})
    judges = sorted({r["judge"][0] for r in judgments})
    return {
        "model": ", ".join(models),
        "judge": ", ".join(judges),
        "n_questions": len({r["question_id"] for r in judgments}),
        "n_judgments": len(judgments),
        **overall,
        "per_turn": {k: _mean(v) for k, v in sorted(by_turn.items())},
        "per_category": {k: _mean(v) for k, v in sorted(by_cat.items())},
    }


def load_answers(path: str | Path) -> list[dict[str, Any]]:
    """FastChat answer rows {question_id, model_id, choices[0].turns} of a JSONL file, e.g. another
    tool's answers or `reference_answer_gpt4.jsonl` (graded as if a model had written them)."""
    rows = []
    for n, r in _jsonl(Path(path)):
        choices = r.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise DataError(f"{path}:{n}: needs choices[0].turns")
        _strings(choices[0].get("turns"), f"{path}:{n}: choices[0].turns")
        if not isinstance(r.get("question_id"), int):
            raise DataError(f"{path}:{n}: needs an integer question_id")
        rows.append({**r, "model_id": str(r.get("model_id") or Path(path).stem)})
    if not rows:
        raise DataError(f"{path}: holds no answer rows")
    return rows


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON lines, whole or not at all."""
    return write_atomic(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _questions(bench: MTBench, limit: int | None) -> list[Question]:
    if limit is not None and limit < 1:
        raise ConfigError(f"limit: must be >= 1, got {limit}")
    return list(bench.questions[:limit])


def grade_mt_bench(
    bench: MTBench,
    answers: Sequence[dict[str, Any]],
    judge: Backend,
    out_dir: str | Path,
    config: GradeConfig | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Grade given answers and summarize; writes judgments.jsonl and mt_bench_summary.json."""
    questions = _questions(bench, limit)
    out = Path(out_dir)
    judgments = grade_answers(bench, answers, judge, config, questions, progress)
    write_jsonl(judgments, out / "judgments.jsonl")
    summary = summarize(judgments, questions)
    write_atomic(out / "mt_bench_summary.json", json.dumps(summary, indent=1))
    return summary


def run_mt_bench(
    bench: MTBench,
    respond: Respond,
    model_id: str,
    judge: Backend,
    out_dir: str | Path,
    config: GradeConfig | None = None,
    limit: int | None = None,
    greedy: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Answer, grade and summarize; writes answers.jsonl, judgments.jsonl and mt_bench_summary.json."""
    answers = generate_answers(_questions(bench, limit), respond, model_id, greedy, progress)
    write_jsonl(answers, Path(out_dir) / "answers.jsonl")
    return grade_mt_bench(bench, answers, judge, out_dir, config, limit, progress)
