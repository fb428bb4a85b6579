"""`instillm run`: the whole loop in one recipe — data → model → evaluate before → train → evaluate after → report.

Each stage writes into `output_dir/<stage>/` and records a hash of everything it depends on
(its own settings and the hashes of the stages before it) in `output_dir/stages.json`. A re-run
skips every stage whose hash is unchanged and whose outputs exist, so editing only the eval
settings re-runs only the evaluations and the report. Training itself also resumes from its
newest checkpoint when it was interrupted. Optional evaluation suites (`suites:` ifeval, zeroshot,
mt_bench, judge; see instillm.evaluate.suites) run beside the held-out evaluations, each as its
own stages `<suite>_before` and `<suite>_after`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from instillm.errors import ConfigError, DataError
from instillm.evaluate.suites import SuitesSettings

STAGES = ("data", "model", "eval_before", "train", "eval_after", "report")
HEADLINE = "exact_match"  # the number results.json reports per split under before/after


# --------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class SkillsSettings:
    """The built-in skills suite (instillm.data.skills.SuiteConfig), used when `data` is not given."""

    seed: int = 0
    n_train_per_family: int = 400
    n_eval_per_family: int = 40
    heldout_phrasings_per_family: int = 2
    heldout_families: tuple[str, ...] | None = None
    families: tuple[str, ...] | None = None
    cap_to_input_space: bool = False

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        return [] if v["n_train_per_family"] >= 1 else ["n_train_per_family: must be >= 1"]


@dataclass(frozen=True)
class DataSettings:
    """Your own canonical JSONL files instead of the suite; each eval file is a split named by its stem."""

    train: tuple[str, ...] = ()
    eval: tuple[str, ...] = ()

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        return [] if v["train"] else ["train: list at least one canonical JSONL file"]


@dataclass(frozen=True)
class ModelSettings:
    """`path`: an existing HF model (directory or hub id); else a new model of preset `init`."""

    init: str = "tiny"
    path: str | None = None
    seed: int = 0
    vocab_size: int | None = None
    initializer_range: float | None = None  # init std of a new model; None = the preset's

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        ok = v["initializer_range"] is None or v["initializer_range"] > 0
        return [] if ok else [f"initializer_range: must be > 0 (or null), got {v['initializer_range']}"]


@dataclass(frozen=True)
class EvalSettings:
    """Greedy generation settings for the held-out evaluations."""

    max_new_tokens: int = 64
    batch_size: int = 64
    max_examples_per_split: int | None = None
    before: bool = True

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = []
        if v["max_new_tokens"] < 1:
            problems.append("max_new_tokens: must be >= 1")
        if v["batch_size"] < 1:
            problems.append("batch_size: must be >= 1")
        return problems


@dataclass(frozen=True)
class RunConfig:
    """One `instillm run`: YAML maps 1:1; `train` holds TrainConfig keys except model/datasets/output_dir."""

    name: str = "run"
    output_dir: str = "runs/run"
    skills: SkillsSettings = field(default_factory=SkillsSettings)
    data: DataSettings | None = None
    model: ModelSettings = field(default_factory=ModelSettings)
    train: Any = None  # a mapping, checked by building a TrainConfig (problems prefixed `train.`)
    eval: EvalSettings = field(default_factory=EvalSettings)
    suites: SuitesSettings = field(default_factory=SuitesSettings)  # ifeval, zeroshot, mt_bench, judge

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        return []

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict; API keys are redacted (it is saved in config.yaml and results.json)."""
        return _redact(json.loads(json.dumps(asdict(self))))


def _redact(value: Any) -> Any:
    """`value` with every non-empty `api_key` replaced by "<redacted>"."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k == "api_key" and v else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


_RESERVED_TRAIN_KEYS = ("model", "datasets", "output_dir")


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a mapping; every problem (unknown keys included) reported at once."""
    from instillm.train.config import _build

    problems: list[str] = []
    raw = dict(data)
    train = raw.pop("train", None) or {}
    cfg = _build(RunConfig, raw, "", problems)  # `train` is checked apart, below
    if not isinstance(train, Mapping):
        problems.append(f"train: expected a mapping of training settings, got {type(train).__name__}")
        train = {}
    problems += [f"train.{k}: set by instillm run; remove it" for k in _RESERVED_TRAIN_KEYS if k in train]
    problems += _train_problems({k: v for k, v in train.items() if k not in _RESERVED_TRAIN_KEYS})
    if problems:
        raise ConfigError("invalid run config:\n" + "\n".join(f"  - {p}" for p in problems))
    return RunConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "train": dict(train)})


