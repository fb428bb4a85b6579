"""`instillm run`: the whole loop in one recipe — data → model → evaluate before → train → evaluate after → report.

Each stage writes into `output_dir/<stage>/` and records a hash of everything it depends on
(its own settings and the hashes of the stages before it) in `output_dir/stages.json`. A re-run
skips every stage whose hash is unchanged and whose outputs exist, so editing only the eval
settings re-runs only the evaluations and the report. Training itself also resumes from its
newest checkpoint when it was interrupted; when its key changed (settings, data or model), `train/`
is removed and training starts over. stages.json, config.yaml and results.json are written
atomically; an unreadable stages.json is logged and every stage runs again. Optional evaluation
suites (`suites:` ifeval, zeroshot, mt_bench, judge; see instillm.evaluate.suites) run beside the
held-out evaluations, each as its own stages `<suite>_before` and `<suite>_after`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instillm.config import Config, check_min
from instillm.data.io import write_atomic
from instillm.data.skills import SuiteConfig
from instillm.errors import ConfigError, DataError
from instillm.evaluate.suites import SuitesSettings
from instillm.train.config import TrainConfig, TrainSettings

STAGES = ("data", "model", "eval_before", "train", "eval_after", "report")
HEADLINE = "exact_match"  # the number results.json reports per split under before/after

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class DataSettings(Config):
    """Your own canonical JSONL files instead of the suite; each eval file is a split named by its stem."""

    path_prefix = "data"
    train: tuple[str, ...] = ()
    eval: tuple[str, ...] = ()

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        return [] if v["train"] else ["train: list at least one canonical JSONL file"]


@dataclass(frozen=True)
class ModelSettings(Config):
    """`path`: an existing HF model (directory or hub id); else a new model of preset `init`."""

    path_prefix = "model"
    init: str = "tiny"
    path: str | None = None
    seed: int = 0
    vocab_size: int | None = None
    initializer_range: float | None = None  # init std of a new model; None = the preset's

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min(problems, "initializer_range", v["initializer_range"], 0, strict=True, note=" (or null)")
        return problems


@dataclass(frozen=True)
class EvalSettings(Config):
    """Greedy generation settings for the held-out evaluations."""

    path_prefix = "eval"
    max_new_tokens: int = 64
    batch_size: int = 64
    max_examples_per_split: int | None = None
    before: bool = True

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min(problems, "max_new_tokens", v["max_new_tokens"], 1)
        check_min(problems, "batch_size", v["batch_size"], 1)
        return problems


@dataclass(frozen=True)
class RunConfig(Config):
    """One `instillm run`: YAML maps 1:1. `skills`: the built-in suite (used when `data` is not
    given); `train`: every TrainConfig setting but model/datasets/output_dir, which the run fills in."""

    title = "invalid run config"
    name: str = "run"
    output_dir: str = "runs/run"
    skills: SuiteConfig = field(default_factory=SuiteConfig)
    data: DataSettings | None = None
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    suites: SuitesSettings = field(default_factory=SuitesSettings)  # ifeval, zeroshot, mt_bench, judge

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict; API keys are redacted (it is saved in config.yaml and results.json)."""
        return _redact(super().to_dict())


def _redact(value: Any) -> Any:
    """`value` with every non-empty `api_key` replaced by "<redacted>"."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k == "api_key" and v else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a mapping; every problem (unknown keys included) reported at once."""
    return RunConfig.from_dict(data)


def load_run_config(path: str | Path, overrides: Sequence[str] = (), output_dir: str | None = None) -> RunConfig:
    """Read a run YAML, apply KEY=VALUE overrides (dotted) and an optional output_dir."""
    return RunConfig.load(path, list(overrides) + ([f"output_dir={output_dir}"] if output_dir else []))


# --------------------------------------------------------------------------------------------
# stage bookkeeping


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """stages.json: the hash each finished stage was computed with, and its seconds.

    A stage that is running holds only the key it started with (`start`): not done until `finish`."""

    def __init__(self, out: Path) -> None:
        self.path = out / "stages.json"
        self.state: dict[str, dict[str, Any]] = _read_stages(self.path)

    def done(self, stage: str, key: str) -> bool:
        return self.state.get(stage, {}).get("hash") == key

    def last_key(self, stage: str) -> str | None:
        """The key the stage's outputs were last computed (or started) with; None when unknown."""
        entry = self.state.get(stage, {})
        return entry.get("hash") or entry.get("started")

    def start(self, stage: str, key: str) -> None:
        """Record that `stage` runs with `key` (a crash before `finish` leaves it to run again)."""
        self.state[stage] = {"started": key}
        self._save()

    def finish(self, stage: str, key: str, seconds: float) -> None:
        self.state[stage] = {"hash": key, "seconds": round(seconds, 2)}
        self._save()

    def seconds(self) -> dict[str, float]:
        return {k: v["seconds"] for k, v in self.state.items() if "seconds" in v}

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self.state, indent=2))


