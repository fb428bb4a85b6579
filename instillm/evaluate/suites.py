"""The evaluation suites `instillm run` can add before and after training: settings and runners.

A run config's optional `suites:` section turns each suite on by giving its settings (absent:
off). The keys follow `instillm eval`'s flags (`--inputs`, `--data`, `--heldout-clusters`,
`--limit`, `--max-new-tokens`, `--batch-size`, `--length-normalize`, `--reference`,
`--judge-style`, `--judge-max-tokens`); a judge is an `instillm.llm.backend.BackendConfig`, key
for key (`kind`, `model`, `base_url`, `api_key`, `cache`, ...):

    suites:
      ifeval: {inputs: ../shared/data/ifeval/input_data.jsonl, limit: 50, max_new_tokens: 256}
      zeroshot: {data: ../shared/data/t0_multitask, heldout_clusters: [sentiment], limit: 5}
      mt_bench: {data: ../shared/data/mt_bench, limit: 4, judge: {kind: openai, base_url: URL, model: NAME}}
      judge: {reference: gpt4_outputs.json, limit: 20, judge: {kind: openai, base_url: URL, model: NAME}}

Paths are checked when the config is read, so a missing file fails before any compute. Every
runner takes the model to evaluate (`LocalLM`), writes its suite's usual output files into a
directory and returns the dict results.json keeps under `suites.<name>.<before|after>`:

- `ifeval`: IFEval's summary (prompt/instruction level, strict/loose), `per_instruction` and
  `per_group` (the instruction id's prefix: `keywords`, `detectable_format`, ...).
- `zeroshot`: `ZeroShotResult.to_dict()` (overall, per cluster, per dataset, per template).
- `mt_bench`: MT-Bench's summary (1-10 score overall, `per_turn`, `per_category`, failures).
- `judge`: the model's answers to the reference file's instructions, judged pairwise against
  the reference outputs in both orders: `JudgeSummary.to_dict()` (win rate ± se, LC win rate,
  n, failures), `per_dataset` (the AlpacaEval `dataset` field of the reference rows).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from instillm.config import Config, check_choice, check_min
from instillm.data.io import write_atomic
from instillm.errors import ConfigError, DataError
from instillm.llm.backend import BackendConfig, reply_text

SUITES = ("ifeval", "zeroshot", "mt_bench", "judge")


# --------------------------------------------------------------------------------------------
# settings


def _limit_problems(v: Mapping[str, Any], *names: str) -> list[str]:
    """`name: must be >= 1` for each of `names` that is set below 1."""
    problems: list[str] = []
    for name in names:
        check_min(problems, name, v[name], 1)
    return problems


def _file_problem(key: str, value: Any, what: str = "file") -> list[str]:
    """`key: ... not found` unless `value` is an existing file (a directory too, for `what='path'`)."""
    if not isinstance(value, str) or not value:
        return [f"{key}: required"]
    p = Path(value)
    ok = p.exists() if what == "path" else p.is_dir() if what == "directory" else p.is_file()
    return [] if ok else [f"{key}: {what} not found: {value}"]


@dataclass(frozen=True)
class IFEvalSuite(Config):
    """IFEval: greedy answers to the first `limit` prompts of `inputs` (IFEval's input_data.jsonl)."""

    path_prefix = "suites.ifeval"
    inputs: str
    limit: int | None = None
    max_new_tokens: int = 256
    batch_size: int = 32

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        return _file_problem("inputs", v["inputs"]) + _limit_problems(v, "limit", "max_new_tokens", "batch_size")


@dataclass(frozen=True)
class ZeroShotSuite(Config):
    """Zero-shot T0 templates: `data` (a directory of template files, or one file), clusters to score;
    the other keys are `instillm.evaluate.zeroshot.ZeroShotConfig`'s, checked by its rules."""

    path_prefix = "suites.zeroshot"
    data: str
    heldout_clusters: tuple[str, ...] | None = None
    limit: int | None = None
    length_normalize: bool = False
    max_options: int = 10
    max_new_tokens: int = 64
    batch_size: int = 16
    max_length: int | None = None

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        from instillm.evaluate.zeroshot import ZeroShotConfig

        problems = _file_problem("data", v["data"], "path") + ZeroShotConfig.check(v) + _cluster_problems(v)
        return problems or _template_problems(v)


def _cluster_problems(v: Mapping[str, Any]) -> list[str]:
    from instillm.evaluate.t0_clusters import parse_clusters

    try:
        parse_clusters(v["heldout_clusters"] or ())
    except ConfigError as e:  # its problems name the field (`heldout_clusters: ...`)
        return e.problems
    return []


def _template_problems(v: Mapping[str, Any]) -> list[str]:
    from instillm.evaluate.zeroshot import select_templates

    try:
        select_templates(v["data"], v["heldout_clusters"])
    except DataError as e:
        return [f"data: {e}"]
    return []


@dataclass(frozen=True)
class MTBenchSuite(Config):
    """MT-Bench: answer the first `limit` questions of `data` (FastChat's folder), graded 1-10 by `judge`
    (a `BackendConfig`, key for key)."""

    path_prefix = "suites.mt_bench"
    data: str
    judge: BackendConfig
    limit: int | None = None
    max_new_tokens: int = 1024
    batch_size: int = 32
    judge_max_tokens: int = 2048
    greedy: bool = False

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        from instillm.evaluate.mt_bench import PROMPTS_FILE, QUESTION_FILE, REFERENCE_FILE

        problems = _file_problem("data", v["data"], "directory")
        if not problems:
            lacking = [f for f in (QUESTION_FILE, REFERENCE_FILE, PROMPTS_FILE) if not (Path(v["data"]) / f).is_file()]
            problems += [f"data: {v['data']} lacks {', '.join(lacking)}"] if lacking else []
        return problems + _limit_problems(v, "limit", "max_new_tokens", "batch_size", "judge_max_tokens")


@dataclass(frozen=True)
class JudgeSuite(Config):
    """Pairwise judge: the model answers the instructions of `reference` (AlpacaEval outputs), judged both
    orders by `judge` (a `BackendConfig`, key for key)."""

    path_prefix = "suites.judge"
    reference: str
    judge: BackendConfig
    limit: int | None = None
    max_new_tokens: int = 512
    batch_size: int = 32
    judge_style: str = "identifier"
    judge_max_tokens: int = 100

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        from instillm.evaluate.judge import PROMPT_STYLES

        problems = _file_problem("reference", v["reference"])
        check_choice(problems, "judge_style", v["judge_style"], PROMPT_STYLES)
        return problems + _limit_problems(v, "limit", "max_new_tokens", "batch_size", "judge_max_tokens")


@dataclass(frozen=True)
class SuitesSettings(Config):
    """Suites evaluated before and after training, next to the held-out splits; each off unless set."""

    path_prefix = "suites"
    ifeval: IFEvalSuite | None = None
    zeroshot: ZeroShotSuite | None = None
    mt_bench: MTBenchSuite | None = None
    judge: JudgeSuite | None = None

    def configured(self) -> dict[str, Any]:
        """Suite name → settings of every suite that is on, in SUITES order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def fingerprint(settings: Any) -> list[Any]:
    """What the suite's data files are, for stage hashes: sha256 of files, name + size of directory entries."""
    path = next(getattr(settings, k) for k in ("inputs", "data", "reference") if hasattr(settings, k))
    p = Path(path)
    if p.is_file():
        return [p.name, hashlib.sha256(p.read_bytes()).hexdigest()]
    return sorted([f.name, f.stat().st_size] for f in p.iterdir() if f.is_file())


# --------------------------------------------------------------------------------------------
# runners


class LocalLM(NamedTuple):
    """The model a suite evaluates: weights, tokenizer, the renderer used for prompts, a display name."""

    model: Any
    tokenizer: Any
    renderer: Any
    name: str


Advance = Callable[[int], None]


def chat_replies(lm: LocalLM, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy replies to single user turns, rendered with the model's chat template."""
    from instillm.llm.generation import GenerateOptions, Generator

    gen = Generator(lm.model, lm.tokenizer, lm.renderer)
    outs = gen.generate_chat(
        [[{"role": "user", "content": p}] for p in prompts],
        GenerateOptions(max_new_tokens=max_new_tokens, batch_size=batch_size),
    )
    return [reply_text(o) for o in outs]


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))