def _train_problems(train: Mapping[str, Any]) -> list[str]:
    """Check the train section by building a TrainConfig around it."""
    from instillm.train.config import config_from_dict

    try:
        config_from_dict({**train, "model": "m", "datasets": ["d"], "output_dir": "o"})
    except ConfigError as e:
        return [f"train.{line.strip()[2:]}" for line in str(e).splitlines()[1:]]
    return []


def load_run_config(path: str | Path, overrides: Sequence[str] = (), output_dir: str | None = None) -> RunConfig:
    """Read a run YAML, apply KEY=VALUE overrides (dotted) and an optional output_dir."""
    from instillm.train.config import apply_overrides, read_yaml_mapping

    data = read_yaml_mapping(path)
    data = apply_overrides(data, list(overrides) + ([f"output_dir={output_dir}"] if output_dir else []))
    return run_config_from_dict(data)


# --------------------------------------------------------------------------------------------
# stage bookkeeping


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """stages.json: the hash each finished stage was computed with, and its seconds."""

    def __init__(self, out: Path) -> None:
        self.path = out / "stages.json"
        self.state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, stage: str, key: str) -> bool:
        return self.state.get(stage, {}).get("hash") == key

    def finish(self, stage: str, key: str, seconds: float) -> None:
        self.state[stage] = {"hash": key, "seconds": round(seconds, 2)}
        self.path.write_text(json.dumps(self.state, indent=2))

    def seconds(self) -> dict[str, float]:
        return {k: v["seconds"] for k, v in self.state.items()}


@dataclass
class RunContext:
    """What the stages hand to each other."""

    config: RunConfig
    out: Path
    stages: Stages
    say: Callable[[str], None]
    progress: Callable[[str, int | None], Any]
    keys: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _stage(ctx: RunContext, name: str, key: str, outputs: Sequence[Path], fn: Callable[[], None]) -> None:
    """Run `fn` unless stage `name` already finished with the same key and its outputs exist."""
    ctx.keys[name] = key
    if ctx.stages.done(name, key) and all(p.exists() for p in outputs):
        ctx.skipped.append(name)
        ctx.say(f"[dim]{name}: up to date, skipped[/]")
        return
    ctx.say(f"[bold]{name}[/] …")
    t = time.perf_counter()
    fn()
    ctx.stages.finish(name, key, time.perf_counter() - t)


# --------------------------------------------------------------------------------------------
# stages


def stage_data(ctx: RunContext) -> tuple[list[Path], dict[str, Path]]:
    """(train files, eval split name → file): the skills suite, or the user's canonical JSONL."""
    cfg = ctx.config
    if cfg.data is not None:
        from instillm.train.loop import sha256_file

        train = [Path(p) for p in cfg.data.train]
        evals = {Path(p).stem: Path(p) for p in cfg.data.eval}
        missing = [str(p) for p in [*train, *evals.values()] if not p.is_file()]
        if missing:
            raise ConfigError(f"data: file(s) not found: {missing}")
        ctx.keys["data"] = _hash("files", [sha256_file(p) for p in [*train, *evals.values()]])
        return train, evals
    from instillm.data.skills import EVAL_SPLITS

    out = ctx.out / "data"
    paths = {s: out / f"{s}.jsonl" for s in ("train", *EVAL_SPLITS)}

    def build() -> None:
        from instillm.data.skills import SuiteConfig, build_suite, write_suite

        write_suite(build_suite(SuiteConfig(**asdict(cfg.skills))), out)

    _stage(ctx, "data", _hash("skills", asdict(cfg.skills)), list(paths.values()), build)
    return [paths.pop("train")], paths


def stage_model(ctx: RunContext, train_files: Sequence[Path]) -> str:
    """The base model: the given path/hub id, or a new preset model whose tokenizer learns the train data."""
    m = ctx.config.model
    if m.path:
        ctx.keys["model"] = _hash("path", m.path)
        return m.path
    out = ctx.out / "model"

    def build() -> None:
        from instillm.data.importer import read_examples
        from instillm.models.factory import init_model

        corpus = [msg.content for f in train_files for ex in read_examples(f) for msg in ex.messages]
        with ctx.progress(f"building the {m.init} model", None):
            init_model(preset=m.init, output_dir=out, corpus=corpus, seed=m.seed, vocab_size=m.vocab_size,
                       initializer_range=m.initializer_range)

    _stage(ctx, "model", _hash(asdict(m), ctx.keys["data"]), [out / "config.json"], build)
    return str(out)


