"""Self-Instruct: bootstrap instruction data from a few human-written seed tasks and a teacher LLM.

The published pipeline (yizhongw/self-instruct), stage by stage, with its prompts, parsing and
filters; one run does all four scripts and resumes after a crash (`instillm.synth.pipeline`):

1. Instructions (`bootstrap_instructions.py`). Each request shows `num_prompt_instructions` (8)
   instructions as a numbered list: up to `num_machine_instructions` (2) sampled from the
   machine pool (fewer while the pool is smaller), the rest from the human seeds, shuffled, then
   "9." for the model to continue. The completion is split with the original regex
   `\\n\\d+\\s?\\. `, whitespace collapsed, stripped and `str.capitalize()`d (as the original, which
   also lower-cases the rest; `capitalize: false` keeps the case). When the completion was cut
   by `max_tokens` (finish_reason "length") its last instruction is dropped (`on_truncated`:
   "drop_last"; Alpaca's rule; the original bootstrap script drops the whole completion,
   "drop_all"). Filters, first failing names the reason: instruction_too_short/_too_long
   (`len(split())` outside 4..150), blacklisted_keyword (`\\b(word)\\b`, case-insensitive),
   write_a_program, starts_with_punctuation, starts_with_non_ascii (the first character), then
   rouge_l_duplicate: ROUGE-L F > 0.7 against the seeds and every instruction kept so far
   (`RougeLFilter`, the same decisions as rouge-score). Requests go out in batches of
   `request_batch_size` until the pool holds `num_instructions`; candidates parsed after that are
   rejected as target_reached. A teacher that keeps producing nothing usable stops the stage
   after `max_stalled_batches` batches in a row without a kept instruction (the original loops
   forever).
2. Classification or not (`identify_clf_or_not.py`): the original few-shot prompt, greedy,
   3 tokens, stop at "\\n" / "Task"; "Yes", "yes" or "YES" (stripped) means classification.
3. Instances (`generate_instances.py`): input-first prompt for generation tasks, output-first
   ("Class label: ...") for classification tasks, greedy, 350 / 300 tokens, stop at
   "Example {max_instances + 1}" / "Task:".
4. Post-processing (`prepare_for_finetuning.py`): the original parsers; the last instance of a
   truncated completion dropped (truncated); input_equals_output, empty_output, ends_with_colon
   (input or output ends with ":"); conflicting_outputs (one non-empty input, two outputs: the
   whole task is dropped); duplicate_instance; at most `max_instances` (5) per task, sampled
   (over_max_instances). A task left without instances is rejected as a task too
   (no_instances_parsed, no_valid_instances or conflicting_outputs).

The three few-shot prompts are settings too (`clf_template`, `input_first_template`,
`output_first_template`; default: the originals), e.g. to shorten them for a teacher with a small
context window.

Deviations, on purpose: the endpoint gets no presence/frequency penalty, logprobs or best_of
(`SamplingParams` has none); greedy decoding is `temperature=0, top_p=1` (the original's
`top_p=0` is not a valid value for most servers); the instance stage picks 300/350 tokens per
request rather than per batch; randomness comes from `step_rng` (seed + step), not one global
generator, so a resumed run makes the same choices. Each bootstrap request carries a sampling
seed derived from the run seed, so identical prompts are distinct requests (and cache entries).

Outputs: OUT.jsonl (canonical Examples, task "self_instruct", user turn "instruction\\n\\ninput"
like the Self-Instruct importer, meta: instruction, input, is_classification, instance,
task_index, round = the bootstrap batch that produced the instruction, teacher), OUT.rejects.jsonl
(`{stage, reason, detail, raw}` per dropped instruction, instance or task) and OUT.stats.json
(counts per stage; every stage's items = kept + rejected by reason).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from instillm.config import Config, check_choice, check_min, check_min_int, check_range
from instillm.curate.dedup import RougeLFilter
from instillm.curate.filters import SELF_INSTRUCT_BLACKLIST, blacklist_pattern, word_count
from instillm.data.formats import alpaca_user_turn
from instillm.data.importer import refuse_output_over_inputs
from instillm.data.io import read_rows
from instillm.data.schema import Example, from_prompt_completion
from instillm.errors import DataError, RowError
from instillm.llm.backend import Backend, LLMRequest, Progress, SamplingParams
from instillm.synth.pipeline import (
    Journal,
    batches,
    count_by,
    request_seed,
    step_rng,
    work_dir_for,
    write_outputs,
)
from instillm.synth.self_instruct_prompts import CLF_TEMPLATE, INPUT_FIRST_TEMPLATE, OUTPUT_FIRST_TEMPLATE

DEFAULT_SEEDS = Path(__file__).with_name("seed_tasks.jsonl")
PROMPT_MODES = ("completion", "chat")
TRUNCATION_RULES = ("drop_last", "drop_all", "keep")
CLF_YES = ("Yes", "yes", "YES")


@dataclass(frozen=True)
class SelfInstructConfig(Config):
    """Every setting of a Self-Instruct run; defaults are the published ones (see the module docstring)."""

    title = "invalid self-instruct config"
    num_instructions: int = 100
    num_prompt_instructions: int = 8
    num_machine_instructions: int = 2
    use_clf_seed_tasks_only: bool = False
    request_batch_size: int = 5
    prompt_mode: str = "completion"
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.5
    stop: tuple[str, ...] = ("\n\n", "\n16", "16.", "16 .")
    on_truncated: str = "drop_last"
    capitalize: bool = True
    min_words: int = 4
    max_words: int = 150
    blacklist: tuple[str, ...] = SELF_INSTRUCT_BLACKLIST
    rouge_threshold: float = 0.7
    clf_template: str = CLF_TEMPLATE
    clf_max_tokens: int = 3
    clf_stop: tuple[str, ...] = ("\n", "Task")
    input_first_template: str = INPUT_FIRST_TEMPLATE
    output_first_template: str = OUTPUT_FIRST_TEMPLATE
    instance_max_tokens: int = 350
    clf_instance_max_tokens: int = 300
    instance_temperature: float = 0.0
    max_instances: int = 5
    max_stalled_batches: int | None = 20
    max_batches: int | None = None
    seed: int = 42

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        """Problems with the values, each `field: message`."""
        p: list[str] = []
        for name in (
            "num_instructions",
            "num_prompt_instructions",
            "request_batch_size",
            "max_tokens",
            "clf_max_tokens",
            "instance_max_tokens",
            "clf_instance_max_tokens",
            "max_instances",
        ):
            check_min_int(p, name, v[name])
        if not 0 <= v["num_machine_instructions"] <= v["num_prompt_instructions"]:
            p.append("num_machine_instructions: must be between 0 and num_prompt_instructions")
        check_choice(p, "prompt_mode", v["prompt_mode"], PROMPT_MODES)
        check_choice(p, "on_truncated", v["on_truncated"], TRUNCATION_RULES)
        for name in ("temperature", "instance_temperature"):
            check_min(p, name, v[name], 0)
        check_range(p, "top_p", v["top_p"], 0, 1, "(]")
        check_range(p, "rouge_threshold", v["rouge_threshold"], 0, 1)
        for name in ("clf_template", "input_first_template", "output_first_template"):
            if not v[name].strip():
                p.append(f"{name}: must not be empty")
        if v["min_words"] > v["max_words"]:
            p.append(f"min_words: {v['min_words']} is larger than max_words {v['max_words']}")
        for name in ("max_stalled_batches", "max_batches"):
            check_min(p, name, v[name], 1, note=" or null (no limit)")
        return p


# ---------------------------------------------------------------- seed tasks


@dataclass(frozen=True)
class SeedTask:
    """One human-written task of the Self-Instruct seed format."""

    id: str
    name: str
    instruction: str
    instances: tuple[tuple[str, str], ...]
    is_classification: bool


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """Seed tasks `{id, name, instruction, instances:[{input, output}], is_classification}` (ours by default)."""
    path = DEFAULT_SEEDS if path is None else Path(path)
    tasks = []
    for row in read_rows(path):
        if row.error is not None:
            raise DataError(f"{path}:{row.line}: {row.error}")
        try:
            tasks.append(_seed_task(row.record))
        except RowError as e:
            raise DataError(f"{path}:{row.line}: {e} (expected the Self-Instruct seed format)") from e
    if not tasks:
        raise DataError(f"{path}: no seed tasks")
    return tasks


def _seed_task(rec: Any) -> SeedTask:
    """One seed row, checked."""
    if not isinstance(rec, dict):
        raise RowError("not_an_object", "a seed task must be a JSON object")
    inst = rec.get("instruction")
    if not isinstance(inst, str) or not inst.strip():
        raise RowError("missing_field", "'instruction' must be a non-empty string")
    if not isinstance(rec.get("is_classification"), bool):
        raise RowError("missing_field", "'is_classification' must be true or false")
    raw = rec.get("instances")
    if not isinstance(raw, list) or not all(isinstance(i, dict) and isinstance(i.get("output"), str) for i in raw):
        raise RowError("wrong_type", "'instances' must be a list of {input, output} objects")
    instances = tuple((str(i.get("input") or ""), i["output"]) for i in raw)
    return SeedTask(str(rec.get("id", "")), str(rec.get("name", "")), inst, instances, rec["is_classification"])


# ---------------------------------------------------------------- stage 1: instructions


def encode_prompt(instructions: Sequence[str], classification: bool = False) -> str:
    """The original numbered-list prompt, ending with the next number for the model to continue."""
    if classification:
        prompt = (
            "Come up with a series of classification tasks. Try to specify the possible output labels when possible.\n"
        )
    else:
        prompt = "Come up with a series of tasks:\n"
    for idx, instruction in enumerate(instructions):
        instruction = re.sub(r"\s+", " ", instruction).strip().rstrip(":")
        prompt += f"{idx + 1}. {instruction}\n"
    return prompt + f"{len(instructions) + 1}."


def split_instructions(text: str, capitalize: bool = True) -> list[str]:
    """The instructions of a completion: split on `\\n<number>. `, whitespace collapsed, empty pieces skipped."""
    out = []
    for inst in re.split(r"\n\d+\s?\. ", text):
        inst = re.sub(r"\s+", " ", inst).strip()
        if capitalize:
            inst = inst.capitalize()
        if inst:
            out.append(inst)
    return out


def mark_truncated(instructions: Sequence[str], finish_reason: str, rule: str) -> list[bool]:
    """Per instruction, whether the truncation rule drops it (only when finish_reason is "length")."""
    n = len(instructions)
    if finish_reason != "length" or rule == "keep" or n == 0:
        return [False] * n
    if rule == "drop_all":
        return [True] * n
    return [False] * (n - 1) + [True]


class InstructionFilter:
    """The original's instruction rules, in its order: `check(text)` is a RowError or None."""

    def __init__(self, config: SelfInstructConfig) -> None:
        """Compile the blacklist."""
        self.min_words, self.max_words = config.min_words, config.max_words
        self.blacklist = blacklist_pattern(config.blacklist)

    def check(self, inst: str) -> RowError | None:
        """The first rule `inst` breaks."""
        n = word_count(inst)
        if n < self.min_words:
            return RowError("instruction_too_short", f"{n} words < {self.min_words}")
        if n > self.max_words:
            return RowError("instruction_too_long", f"{n} words > {self.max_words}")
        m = self.blacklist.search(inst) if self.blacklist is not None else None
        if m is not None:
            return RowError("blacklisted_keyword", f"contains {m.group(1)!r}")
        if inst.startswith("Write a program"):
            return RowError("write_a_program", "starts with 'Write a program'")
        if inst[0] in string.punctuation:
            return RowError("starts_with_punctuation", f"starts with {inst[0]!r}")
        if not inst[0].isascii():
            return RowError("starts_with_non_ascii", f"starts with {inst[0]!r}")
        return None