def _read_stages(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of stages.json; an unreadable one is logged and counts as no stage finished."""
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        state = e
    if not isinstance(state, dict):
        logger.warning("%s is unreadable (%s); every stage runs again", path, type(state).__name__)
        return {}
    return {k: v for k, v in state.items() if isinstance(v, dict)}


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
    device: str = "auto"  # where evaluations run ("auto": CUDA when available); not part of stage keys


def _stage(
    ctx: RunContext,
    name: str,
    key: str,
    outputs: Sequence[Path],
    fn: Callable[[], None],
    on_change: Callable[[], None] | None = None,
) -> None:
    """Run `fn` unless stage `name` already finished with the same key and its outputs exist.

    `on_change` runs first when the stage last ran (or started) with another key: it clears what
    that run left; the new key is recorded only after it, so an interrupted clearing is redone."""
    ctx.keys[name] = key
    if ctx.stages.done(name, key) and all(p.exists() for p in outputs):
        ctx.skipped.append(name)
        ctx.say(f"[dim]{name}: up to date, skipped[/]")
        return
    ctx.say(f"[bold]{name}[/] …")
    if on_change is not None and ctx.stages.last_key(name) not in (None, key):
        on_change()
    ctx.stages.start(name, key)
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
        from instillm.data.skills import build_suite, write_suite

        write_suite(build_suite(cfg.skills), out)

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
            init_model(
                preset=m.init,
                output_dir=out,
                corpus=corpus,
                seed=m.seed,
                vocab_size=m.vocab_size,
                initializer_range=m.initializer_range,
            )

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
        raise DataError(
            f"no examples to evaluate in {', '.join(empty)}; give canonical JSONL rows with a reference answer"
        )
    return splits


def template_identity(model_path: str | Path, template: str) -> list[str]:
    """What a template setting renders to for this model (its resolved name and text), for stage keys: an
    evaluation is redone when what "auto" resolves to changes, not only when the setting's word does."""
    from instillm.data.render import Renderer
    from instillm.models.loading import inference_renderer, load_tokenizer

    renderer: Renderer = inference_renderer(load_tokenizer(model_path), template)
    return [template, renderer.template_name, renderer.template]


def stage_eval(
    ctx: RunContext, stage: str, model_path: str | Path, splits: Mapping[str, list], template: str, upstream: str
) -> dict[str, Any]:
    """Greedy answers on every eval split, scored; results cached in <stage>/results.json."""
    out = ctx.out / stage / "results.json"
    e = ctx.config.eval

    def run() -> None:
        from instillm.evaluate.heldout import evaluate_model
        from instillm.models.loading import load_local

        lm = load_local(model_path, template, ctx.device)
        total = sum(len(v) for v in splits.values())
        with ctx.progress(f"{stage}: generating", total) as advance:
            res = evaluate_model(lm.model, lm.tokenizer, splits, lm.renderer, e.max_new_tokens, e.batch_size, advance)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps({k: v.to_dict() for k, v in res.items()}, indent=1))

    _stage(ctx, stage, _hash(asdict(e), template_identity(model_path, template), upstream), [out], run)
    return json.loads(out.read_text())


def stage_suites(
    ctx: RunContext, when: str, model_path: str | Path, template: str, upstream: str
) -> dict[str, dict[str, Any]]:
    """Each configured suite as its own cached stage `<suite>_<when>`; suite name → its results dict."""
    from instillm.evaluate.suites import LocalLM, fingerprint, run_suite

    loaded: list[LocalLM] = []

    def lm() -> LocalLM:  # loaded once, and only when some suite is not up to date
        if not loaded:
            from instillm.models.loading import load_local

            local = load_local(model_path, template, ctx.device)
            loaded.append(LocalLM(local.model, local.tokenizer, local.renderer, f"{ctx.config.name}-{when}"))
        return loaded[0]

    results = {}
    suites = ctx.config.suites.configured()
    rendering = template_identity(model_path, template) if suites else None  # one tokenizer load, not one a suite
    for name, settings in suites.items():
        stage, out = f"{name}_{when}", ctx.out / f"{name}_{when}"

        def go(name: str = name, settings: Any = settings, stage: str = stage, out: Path = out) -> None:
            with ctx.progress(f"{stage}: evaluating", None) as advance:
                run_suite(name, settings, lm(), out, advance)

        key = _hash(name, _redact(asdict(settings)), fingerprint(settings), rendering, upstream)
        _stage(ctx, stage, key, [out / "results.json"], go)
        results[name] = json.loads((out / "results.json").read_text())
    return results