def load_eval_splits(paths: Mapping[str, Path], limit: int | None, empty_ok: bool = True) -> dict[str, list]:
    """Eval splits, each cut to its first `limit` examples when set; unless `empty_ok`, a DataError
    naming every file without examples (a user's empty file would otherwise score 0 of 0)."""
    from instillm.data.importer import read_examples

    splits = {}
    for name, path in paths.items():
        examples = list(read_examples(path))
        splits[name] = examples[:limit] if limit else examples
    empty = [str(paths[name]) for name, examples in splits.items() if not examples]
    if empty and not empty_ok:
        raise DataError(f"no examples to evaluate in {', '.join(empty)}; give canonical JSONL rows with a reference answer")
    return splits


def stage_eval(ctx: RunContext, stage: str, model_path: str | Path, splits: Mapping[str, list],
               template: str, upstream: str) -> dict[str, Any]:
    """Greedy answers on every eval split, scored; results cached in <stage>/results.json."""
    out = ctx.out / stage / "results.json"
    e = ctx.config.eval

    def run() -> None:
        from instillm.data.render import RenderConfig, Renderer
        from instillm.evaluate.heldout import evaluate_model
        from instillm.models.loading import load_tokenizer

        model, tok = _load_for_eval(model_path), load_tokenizer(model_path)
        renderer = Renderer(tok, RenderConfig(template=template, max_length=1 << 30))
        total = sum(len(v) for v in splits.values())
        with ctx.progress(f"{stage}: generating", total) as advance:
            res = evaluate_model(model, tok, splits, renderer, e.max_new_tokens, e.batch_size, advance)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({k: v.to_dict() for k, v in res.items()}, indent=1))

    _stage(ctx, stage, _hash(asdict(e), template, upstream), [out], run)
    return json.loads(out.read_text())


def stage_suites(ctx: RunContext, when: str, model_path: str | Path, template: str,
                 upstream: str) -> dict[str, dict[str, Any]]:
    """Each configured suite as its own cached stage `<suite>_<when>`; suite name → its results dict."""
    from instillm.evaluate.suites import LocalLM, fingerprint, run_suite

    loaded: list[LocalLM] = []

    def lm() -> LocalLM:  # loaded once, and only when some suite is not up to date
        if not loaded:
            from instillm.data.render import RenderConfig, Renderer
            from instillm.models.loading import load_tokenizer

            tok = load_tokenizer(model_path)
            renderer = Renderer(tok, RenderConfig(template=template, max_length=1 << 30))
            loaded.append(LocalLM(_load_for_eval(model_path), tok, renderer, f"{ctx.config.name}-{when}"))
        return loaded[0]

    results = {}
    for name, settings in ctx.config.suites.configured().items():
        stage, out = f"{name}_{when}", ctx.out / f"{name}_{when}"

        def go(name: str = name, settings: Any = settings, stage: str = stage, out: Path = out) -> None:
            with ctx.progress(f"{stage}: evaluating", None) as advance:
                run_suite(name, settings, lm(), out, advance)

        key = _hash(name, asdict(settings), fingerprint(settings), template, upstream)
        _stage(ctx, stage, key, [out / "results.json"], go)
        results[name] = json.loads((out / "results.json").read_text())
    return results


def _load_for_eval(path: str | Path):
    """A model for generation: a full model, or a LoRA adapter applied to its base."""
    from instillm.models.loading import load_model

    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(str(path)).eval()
    return load_model(path)


def stage_train(ctx: RunContext, model_path: str, train_files: Sequence[Path]) -> tuple[Path, dict[str, Any]]:
    """Fine-tune with the `train` settings; returns the final model dir and the training summary."""
    from instillm.train.config import config_from_dict

    out = ctx.out / "train"
    tcfg = config_from_dict({**ctx.config.train, "model": model_path, "output_dir": str(out),
                             "datasets": [{"path": str(p)} for p in train_files]})
    summary_path = out / "summary.json"

    def run() -> None:
        from instillm.train.loop import train

        r = train(tcfg, progress=True)
        summary = {"steps": r.steps, "final_loss": r.final_loss, "eval_loss": r.eval_loss,
                   "trained_tokens": r.trained_tokens, "tokens_per_s": round(r.tokens_per_s, 1)}
        summary_path.write_text(json.dumps(summary, indent=1))

    key = _hash(tcfg.to_dict(), ctx.keys["data"], ctx.keys["model"])
    _stage(ctx, "train", key, [summary_path, out / "final"], run)
    return out / "final", json.loads(summary_path.read_text())