class InstructionPool:
    """The machine instructions kept so far and the ROUGE-L filter over seeds + pool."""

    def __init__(self, seeds: Sequence[str], threshold: float, kept: Sequence[str] = ()) -> None:
        """The pool after `kept` (in order), e.g. rebuilt from a journal."""
        self.seeds = list(seeds)
        self.threshold = threshold
        self.rouge = RougeLFilter(threshold, against=self.seeds)
        self.instructions: list[str] = []
        for inst in kept:
            self.add(inst)

    def add(self, inst: str) -> None:
        """Keep `inst`."""
        self.rouge.add(inst, ("pool", len(self.instructions)))
        self.instructions.append(inst)

    def similar(self, inst: str) -> RowError | None:
        """rouge_l_duplicate when a seed or pooled instruction is too similar, else None."""
        hit = self.rouge.match(inst, best=True)
        if hit is None:
            return None
        f, label = hit
        if not isinstance(label, tuple):  # the pool labels every text ("against" | "pool", index)
            raise TypeError(f"unexpected ROUGE-L pool label {label!r}")
        kind, i = label
        other = self.seeds[i] if kind == "against" else self.instructions[i]
        what = "seed" if kind == "against" else "machine instruction"
        return RowError("rouge_l_duplicate", f"ROUGE-L F {f:.4f} > {self.threshold} with {what} {i}: {other[:120]!r}")


