"""Evol-Instruct (WizardLM): make instructions harder round by round with a teacher LLM.

Every single-turn example of the input is a lineage. In each of `rounds` rounds, each lineage's
current instruction gets one operation drawn at random (seeded per round and lineage) from
`operations`: in-depth add_constraints, deepen, concretize, increase_reasoning, complicate_input
(with a data format drawn from `input_formats`), or in-breadth breadth (prompts in
`instillm.synth.evol_prompts`). The teacher rewrites the instruction, then answers the rewritten
one. The paper's elimination rules decide whether the evolution failed; checks run in this order
(the first that fails names the reason) so that no request is spent on an evolution already failed:

  empty_evolution          the rewritten instruction is empty
  copied_template_words    it copies words of the evolving prompt ("#Rewritten Prompt#",
                           "given prompt", ...; `template_phrases`, case-insensitive)
  no_information_gain      the teacher, asked the paper's equality prompt, answers "Equal"
  unclear_judgement        the equality answer says neither "Equal" nor "Not Equal"
                           (`on_unclear_judgement`: "eliminate", as h2o-wizardlm treats
                           anything but "not equal", or "keep")
  sorry_short_response     the response contains "sorry" and has fewer than 80 words
  stopwords_only_response  the response holds only punctuation and stop words (or nothing)

A failed evolution leaves the lineage's instruction as it was, to be evolved again next round (as
WizardLM). Each kept evolution is one output Example (user: evolved instruction, assistant: the
teacher's response; task "evol_instruct"; meta: round, operation, input_format, parent_id,
root_id, evol_depth, teacher); failed ones go to OUT.rejects.jsonl with their reason, as do input
rows that are not single-turn (not_single_turn) or reuse an earlier row's id (duplicate_id), with
file and line. OUT.stats.json holds, per round, attempted = kept + eliminated by reason, and the
split per operation.

Sampling follows WizardLM's `openai_access.py`: system prompt "You are a helpful assistant.",
temperature 1, top_p 0.95, max_tokens 2048, for evolving and for responses; the judge is greedy.
The run is resumable (`instillm.synth.pipeline`): one commit per batch of `request_batch_size`
lineages.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from instillm.config import Config, check_choice, check_min, check_min_int, check_range
from instillm.curate.common import iter_canonical
from instillm.curate.filters import EN_STOPWORDS, word_count
from instillm.data.importer import refuse_output_over_inputs
from instillm.data.schema import Example, Message
from instillm.errors import DataError, RowError
from instillm.llm.backend import Backend, LLMRequest, Progress, SamplingParams, reply_text
from instillm.synth.evol_prompts import OPERATIONS, equality_prompt, evolve_prompt
from instillm.synth.pipeline import Journal, batches, count_by, request_seed, step_rng, work_dir_for, write_outputs

DEFAULT_INPUT_FORMATS = (
    "XML data",
    "SQL database",
    "Python code",
    "HTML page",
    "JSON data",
    "Shell cmd",
    "Markdown",
    "LaTeX",
    "C++ code",
    "Excel table",
)
TEMPLATE_PHRASES = (
    "#The Given Prompt#",
    "#Rewritten Prompt#",
    "#Given Prompt#",
    "#Created Prompt#",
    "given prompt",
    "rewritten prompt",
    "created prompt",
)
UNCLEAR_RULES = ("eliminate", "keep")
_TOKEN = re.compile(r"[^\W_]+")
_NOT_EQUAL = re.compile(r"\bnot[\s_-]*equal\b|\bunequal\b", re.IGNORECASE)
_EQUAL = re.compile(r"\bequal\b", re.IGNORECASE)


@dataclass(frozen=True)
class EvolConfig(Config):
    """Every setting of an Evol-Instruct run; defaults as published (see the module docstring)."""

    title = "invalid evol config"
    rounds: int = 4
    operations: tuple[str, ...] = OPERATIONS
    input_formats: tuple[str, ...] = DEFAULT_INPUT_FORMATS
    system_prompt: str = "You are a helpful assistant."
    max_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 0.95
    response_max_tokens: int = 2048
    judge: bool = True
    judge_max_tokens: int = 16
    on_unclear_judgement: str = "eliminate"
    sorry_max_words: int = 80
    template_phrases: tuple[str, ...] = TEMPLATE_PHRASES
    request_batch_size: int = 32
    seed: int = 42

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        """Problems with the values, each `field: message`."""
        p: list[str] = []
        for name in (
            "rounds",
            "max_tokens",
            "response_max_tokens",
            "judge_max_tokens",
            "request_batch_size",
            "sorry_max_words",
        ):
            check_min_int(p, name, v[name])
        bad = [op for op in v["operations"] if op not in OPERATIONS]
        if bad or not v["operations"]:
            p.append(f"operations: {bad or 'none'} — choose from {list(OPERATIONS)}")
        if "complicate_input" in v["operations"] and not v["input_formats"]:
            p.append("input_formats: complicate_input needs at least one data format")
        check_choice(p, "on_unclear_judgement", v["on_unclear_judgement"], UNCLEAR_RULES)
        check_min(p, "temperature", v["temperature"], 0)
        check_range(p, "top_p", v["top_p"], 0, 1, "(]")
        return p


# ---------------------------------------------------------------- elimination rules (pure)


def copied_template_phrase(evolved: str, phrases: Sequence[str] = TEMPLATE_PHRASES) -> str | None:
    """The first evolving-prompt phrase the evolved instruction contains (case-insensitive), or None."""
    low = evolved.lower()
    return next((ph for ph in phrases if ph.lower() in low), None)


def judge_verdict(text: str) -> str | None:
    """ "not_equal", "equal", or None when the judge's answer says neither."""
    if _NOT_EQUAL.search(text):
        return "not_equal"
    if _EQUAL.search(text):
        return "equal"
    return None


