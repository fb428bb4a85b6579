"""instillm.config: every config dataclass validates however it is built, all problems at once with
their field paths; nesting, YAML round trips, unknown-key hints; no config skips the base."""

from __future__ import annotations

import ast
import importlib
import pickle
from pathlib import Path

import pytest
import yaml

import instillm
from instillm.config import Config, build, check_choice, check_min, check_range
from instillm.curate.decontaminate import Boilerplate
from instillm.curate.score import IFDConfig, RatingConfig, ScoreConfig
from instillm.data.render import RenderConfig
from instillm.data.skills import SuiteConfig
from instillm.errors import ConfigError
from instillm.evaluate.judge import JudgeConfig
from instillm.evaluate.mt_bench import GradeConfig
from instillm.evaluate.suites import IFEvalSuite, JudgeSuite, MTBenchSuite, SuitesSettings, ZeroShotSuite
from instillm.evaluate.zeroshot import ZeroShotConfig
from instillm.llm.backend import BackendConfig, SamplingParams
from instillm.llm.generation import GenerateOptions
from instillm.run import DataSettings, EvalSettings, ModelSettings, RunConfig
from instillm.synth.evol import EvolConfig
from instillm.synth.self_instruct import SelfInstructConfig
from instillm.train.config import DatasetSpec, LoraSettings, MixingSettings, TrainConfig, TrainSettings
from instillm.ui.app import UIOptions
from instillm.ui.chat_tab import ChatSettings

PACKAGE = Path(instillm.__file__).resolve().parent
HERE = str(Path(__file__))  # an existing file, for settings that name one
BACKEND = BackendConfig(kind="transformers", model="m")
IFD = IFDConfig(model="m")
CONFIG_SUFFIXES = ("Config", "Settings", "Options", "Params", "Suite")
# Named like a config but not one, each with the reason.
NOT_CONFIGS = {
    "instillm.cli._common.BackendOptions": "the values of CLI flags; its config() builds the BackendConfig",
}

# (class, keyword arguments with one bad value, the field path of the problem)
BAD = [
    (UIOptions, {"max_length": 1}, "max_length"),
    (Boilerplate, {"share": 2.0}, "boilerplate.share"),
    (ChatSettings, {"top_p": 0}, "top_p"),
    (DatasetSpec, {"path": "d.jsonl", "weight": 0}, "weight"),
    (LoraSettings, {"r": 0}, "r"),
    (MixingSettings, {"temperature": 0}, "temperature"),
    (TrainSettings, {"batch_size": 0}, "train.batch_size"),
    (TrainConfig, {"model": "m", "datasets": ["d"], "output_dir": "o", "learning_rate": 0}, "learning_rate"),
    (SamplingParams, {"max_tokens": 0}, "max_tokens"),
    (BackendConfig, {"kind": "transformers", "model": "m", "timeout": 0}, "backend.timeout"),
    (GenerateOptions, {"batch_size": 0}, "batch_size"),
    (JudgeConfig, {"style": "logprobs"}, "judge.style"),
    (GradeConfig, {"max_tokens": 0}, "max_tokens"),
    (ZeroShotConfig, {"max_options": 1}, "max_options"),
    (RenderConfig, {"max_length": 1}, "max_length"),
    (SuiteConfig, {"n_train_per_family": 0}, "skills.n_train_per_family"),
    (SelfInstructConfig, {"top_p": 0}, "top_p"),
    (EvolConfig, {"rounds": 0}, "rounds"),
    (IFDConfig, {"model": "m", "batch_size": 0}, "ifd.batch_size"),
    (RatingConfig, {"backend": BACKEND, "max_tokens": 0}, "rating.max_tokens"),
    (ScoreConfig, {"ifd": IFD, "top_fraction": 2.0}, "top_fraction"),
    (DataSettings, {}, "data.train"),
    (ModelSettings, {"initializer_range": 0}, "model.initializer_range"),
    (EvalSettings, {"batch_size": 0}, "eval.batch_size"),
    (RunConfig, {"name": 3}, "name"),
    (IFEvalSuite, {"inputs": HERE, "limit": 0}, "suites.ifeval.limit"),
    (ZeroShotSuite, {"data": HERE, "max_options": 1}, "suites.zeroshot.max_options"),
    (MTBenchSuite, {"data": str(Path(HERE).parent), "judge": BACKEND, "batch_size": 0}, "suites.mt_bench.batch_size"),
    (JudgeSuite, {"reference": HERE, "judge": BACKEND, "judge_style": "vibes"}, "suites.judge.judge_style"),
    (SuitesSettings, {"ifeval": {"inputs": HERE, "batch_size": 0}}, "suites.ifeval.batch_size"),
]