def _request(prompt: str, mode: str, **params: Any) -> LLMRequest:
    """A completion request, or the same prompt as one user message in chat mode."""
    sp = SamplingParams(**params)
    if mode == "chat":
        return LLMRequest(messages=({"role": "user", "content": prompt},), params=sp)
    return LLMRequest(prompt=prompt, params=sp)


def _bootstrap_batch(
    b: int, pool: InstructionPool, seeds: Sequence[str], cfg: SelfInstructConfig
) -> tuple[list[LLMRequest], list[int]]:
    """Batch b's requests and, per request, how many machine instructions its prompt shows."""
    rng = step_rng(cfg.seed, "bootstrap", b)
    requests, n_machine = [], []
    for i in range(cfg.request_batch_size):
        shown = rng.sample(pool.instructions, min(cfg.num_machine_instructions, len(pool.instructions)))
        n_machine.append(len(shown))
        shown += rng.sample(list(seeds), cfg.num_prompt_instructions - len(shown))
        rng.shuffle(shown)
        prompt = encode_prompt(shown, classification=cfg.use_clf_seed_tasks_only)
        requests.append(
            _request(
                prompt,
                cfg.prompt_mode,
                max_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                stop=cfg.stop,
                seed=request_seed(cfg.seed, "bootstrap", b, i),
            )
        )
    return requests, n_machine