def response_problem(response: str, sorry_max_words: int = 80) -> RowError | None:
    """The paper's response rules: short and sorry, or only punctuation and stop words."""
    n = word_count(response)
    if "sorry" in response.lower() and n < sorry_max_words:
        return RowError("sorry_short_response", f"contains 'sorry' and has {n} words < {sorry_max_words}")
    tokens = _TOKEN.findall(response.lower())
    if all(t in EN_STOPWORDS for t in tokens):
        return RowError("stopwords_only_response", f"only punctuation and stop words ({len(tokens)} word(s))")
    return None


def evolution_problem(evolved: str, config: EvolConfig) -> RowError | None:
    """The checks on the evolved instruction itself, before any request about it."""
    if not evolved.strip():
        return RowError("empty_evolution", "the teacher returned an empty instruction")
    phrase = copied_template_phrase(evolved, config.template_phrases)
    if phrase is not None:
        return RowError("copied_template_words", f"contains {phrase!r} from the evolving prompt")
    return None


def judgement_problem(answer: str, config: EvolConfig) -> RowError | None:
    """no_information_gain / unclear_judgement from the judge's answer, or None."""
    verdict = judge_verdict(answer)
    if verdict == "equal":
        return RowError("no_information_gain", f"the judge answered {answer.strip()[:40]!r}")
    if verdict is None and config.on_unclear_judgement == "eliminate":
        return RowError("unclear_judgement", f"the judge answered {answer.strip()[:40]!r}, not Equal / Not Equal")
    return None


# ---------------------------------------------------------------- lineages


@dataclass
class Lineage:
    """One input example and its latest kept evolution."""

    root: Example
    instruction: str
    current_id: str
    depth: int = 0


def read_lineages(path: str | Path) -> tuple[list[Lineage], list[dict[str, Any]]]:
    """Lineages of the single-turn rows of a canonical JSONL file, and rejects for the other rows."""
    lineages, rejects = [], []
    seen: dict[str, int] = {}
    for row, ex in iter_canonical(path):
        turns = [m for m in ex.prompt_messages if m.role != "system"]
        err = None
        if len(turns) != 1:
            err = RowError("not_single_turn", f"{len(turns)} prompt turns; Evol-Instruct evolves one instruction")
        elif ex.id in seen:  # evolved ids are derived from root ids, so they must be unique
            err = RowError("duplicate_id", f"id {ex.id!r} already used on line {seen[ex.id]}")
        if err is not None:
            rejects.append(
                {
                    "stage": "input",
                    "file": str(path),
                    "line": row.line,
                    "reason": err.reason,
                    "detail": err.detail,
                    "raw": row.raw,
                }
            )
            continue
        seen[ex.id] = row.line
        lineages.append(Lineage(ex, turns[0].content, ex.id))
    if not lineages:
        raise DataError(f"{path}: no single-turn example to evolve")
    return lineages, rejects