# --------------------------------------------------------------------------------------------
# results and the recipe


def baselines(train_files: Sequence[Path], splits: Mapping[str, list]) -> tuple[dict[str, float], dict[str, Any]]:
    """Most-frequent-answer baseline per split (exact match) and per family, for skills data."""
    from instillm.data.importer import read_examples
    from instillm.data.skills import FAMILIES, baseline_exact_match

    train = [ex for f in train_files for ex in read_examples(f) if ex.meta.get("family") in FAMILIES]
    per_split, per_family = {}, {}
    for name, examples in splits.items():
        ours = [ex for ex in examples if ex.meta.get("family") in FAMILIES]
        if not ours or not train:
            continue
        fam = baseline_exact_match(ours, train=train)
        counts = {f: sum(ex.meta["family"] == f for ex in ours) for f in fam}
        per_split[name] = sum(fam[f] * counts[f] for f in fam) / len(ours)
        per_family[name] = fam
    return per_split, per_family


def build_results(ctx: RunContext, before: dict, after: dict, train_summary: dict,
                  base: tuple[dict, dict], data_stats: dict) -> dict[str, Any]:
    """results.json: headline exact match per split before/after, baselines, details, timings."""
    return {
        "name": ctx.config.name,
        "before": {k: v[HEADLINE] for k, v in before.items()},
        "after": {k: v[HEADLINE] for k, v in after.items()},
        "baseline": base[0],
        "baseline_per_family": base[1],
        "train": train_summary,
        "data": data_stats,
        "details": {"before": before, "after": after},
        "config": ctx.config.to_dict(),
        "stage_hashes": ctx.keys,
        "seconds": ctx.stages.seconds(),
    }


def _data_stats(train_files: Sequence[Path], splits: Mapping[str, list]) -> dict[str, Any]:
    from instillm.data.importer import read_examples

    train = [ex for f in train_files for ex in read_examples(f)]
    return {"train_examples": len(train), "train_tasks": len({ex.task for ex in train}),
            **{f"{k}_examples": len(v) for k, v in splits.items()}}


def run(config: RunConfig, say: Callable[[str], None] = print,
        progress: Callable[[str, int | None], Any] | None = None) -> dict[str, Any]:
    """The whole loop; returns results.json's content (also written to output_dir with the report)."""
    from instillm.report import write_report

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    ctx = RunContext(config, out, Stages(out), say, progress or _no_progress)
    train_files, eval_paths = stage_data(ctx)
    # the suite's splits may be empty (no held-out families); a user's eval file may not
    splits = load_eval_splits(eval_paths, config.eval.max_examples_per_split, empty_ok=config.data is None)
    model_path = stage_model(ctx, train_files)
    template = config.train.get("template", "auto")
    before = {}
    if config.eval.before:
        before = stage_eval(ctx, "eval_before", model_path, splits, template, ctx.keys["model"] + ctx.keys["data"])
    suites_before = stage_suites(ctx, "before", model_path, template, ctx.keys["model"]) if config.eval.before else {}
    final, train_summary = stage_train(ctx, model_path, train_files)
    after = stage_eval(ctx, "eval_after", final, splits, "auto", ctx.keys["train"])
    suites_after = stage_suites(ctx, "after", final, "auto", ctx.keys["train"])
    results = build_results(ctx, before, after, train_summary, baselines(train_files, splits),
                            _data_stats(train_files, splits))
    results["suites"] = {name: {"before": suites_before.get(name), "after": res} for name, res in suites_after.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, out, metrics_path=out / "train" / "metrics.jsonl")
    return results


class _no_progress:
    """A progress context that draws nothing (library use without a console)."""

    def __init__(self, description: str, total: int | None) -> None:
        pass

    def __enter__(self) -> Callable[[int], None]:
        return lambda n=1: None

    def __exit__(self, *exc: Any) -> None:
        return None