def judge_candidates(
    text: str, finish_reason: str, pool: InstructionPool, rules: InstructionFilter, cfg: SelfInstructConfig
) -> list[tuple[str, RowError | None]]:
    """(instruction, reject reason or None) for each instruction of one completion; kept ones join `pool`."""
    out = []
    insts = split_instructions(text, cfg.capitalize)
    for inst, truncated in zip(insts, mark_truncated(insts, finish_reason, cfg.on_truncated)):
        err = RowError("truncated", "the completion hit max_tokens") if truncated else rules.check(inst)
        if err is None and len(pool.instructions) >= cfg.num_instructions:
            err = RowError("target_reached", f"the pool already holds {cfg.num_instructions} instructions")
        if err is None:
            err = pool.similar(inst)
        if err is None:
            pool.add(inst)
        out.append((inst, err))
    return out


def _bootstrap(
    backend: Backend, journal: Journal, seeds: Sequence[str], cfg: SelfInstructConfig, progress: Progress | None
) -> None:
    """Stage 1 until the pool is full or the stage stops; one commit per batch."""
    kept = [r["instruction"] for r in journal.of_stage("bootstrap") if r["kept"]]
    pool, rules = InstructionPool(seeds, cfg.rouge_threshold, kept), InstructionFilter(cfg)
    while "bootstrap_stopped" not in journal.state:
        b, stalled = journal.state.get("bootstrap_batches", 0), journal.state.get("bootstrap_stalled", 0)
        stop = _stop_reason(len(pool.instructions), b, stalled, cfg)
        if stop is not None:
            journal.commit([], bootstrap_stopped=stop)
            break
        requests, n_machine = _bootstrap_batch(b, pool, seeds, cfg)
        responses = backend.generate(requests, progress)
        records: list[dict[str, Any]] = []
        n_before = len(pool.instructions)
        for i, resp in enumerate(responses):
            sample = resp.samples[0]
            judged = judge_candidates(sample.text, sample.finish_reason, pool, rules, cfg)
            records.append(
                {
                    "stage": "bootstrap_request",
                    "batch": b,
                    "request": i,
                    "machine_shown": n_machine[i],
                    "finish_reason": sample.finish_reason,
                    "candidates": len(judged),
                }
            )
            records += [
                {
                    "stage": "bootstrap",
                    "batch": b,
                    "request": i,
                    "instruction": inst,
                    "kept": err is None,
                    "reason": err.reason if err else None,
                    "detail": err.detail if err else "",
                }
                for inst, err in judged
            ]
        grew = len(pool.instructions) > n_before
        journal.commit(records, bootstrap_batches=b + 1, bootstrap_stalled=0 if grew else stalled + 1)