def _replay(lineages: list[Lineage], records: Sequence[Mapping[str, Any]]) -> None:
    """Bring lineages up to date with the committed evolutions."""
    for r in records:
        if r["kept"]:
            lin = lineages[r["lineage"]]
            lin.instruction, lin.current_id, lin.depth = r["evolved"], r["id"], lin.depth + 1


# ---------------------------------------------------------------- one batch


def _chat(cfg: EvolConfig, content: str, **params: Any) -> LLMRequest:
    """A chat request with the configured system prompt."""
    msgs = ({"role": "system", "content": cfg.system_prompt},) if cfg.system_prompt else ()
    return LLMRequest(messages=(*msgs, {"role": "user", "content": content}), params=SamplingParams(**params))


def _plan(cfg: EvolConfig, r: int, i: int) -> tuple[str, str]:
    """(operation, data format) for lineage i in round r: the same on every resume."""
    rng = step_rng(cfg.seed, "evol", r, i)
    op = rng.choice(cfg.operations)
    return op, rng.choice(cfg.input_formats) if op == "complicate_input" else ""


def _evolve_batch(
    backend: Backend, cfg: EvolConfig, r: int, start: int, batch: Sequence[Lineage], progress: Progress | None
) -> list[dict[str, Any]]:
    """Evolve, judge, answer and check one batch of lineages; one journal record each."""
    recs = [_record(cfg, r, start + k, lin) for k, lin in enumerate(batch)]
    _evolve(backend, cfg, r, recs, progress)
    if cfg.judge:
        _judge(backend, cfg, [x for x in recs if x["reason"] is None], progress)
    _answer(backend, cfg, r, [x for x in recs if x["reason"] is None], progress)
    for x, lin in zip(recs, batch):
        x["kept"] = x["reason"] is None
        x["id"] = f"{lin.root.id}-evol{r}" if x["kept"] else None
        x["depth"] = lin.depth + 1 if x["kept"] else None
    return recs


def _record(cfg: EvolConfig, r: int, lineage: int, lin: Lineage) -> dict[str, Any]:
    """The journal record of one evolution before it runs: its plan and its parent."""
    op, fmt = _plan(cfg, r, lineage)
    return {
        "stage": "evol",
        "round": r,
        "lineage": lineage,
        "operation": op,
        "input_format": fmt,
        "parent": lin.instruction,
        "parent_id": lin.current_id,
        "evolved": None,
        "judge": None,
        "response": None,
        "kept": False,
        "reason": None,
        "detail": "",
    }


def _evolve(backend: Backend, cfg: EvolConfig, r: int, recs: list[dict[str, Any]], progress: Progress | None) -> None:
    """Ask the teacher for each record's evolved instruction and check it."""
    reqs = [
        _chat(
            cfg,
            evolve_prompt(x["operation"], x["parent"], x["input_format"]),
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=request_seed(cfg.seed, "evol", r, x["lineage"]),
        )
        for x in recs
    ]
    for x, resp in zip(recs, backend.generate(reqs, progress)):
        x["evolved"] = reply_text(resp)
        _fail(x, evolution_problem(x["evolved"], cfg))


def _judge(backend: Backend, cfg: EvolConfig, live: list[dict[str, Any]], progress: Progress | None) -> None:
    """Ask the judge whether each evolved instruction differs from its parent (the equality check)."""
    reqs = [
        _chat(cfg, equality_prompt(x["parent"], x["evolved"]), max_tokens=cfg.judge_max_tokens, temperature=0.0)
        for x in live
    ]
    for x, resp in zip(live, backend.generate(reqs, progress)):
        x["judge"] = resp.text
        _fail(x, judgement_problem(resp.text, cfg))


def _answer(backend: Backend, cfg: EvolConfig, r: int, live: list[dict[str, Any]], progress: Progress | None) -> None:
    """Ask the teacher to answer each surviving evolved instruction and check the answer."""
    reqs = [
        _chat(
            cfg,
            x["evolved"],
            max_tokens=cfg.response_max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=request_seed(cfg.seed, "response", r, x["lineage"]),
        )
        for x in live
    ]
    for x, resp in zip(live, backend.generate(reqs, progress)):
        x["response"] = reply_text(resp)
        _fail(x, response_problem(x["response"], cfg.sorry_max_words))