def instruction_groups(per_instruction: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per instruction id group (`keywords:existence` → `keywords`): strict and loose accuracy over its checks."""
    tally: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for iid, r in per_instruction.items():
        t = tally[iid.split(":", 1)[0]]
        t[0], t[1], t[2] = t[0] + r["strict"] * r["n"], t[1] + r["loose"] * r["n"], t[2] + r["n"]
    return {g: {"strict": s / n, "loose": lo / n, "n": int(n)} for g, (s, lo, n) in sorted(tally.items())}


def run_ifeval(s: IFEvalSuite, lm: LocalLM, out: Path, advance: Advance) -> dict[str, Any]:
    """Answer, score strict and loose; writes responses.jsonl and IFEval's output files into `out`."""
    from instillm.evaluate.ifeval import evaluate as ifeval

    rows = ifeval.load_inputs(s.inputs)[: s.limit]
    replies = chat_replies(lm, [r["prompt"] for r in rows], s.max_new_tokens, s.batch_size)
    advance(len(rows))
    responses = dict(zip((r["prompt"] for r in rows), replies))
    write_atomic(
        out / "responses.jsonl",
        "".join(json.dumps({"prompt": r["prompt"], "response": t}) + "\n" for r, t in zip(rows, replies)),
    )
    strict = ifeval.evaluate_responses(rows, responses, "strict")
    loose = ifeval.evaluate_responses(rows, responses, "loose")
    summary = ifeval.summarize(strict, loose)
    ifeval.write_outputs(out, strict, loose, summary, responses)
    return {**summary, "per_group": instruction_groups(summary["per_instruction"])}


def run_zeroshot(s: ZeroShotSuite, lm: LocalLM, out: Path, advance: Advance) -> dict[str, Any]:
    """Rank classification / ROUGE-L per template of the chosen clusters."""
    from instillm.evaluate.zeroshot import ZeroShotConfig, evaluate_zeroshot

    config = ZeroShotConfig(
        limit=s.limit,
        length_normalize=s.length_normalize,
        max_options=s.max_options,
        max_new_tokens=s.max_new_tokens,
        batch_size=s.batch_size,
        max_length=s.max_length,
    )
    res = evaluate_zeroshot(lm.model, lm.tokenizer, lm.renderer, s.data, s.heldout_clusters, config, advance)
    return res.to_dict()


def run_mt_bench(s: MTBenchSuite, lm: LocalLM, out: Path, advance: Advance) -> dict[str, Any]:
    """Answer MT-Bench's questions, grade every turn with the judge; FastChat's files into `out`."""
    from instillm.evaluate import mt_bench
    from instillm.llm.backend import make_backend

    bench = mt_bench.load_mt_bench(s.data)
    respond = mt_bench.local_responder(lm.model, lm.tokenizer, lm.renderer, s.max_new_tokens, s.batch_size)
    backend = make_backend(s.judge)
    try:
        return mt_bench.run_mt_bench(
            bench,
            respond,
            lm.name,
            backend,
            out,
            mt_bench.GradeConfig(max_tokens=s.judge_max_tokens),
            s.limit,
            s.greedy,
            advance,
        )
    finally:
        backend.close()


def run_judge(s: JudgeSuite, lm: LocalLM, out: Path, advance: Advance) -> dict[str, Any]:
    """The model's outputs to the reference's instructions, judged pairwise against the reference outputs."""
    from instillm.evaluate import judge
    from instillm.llm.backend import make_backend

    refs = judge.load_outputs(s.reference)[: s.limit]
    instructions = [r["instruction"] for r in refs]
    outputs = chat_replies(lm, instructions, s.max_new_tokens, s.batch_size)
    advance(len(refs))
    _write_json(
        out / "outputs.json",
        [
            {"instruction": i, "output": o, "generator": lm.name, "dataset": r.get("dataset")}
            for i, o, r in zip(instructions, outputs, refs)
        ],
    )
    reference_name = judge.generator_name(refs, "reference")
    backend = make_backend(s.judge)
    try:
        rows = judge.judge_pairwise(
            instructions,
            outputs,
            [r["output"] for r in refs],
            backend,
            judge.JudgeConfig(style=s.judge_style, max_tokens=s.judge_max_tokens),
            lm.name,
            reference_name,
            advance,
        )
    finally:
        backend.close()
    judge.write_annotations(rows, out / "annotations.json")
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ref, row in zip(refs, rows):
        by_dataset[str(ref.get("dataset") or "(none)")].append(row)
    return {
        "model": lm.name,
        "reference": reference_name,
        "judge": s.judge.model,
        **judge.summarize(rows).to_dict(),
        "per_dataset": {d: judge.summarize(r).to_dict() for d, r in sorted(by_dataset.items())},
    }


RUNNERS: dict[str, Callable[[Any, LocalLM, Path, Advance], dict[str, Any]]] = {
    "ifeval": run_ifeval,
    "zeroshot": run_zeroshot,
    "mt_bench": run_mt_bench,
    "judge": run_judge,
}


def run_suite(name: str, settings: Any, lm: LocalLM, out: Path, advance: Advance) -> dict[str, Any]:
    """Run suite `name`; its files go into `out`, its results dict is also saved as out/results.json."""
    res = RUNNERS[name](settings, lm, out, advance)
    _write_json(out / "results.json", res)
    return res