def _stop_reason(n: int, b: int, stalled: int, cfg: SelfInstructConfig) -> str | None:
    """Why stage 1 ends now, or None to send another batch."""
    if n >= cfg.num_instructions:
        return "target_reached"
    if cfg.max_batches is not None and b >= cfg.max_batches:
        return "max_batches"
    if cfg.max_stalled_batches is not None and stalled >= cfg.max_stalled_batches:
        return "stalled"
    return None


# ---------------------------------------------------------------- stage 2: classification or not


def clf_prompt(instruction: str, template: str = CLF_TEMPLATE) -> str:
    """The original "Is it classification?" prompt for one instruction."""
    return template + " " + instruction.strip() + "\n" + "Is it classification?"


def parse_is_classification(text: str) -> bool:
    """The original decision: the stripped answer is Yes, yes or YES."""
    return text.strip() in CLF_YES


def _identify(backend: Backend, journal: Journal, cfg: SelfInstructConfig, progress: Progress | None) -> None:
    """Stage 2 for every kept instruction not yet judged; one commit per batch."""
    tasks = [r["instruction"] for r in journal.of_stage("bootstrap") if r["kept"]]
    for start, batch in batches(tasks, cfg.request_batch_size, len(journal.of_stage("clf"))):
        reqs = [
            _request(
                clf_prompt(t, cfg.clf_template),
                cfg.prompt_mode,
                max_tokens=cfg.clf_max_tokens,
                temperature=0.0,
                stop=cfg.clf_stop,
            )
            for t in batch
        ]
        responses = backend.generate(reqs, progress)
        journal.commit(
            [
                {
                    "stage": "clf",
                    "task": start + k,
                    "answer": r.text,
                    "is_classification": parse_is_classification(r.text),
                }
                for k, r in enumerate(responses)
            ]
        )


# ---------------------------------------------------------------- stage 3/4: instances


def instance_prompt(instruction: str, is_classification: bool, config: SelfInstructConfig | None = None) -> str:
    """Output-first prompt for classification tasks, input-first for the rest."""
    cfg = config or SelfInstructConfig()
    template = cfg.output_first_template if is_classification else cfg.input_first_template
    return template + " " + instruction.strip() + "\n"


def parse_input_output(text: str) -> tuple[str, str]:
    """(input, output) of one generated example, as the original splits on `Output:` / `Input:`."""
    if re.findall(r"Output\s*\d*\s*:", text):
        parts = re.split(r"Output\s*\d*\s*:", text)
        inst_input, inst_output = parts[0].strip(), parts[1].strip()
    else:
        inst_input, inst_output = "", text.strip()
    if re.findall(r"Input\s*\d*\s*:", inst_output):  # several input/output pairs in one example
        inst_output = re.split(r"Input\s*\d*\s*:", inst_output)[0].strip()
    inst_input = re.sub(r"^Input\s*\d*\s*:", "", inst_input).strip()
    return inst_input, inst_output


def parse_generation_instances(text: str) -> list[tuple[str, str]]:
    """Input-first completions: split on "Example N", or one pair when only "Output:" occurs; else none."""
    text = text.strip()
    if re.findall(r"Example\s?\d*\.?", text):
        pieces = [t.strip() for t in re.split(r"Example\s?\d*\.?", text) if t.strip()]
        return [parse_input_output(t) for t in pieces]
    if re.findall(r"Output\s*\d*\s*:", text):
        return [parse_input_output(text)]
    return []


def parse_classification_instances(text: str) -> list[tuple[str, str]]:
    """Output-first completions: (input, label) for each "Class label:" block; the label is its first line."""
    if "Class label:" not in text:
        return []
    out = []
    for block in text.split("Class label:")[1:]:
        fields = block.strip().split("\n", 1)
        label = fields[0].strip()
        inp = fields[1].strip() if len(fields) == 2 else ""
        out.append((inp, label))
    return out