def _paths(error: ConfigError) -> list[str]:
    return [p.partition(": ")[0] for p in error.problems]


@pytest.mark.parametrize("cls, kwargs, path", BAD, ids=[c.__name__ for c, _, _ in BAD])
def test_a_bad_value_is_refused_when_built_directly(cls, kwargs, path):
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    assert path in _paths(e.value), e.value.problems


@pytest.mark.parametrize("cls, kwargs, path", BAD, ids=[c.__name__ for c, _, _ in BAD])
def test_from_dict_reports_the_same_problems(cls, kwargs, path):
    with pytest.raises(ConfigError) as direct:
        cls(**kwargs)
    with pytest.raises(ConfigError) as loaded:
        cls.from_dict(kwargs)
    assert loaded.value.problems == direct.value.problems


@pytest.mark.parametrize(
    "cls, kwargs, path",
    [
        (EvalSettings, {"batch_size": "eight"}, "eval.batch_size"),
        (SamplingParams, {"stop": [3]}, "stop"),
        (
            TrainConfig,
            {"model": "m", "datasets": [{"path": "d", "weight": "x"}], "output_dir": "o"},
            "datasets[0].weight",
        ),
        (SuiteConfig, {"heldout_families": "uppercase"}, "skills.heldout_families"),
        (GenerateOptions, {"temperature": float("nan")}, "temperature"),
    ],
)
def test_a_wrong_type_is_refused_with_its_path(cls, kwargs, path):
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    assert _paths(e.value) == [path]


def test_the_table_covers_every_config():
    assert {cls for cls, _, _ in BAD} == set(_config_classes())


def test_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        SamplingParams(max_tokens=0, n=0, top_p=2)
    assert _paths(e.value) == ["max_tokens", "top_p", "n"]
    assert str(e.value).count("; ") == 2  # built in code: one line
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"bogus": 1, "eval": {"max_new_tokens": 0, "batch_size": 0}, "train": {"lora": {"r": 0}}})
    assert _paths(e.value) == ["bogus", "train.lora.r", "eval.max_new_tokens", "eval.batch_size"]
    assert str(e.value).splitlines() == ["invalid run config:", *(f"  - {p}" for p in e.value.problems)]


def test_nested_field_paths():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(
            {
                "skills": {"n_train_per_family": 0},
                "train": {"lora": {"r": 0}, "model": "x"},
                "suites": {"judge": {"reference": HERE, "judge": {"kind": "transformers", "model": ""}}},
            }
        )
    assert _paths(e.value) == ["skills.n_train_per_family", "train.model", "train.lora.r", "suites.judge.judge.model"]
    assert "train.model: set by instillm run; remove it" in e.value.problems


def test_the_class_prefix_names_a_config_built_alone_and_the_field_path_when_nested():
    with pytest.raises(ConfigError, match=r"^backend\.model: required"):
        BackendConfig(kind="transformers", model="")
    with pytest.raises(ConfigError) as e:
        RatingConfig(backend={"kind": "transformers", "model": ""})
    assert _paths(e.value) == ["rating.backend.model"]
    problems: list[str] = []
    assert build(BackendConfig, {"kind": "transformers", "model": ""}, "x.judge", problems) is None
    assert [p.partition(": ")[0] for p in problems] == ["x.judge.model"]