def stage_train(ctx: RunContext, model_path: str, train_files: Sequence[Path]) -> tuple[Path, dict[str, Any]]:
    """Fine-tune with the `train` settings; returns the final model dir and the training summary."""
    out = ctx.out / "train"
    tcfg = TrainConfig.of(
        ctx.config.train, model=model_path, output_dir=str(out), datasets=[{"path": str(p)} for p in train_files]
    )
    summary_path = out / "summary.json"

    def run() -> None:
        from instillm.train.loop import train

        r = train(tcfg, progress=True, overwrite=True, device=ctx.device)  # the stage owns train/
        summary = {
            "steps": r.steps,
            "final_loss": r.final_loss,
            "eval_loss": r.eval_loss,
            "trained_tokens": r.trained_tokens,
            "tokens_per_s": round(r.tokens_per_s, 1),
        }
        write_atomic(summary_path, json.dumps(summary, indent=1))

    key = _hash(tcfg.to_dict(), ctx.keys["data"], ctx.keys["model"])
    # settings, data or model changed: the old run's checkpoints must not be resumed, so train/ goes
    _stage(ctx, "train", key, [summary_path, out / "final"], run, on_change=lambda: _remove_stage_dir(ctx, out))
    return out / "final", json.loads(summary_path.read_text())


def _remove_stage_dir(ctx: RunContext, path: Path) -> None:
    """Delete stage dir `path`, which must lie directly in the run's output dir; ConfigError while a
    training run holds it."""
    import shutil

    from instillm.train.checkpoint import OutputLock

    if path.is_symlink() or path.resolve().parent != ctx.out.resolve():
        raise ConfigError(f"output_dir: {path} is not a directory of this run's {ctx.out}; remove it yourself")
    if not path.is_dir():
        return
    ctx.say(f"[dim]{path.name}: its settings changed, starting over (removed {path})[/]")
    lock = OutputLock(path).acquire()  # names the pid of a training run still writing there
    try:
        shutil.rmtree(path)
    finally:
        lock.release()


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


def build_results(
    ctx: RunContext, before: dict, after: dict, train_summary: dict, base: tuple[dict, dict], data_stats: dict
) -> dict[str, Any]:
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
    return {
        "train_examples": len(train),
        "train_tasks": len({ex.task for ex in train}),
        **{f"{k}_examples": len(v) for k, v in splits.items()},
    }


def training_data_card(train_files: Sequence[Path], splits: Mapping[str, list] | None = None) -> dict[str, Any]:
    """The data card of the training files for the report: composition, lengths, languages, leading verbs,
    near-duplicate clusters and overlap with the eval splits the run evaluates on (template text left out),
    as `instillm data card` computes them (`instillm.curate.card`)."""
    from instillm.curate.card import card_with_checks
    from instillm.data.card import read_card_examples

    return card_with_checks([ex for f in train_files for ex in read_card_examples(f)], eval_sets=splits)


def run(
    config: RunConfig,
    say: Callable[[str], None] = print,
    progress: Callable[[str, int | None], Any] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """The whole loop; returns results.json's content (also written to output_dir with the report).

    `device` is where the evaluations run ("auto": CUDA when available); training places itself."""
    from instillm.report import write_report

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    ctx = RunContext(config, out, Stages(out), say, progress or _no_progress, device=device)
    train_files, eval_paths = stage_data(ctx)
    # the suite's splits may be empty (no held-out families); a user's eval file may not
    splits = load_eval_splits(eval_paths, config.eval.max_examples_per_split, empty_ok=config.data is None)
    model_path = stage_model(ctx, train_files)
    template = config.train.template
    before = {}
    if config.eval.before:
        before = stage_eval(ctx, "eval_before", model_path, splits, template, ctx.keys["model"] + ctx.keys["data"])
    suites_before = stage_suites(ctx, "before", model_path, template, ctx.keys["model"]) if config.eval.before else {}
    final, train_summary = stage_train(ctx, model_path, train_files)
    after = stage_eval(ctx, "eval_after", final, splits, "auto", ctx.keys["train"])
    suites_after = stage_suites(ctx, "after", final, "auto", ctx.keys["train"])
    results = build_results(
        ctx, before, after, train_summary, baselines(train_files, splits), _data_stats(train_files, splits)
    )
    results["suites"] = {name: {"before": suites_before.get(name), "after": res} for name, res in suites_after.items()}
    results["data_card"] = training_data_card(train_files, splits)
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    write_report(results, out, metrics_path=out / "train" / "metrics.jsonl")
    return results


class _no_progress:
    """A progress context that draws nothing (library use without a console)."""

    def __init__(self, description: str, total: int | None) -> None:
        pass

    @staticmethod
    def _advance(n: int = 1) -> None:
        """Count nothing."""

    def __enter__(self) -> Callable[[int], None]:
        return self._advance

    def __exit__(self, *exc: Any) -> None:
        return None