def postprocess_instances(
    parsed: Sequence[tuple[str, str]], finish_reason: str, max_instances: int, rng: Any
) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """(kept instances, rejected ones with reason and detail), by the original's rules in its order."""
    rejected: list[dict[str, str]] = []

    def drop(inst: tuple[str, str], reason: str, detail: str) -> None:
        """Reject one instance."""
        rejected.append({"input": inst[0], "output": inst[1], "reason": reason, "detail": detail})

    items = list(parsed)
    if finish_reason == "length" and items:
        drop(items.pop(), "truncated", "the last instance of a completion that hit max_tokens")
    valid = []
    for inp, outp in items:
        if inp == outp:
            drop((inp, outp), "input_equals_output", "the input and the output are the same")
        elif outp == "":
            drop((inp, outp), "empty_output", "the output is empty")
        elif inp.strip().endswith(":") or outp.strip().endswith(":"):
            drop((inp, outp), "ends_with_colon", "the input or output ends with ':' (usually cut short)")
        else:
            valid.append((inp, outp))
    conflict = _conflicting_input(valid)
    if conflict is not None:
        for inst in valid:
            drop(inst, "conflicting_outputs", f"the input {conflict[:80]!r} has different outputs")
        return [], rejected
    unique: list[tuple[str, str]] = []
    for inst in valid:
        if inst in unique:
            drop(inst, "duplicate_instance", "the same input and output as an earlier instance")
        else:
            unique.append(inst)
    chosen = sorted(rng.sample(range(len(unique)), min(len(unique), max_instances)))
    for i, inst in enumerate(unique):
        if i not in chosen:
            drop(inst, "over_max_instances", f"at most {max_instances} instances per task (a random sample)")
    return [unique[i] for i in chosen], rejected


def _conflicting_input(instances: Sequence[tuple[str, str]]) -> str | None:
    """A non-empty input that appears with two different outputs, or None."""
    seen: dict[str, str] = {}
    for inp, outp in instances:
        if inp == "":
            continue
        if seen.setdefault(inp, outp) != outp:
            return inp
    return None


def _instances(backend: Backend, journal: Journal, cfg: SelfInstructConfig, progress: Progress | None) -> None:
    """Stages 3 and 4 for every classified task not yet done; one commit per batch."""
    tasks = [r["instruction"] for r in journal.of_stage("bootstrap") if r["kept"]]
    is_clf = [r["is_classification"] for r in journal.of_stage("clf")]
    for start, batch in batches(tasks, cfg.request_batch_size, len(journal.of_stage("instances"))):
        reqs = []
        for k, inst in enumerate(batch):
            clf = is_clf[start + k]
            reqs.append(
                _request(
                    instance_prompt(inst, clf, cfg),
                    cfg.prompt_mode,
                    max_tokens=cfg.clf_instance_max_tokens if clf else cfg.instance_max_tokens,
                    temperature=cfg.instance_temperature,
                    stop=(f"Example {cfg.max_instances + 1}", "Task:"),
                )
            )
        responses = backend.generate(reqs, progress)
        journal.commit(
            [
                _instance_record(start + k, r.samples[0].text, r.samples[0].finish_reason, is_clf[start + k], cfg)
                for k, r in enumerate(responses)
            ]
        )


def _instance_record(t: int, text: str, finish_reason: str, clf: bool, cfg: SelfInstructConfig) -> dict[str, Any]:
    """The journal record of task t's instances: kept, rejected, and the task's own reject reason."""
    parsed = parse_classification_instances(text) if clf else parse_generation_instances(text)
    kept, rejected = postprocess_instances(parsed, finish_reason, cfg.max_instances, step_rng(cfg.seed, "instances", t))
    reason = None
    if not parsed:
        reason = "no_instances_parsed"
    elif not kept:
        reason = (
            "conflicting_outputs"
            if any(r["reason"] == "conflicting_outputs" for r in rejected)
            else "no_valid_instances"
        )
    return {
        "stage": "instances",
        "task": t,
        "raw": text,
        "finish_reason": finish_reason,
        "parsed": len(parsed),
        "kept": [list(i) for i in kept],
        "rejected": rejected,
        "task_reason": reason,
    }


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class SelfInstructResult:
    """Where a run wrote its files, its stats, and whether it resumed an interrupted run."""

    output: Path
    rejects: Path
    stats_path: Path
    stats: dict[str, Any]
    resumed: bool