def test_nested_values_are_coerced_and_instances_kept():
    c = RunConfig(train={"lora": True, "adam_betas": [0.9, 0.95]}, skills=SuiteConfig(seed=3), data={"train": ["a"]})
    assert c.train == TrainSettings(lora=LoraSettings(), adam_betas=(0.9, 0.95))
    assert c.skills.seed == 3 and c.data == DataSettings(train=("a",))
    assert RunConfig.from_dict({"train": None}).train == TrainSettings()  # an empty YAML section: defaults
    assert SuiteConfig(heldout_families=1).heldout_families == 1  # a union takes the member that fits
    assert SuiteConfig(heldout_families=["uppercase"]).heldout_families == ("uppercase",)
    assert SamplingParams(stop="\n").stop == ("\n",) and GenerateOptions(stop_token_ids=5).stop_token_ids == (5,)


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(
            model="m",
            datasets=["a.jsonl", {"path": "b.jsonl", "weight": 2}],
            output_dir="o",
            lora=True,
            warmup_steps=3,
            mixing={"cap": 10},
        ),
        RunConfig(
            skills={"families": ["even_odd", "sign"], "heldout_families": 0},
            train={"max_steps": 2},
            data={"train": ["t.jsonl"], "eval": ["e.jsonl"]},
            model={"initializer_range": 0.06},
            suites={
                "ifeval": {"inputs": HERE, "limit": 3},
                "judge": {"reference": HERE, "judge": {"model": "j", "base_url": "http://x/v1"}},
            },
        ),
        ScoreConfig(ifd=IFD, rating=RatingConfig(backend=BACKEND), top_k=3),
        SelfInstructConfig(),
        EvolConfig(operations=["deepen"]),
        GenerateOptions(stop_strings=["x"]),
        SamplingParams(stop=["\n"], seed=3),
        SuiteConfig(heldout_families=2),
    ],
    ids=lambda c: type(c).__name__,
)
def test_yaml_round_trip(config):
    data = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert type(config).from_dict(data) == config


def test_unknown_keys_are_named_with_a_suggestion():
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"model": "m", "datasets": ["d"], "output_dir": "o", "lerning_rate": 1, "lr": 2})
    assert e.value.problems == [
        "lerning_rate: unknown key (did you mean 'learning_rate'?)",
        "lr: unknown key (did you mean 'learning_rate'?)",
    ]
    assert str(e.value).startswith("invalid training config:\n  - lerning_rate")
    with pytest.raises(ConfigError, match=r"^backend\.modle: unknown key \(did you mean 'model'\?\)$"):
        BackendConfig.from_dict({"kind": "transformers", "modle": "m", "model": "m"})


def test_config_error_problems():
    assert ConfigError("limit: must be >= 1").problems == ["limit: must be >= 1"]
    e = ConfigError.of(["a: x", "b: y"], "invalid thing")
    assert str(e) == "invalid thing:\n  - a: x\n  - b: y" and e.problems == ["a: x", "b: y"]
    assert str(ConfigError.of(["a: x", "b: y"])) == "a: x; b: y"
    assert pickle.loads(pickle.dumps(e)).problems == e.problems


def test_shared_checks():
    problems: list[str] = []
    check_min(problems, "a", 0, 0, strict=True, note=" (or null)")
    check_min(problems, "b", None, 1)
    check_range(problems, "c", 1.0, 0, 1, "[)")
    check_range(problems, "d", 1.0, 0, 1)
    check_choice(problems, "e", "x", ("y", "z"))
    assert problems == [
        "a: must be > 0 (or null), got 0",
        "c: must be in [0, 1), got 1.0",
        "e: 'x' is not one of ['y', 'z']",
    ]


def _config_classes() -> list[type]:
    """Every dataclass of the package named like a config (…Config, …Settings, …Options, …Params,
    …Suite) or subclassing one; found in the source, so a new module is covered too."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            if (
                isinstance(node, ast.ClassDef)
                and _is_dataclass(node)
                and _looks_like_config(node)
                and f"{module}.{node.name}" not in NOT_CONFIGS
            ):
                found.append(getattr(importlib.import_module(module), node.name))
    return found


def _is_dataclass(node: ast.ClassDef) -> bool:
    names = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
    return any(isinstance(n, ast.Name) and n.id == "dataclass" for n in names)


def _looks_like_config(node: ast.ClassDef) -> bool:
    bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
    return node.name.endswith(CONFIG_SUFFIXES) or "Config" in bases or any(b.endswith(CONFIG_SUFFIXES) for b in bases)


def test_every_config_dataclass_inherits_the_base():
    classes = _config_classes()
    assert len(classes) >= 25
    assert [c.__name__ for c in classes if not issubclass(c, Config)] == []