def _fail(rec: dict[str, Any], err: RowError | None) -> None:
    """Record the first failure of an evolution."""
    if err is not None and rec["reason"] is None:
        rec["reason"], rec["detail"] = err.reason, err.detail


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class EvolResult:
    """Where a run wrote its files, its stats, and whether it resumed an interrupted run."""

    output: Path
    rejects: Path
    stats_path: Path
    stats: dict[str, Any]
    resumed: bool


def run_evol(
    backend: Backend,
    data: str | Path,
    output: str | Path,
    config: EvolConfig | None = None,
    progress: Progress | None = None,
) -> EvolResult:
    """Evolve every single-turn example of `data` for `config.rounds` rounds into `output` (resumable)."""
    cfg = config or EvolConfig()
    refuse_output_over_inputs([data], output)
    lineages, input_rejects = read_lineages(data)
    fingerprint = {
        "pipeline": "evol_instruct",
        "config": asdict(cfg),
        "model": backend.model,
        "data_sha256": hashlib.sha256(Path(data).read_bytes()).hexdigest(),
    }
    journal = Journal(work_dir_for(output), fingerprint)
    _replay(lineages, journal.of_stage("evol"))
    while journal.state.get("round", 1) <= cfg.rounds:
        r = journal.state.get("round", 1)
        for start, batch in batches(lineages, cfg.request_batch_size, journal.state.get("next", 0)):
            recs = _evolve_batch(backend, cfg, r, start, batch, progress)
            journal.commit(recs, round=r, next=start + len(batch))
            _replay(lineages, recs)
        journal.commit([], round=r + 1, next=0)
    examples = [_example(lineages, x, backend.model) for x in journal.of_stage("evol") if x["kept"]]
    rejects = input_rejects + [_reject(x) for x in journal.of_stage("evol") if not x["kept"]]
    stats = evol_stats(journal.of_stage("evol"), cfg.rounds, len(lineages), input_rejects)
    out, rej, st = write_outputs(output, examples, rejects, stats)
    return EvolResult(out, rej, st, stats, journal.resumed)


def _example(lineages: Sequence[Lineage], x: Mapping[str, Any], teacher: str) -> Example:
    """The Example of one kept evolution."""
    root = lineages[x["lineage"]].root
    meta = {
        "round": x["round"],
        "operation": x["operation"],
        "input_format": x["input_format"],
        "parent_id": x["parent_id"],
        "root_id": root.id,
        "evol_depth": x["depth"],
        "teacher": teacher,
    }
    return Example(
        messages=(Message("user", x["evolved"]), Message("assistant", x["response"])),
        id=x["id"],
        source=root.source,
        task="evol_instruct",
        category=root.category,
        meta=meta,
    )


def _reject(x: Mapping[str, Any]) -> dict[str, Any]:
    """The rejects-file row of a failed evolution."""
    raw = {k: x[k] for k in ("round", "lineage", "operation", "parent", "evolved", "judge", "response")}
    return {"stage": "evol", "reason": x["reason"], "detail": x["detail"], "raw": raw}


def evol_stats(
    records: Sequence[Mapping[str, Any]], rounds: int, n_lineages: int, input_rejects: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Per round: attempted = kept + eliminated by reason, and the same split per operation."""
    per_round = []
    for r in range(1, rounds + 1):
        recs = [x for x in records if x["round"] == r]
        ops = {
            op: {
                "attempted": sum(x["operation"] == op for x in recs),
                "kept": sum(x["operation"] == op and x["kept"] for x in recs),
            }
            for op in sorted({x["operation"] for x in recs})
        }
        per_round.append(
            {
                "round": r,
                "attempted": len(recs),
                "kept": sum(x["kept"] for x in recs),
                "eliminated": count_by(x for x in recs if not x["kept"]),
                "by_operation": ops,
            }
        )
    return {
        "input": {"rows": n_lineages + len(input_rejects), "lineages": n_lineages, "rejected": count_by(input_rejects)},
        "rounds": per_round,
        "examples": sum(x["kept"] for x in records),
    }