def run_self_instruct(
    backend: Backend,
    output: str | Path,
    seeds: str | Path | None = None,
    config: SelfInstructConfig | None = None,
    progress: Progress | None = None,
) -> SelfInstructResult:
    """The whole pipeline into `output` (resuming an interrupted run with the same settings)."""
    cfg = config or SelfInstructConfig()
    seeds_path = DEFAULT_SEEDS if seeds is None else Path(seeds)
    refuse_output_over_inputs([seeds_path], output)
    tasks = load_seed_tasks(seeds_path)
    seed_insts = [t.instruction for t in tasks if t.is_classification or not cfg.use_clf_seed_tasks_only]
    if len(seed_insts) < cfg.num_prompt_instructions:
        raise DataError(
            f"{seeds_path}: {len(seed_insts)} usable seed tasks; num_prompt_instructions "
            f"({cfg.num_prompt_instructions}) needs at least that many"
        )
    fingerprint = {
        "pipeline": "self_instruct",
        "config": asdict(cfg),
        "model": backend.model,
        "seeds_sha256": hashlib.sha256(seeds_path.read_bytes()).hexdigest(),
    }
    journal = Journal(work_dir_for(output), fingerprint)
    _bootstrap(backend, journal, seed_insts, cfg, progress)
    _identify(backend, journal, cfg, progress)
    _instances(backend, journal, cfg, progress)
    examples, rejects, stats = assemble(journal, backend.model)
    out, rej, st = write_outputs(output, examples, rejects, stats)
    return SelfInstructResult(out, rej, st, stats, journal.resumed)


def assemble(journal: Journal, teacher: str) -> tuple[list[Example], list[dict[str, Any]], dict[str, Any]]:
    """Examples, rejects and stats of a finished run, from its journal alone."""
    boot = journal.of_stage("bootstrap")
    kept_boot = [r for r in boot if r["kept"]]
    clf = journal.of_stage("clf")
    inst = journal.of_stage("instances")
    examples: list[Example] = []
    rejects = [
        {"stage": "bootstrap", "reason": r["reason"], "detail": r["detail"], "raw": r["instruction"]}
        for r in boot
        if not r["kept"]
    ]
    for rec in inst:
        task = kept_boot[rec["task"]]
        examples += [
            _example(task, rec["task"], k, i, o, clf[rec["task"]]["is_classification"], teacher)
            for k, (i, o) in enumerate(rec["kept"])
        ]
        rejects += [
            {
                "stage": "instances",
                "reason": r["reason"],
                "detail": r["detail"],
                "raw": {"instruction": task["instruction"], "input": r["input"], "output": r["output"]},
            }
            for r in rec["rejected"]
        ]
        if rec["task_reason"] is not None:
            rejects.append(
                {
                    "stage": "instances_task",
                    "reason": rec["task_reason"],
                    "detail": f"task {rec['task']}: {rec['parsed']} instance(s) parsed, none kept",
                    "raw": {"instruction": task["instruction"], "completion": rec["raw"]},
                }
            )
    return examples, rejects, _stats(journal, boot, clf, inst, len(examples))


def _example(task: Mapping[str, Any], t: int, k: int, inp: str, outp: str, clf: bool, teacher: str) -> Example:
    """The canonical Example of instance k of task t."""
    user, meta = alpaca_user_turn(task["instruction"], inp)
    meta = {
        "instruction": task["instruction"],
        "input": inp,
        **meta,
        "is_classification": clf,
        "instance": k,
        "task_index": t,
        "round": task["batch"],
        "teacher": teacher,
    }
    return from_prompt_completion(
        user, outp, id=f"self-instruct-{t:05d}-{k}", source="self_instruct", task="self_instruct", meta=meta
    )


def _stats(journal: Journal, boot: list, clf: list, inst: list, n_examples: int) -> dict[str, Any]:
    """Counts per stage; each stage's items = kept + sum(rejected by reason)."""
    requests = journal.of_stage("bootstrap_request")
    all_rejected = [r for rec in inst for r in rec["rejected"]]
    return {
        "bootstrap": {
            "requests": len(requests),
            "truncated_completions": sum(r["finish_reason"] == "length" for r in requests),
            "candidates": len(boot),
            "kept": sum(r["kept"] for r in boot),
            "rejected": count_by(r for r in boot if not r["kept"]),
            "stopped": journal.state.get("bootstrap_stopped"),
        },
        "classification": {
            "tasks": len(clf),
            "classification": sum(r["is_classification"] for r in clf),
            "generation": sum(not r["is_classification"] for r in clf),
        },
        "instances": {
            "tasks": len(inst),
            "tasks_kept": sum(r["task_reason"] is None for r in inst),
            "tasks_rejected": count_by(inst, "task_reason"),
            "parsed": sum(r["parsed"] for r in inst),
            "kept": sum(len(r["kept"]) for r in inst),
            "rejected": count_by(all_rejected),
        },
        "examples": n_examples,
    }
