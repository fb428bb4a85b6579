"""TrainConfig validation, YAML loading with overrides, and the resolved Plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from instillm.errors import ConfigError
from instillm.train.config import (
    LoraSettings,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    resolve,
)

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"model": "m", "datasets": ["d.jsonl"], "output_dir": "out"}


def test_minimal_config_and_defaults():
    c = config_from_dict(MINIMAL)
    assert c.datasets[0].path == "d.jsonl" and c.datasets[0].weight == 1.0 and c.datasets[0].task is None
    assert c.lora is None and c.precision == "fp32" and c.resume == "auto"
    assert config_from_dict(c.to_dict()) == c  # round trip through plain data


def test_every_problem_is_reported_at_once_with_its_path():
    bad = {
        "datasets": [{"path": "a.jsonl", "wieght": 2}, {"path": "b.jsonl", "weight": -1}],
        "output_dir": "out",
        "lr": 1e-4,
        "batch_size": "eight",
        "precision": "fp16",
        "lora": {"r": 0, "alhpa": 8},
        "mixing": {"temperature": 0},
    }
    with pytest.raises(ConfigError) as e:
        config_from_dict(bad)
    msg = str(e.value)
    for expected in (
        "model: required",
        "datasets[0].wieght: unknown key (did you mean 'weight'?)",
        "datasets[1].weight: must be > 0",
        "lr: unknown key (did you mean 'learning_rate'?)",
        "batch_size: expected int",
        "precision: 'fp16' is not one of",
        "lora.r: must be >= 1",
        "lora.alhpa: unknown key",
        "mixing.temperature: must be > 0",
    ):
        assert expected in msg, expected
    assert msg.count("\n  - ") == 9


def test_direct_construction_is_validated_and_normalised():
    c = TrainConfig(model="m", datasets=["d.jsonl"], output_dir="o", lora=LoraSettings(target_modules=["q_proj"]))
    assert isinstance(c.datasets, tuple) and c.lora.target_modules == ("q_proj",)
    hash(c)  # frozen and hashable
    with pytest.raises(ConfigError, match="warmup_steps: set either"):
        TrainConfig(model="m", datasets=["d"], output_dir="o", warmup_steps=3, warmup_ratio=0.1)


def test_yaml_numbers_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndatasets: [{path: d.jsonl}]\noutput_dir: o\nlearning_rate: 2e-5\n")
    c = load_config(path, ["lora.r=16", "datasets.0.weight=3", "packing=true", "adam_betas=[0.9, 0.95]"])
    assert c.learning_rate == 2e-5  # PyYAML reads 2e-5 as a string; it is accepted as a float
    assert c.lora == LoraSettings(r=16) and c.datasets[0].weight == 3.0 and c.packing is True
    assert c.adam_betas == (0.9, 0.95)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["packing"])
    with pytest.raises(ConfigError, match="batch_sise: unknown key"):
        load_config(path, ["batch_sise=4"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_override_does_not_mutate_input():
    data = {"lora": None}
    out = apply_overrides(data, ["lora.alpha=4"])
    assert data == {"lora": None} and out == {"lora": {"alpha": 4}}


def test_example_config_file_loads():
    c = load_config(REPO / "configs" / "example_train.yaml")
    assert c.model and c.output_dir and c.datasets


def test_resolve_math():
    c = config_from_dict(
        {**MINIMAL, "batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 3, "warmup_ratio": 0.1}
    )
    plan = resolve(c, n_train_sequences=100, world_size=2)
    assert plan.micro_batches_per_epoch == 25  # ceil(100 / 4)
    assert plan.global_batch == 16  # 4 × 2 × 2
    assert plan.steps_per_epoch == 6  # 25 // (2 × 2)
    assert plan.dropped_micro_batches_per_epoch == 1
    assert plan.total_steps == 18 and plan.warmup_steps == 2  # ceil(0.1 × 18)
    assert plan.epochs == 3.0

    steps = resolve(config_from_dict({**MINIMAL, "max_steps": 7, "warmup_steps": 3}), 10, 1)
    assert steps.total_steps == 7 and steps.warmup_steps == 3 and steps.steps_per_epoch == 2
    assert resolve(config_from_dict({**MINIMAL, "epochs": 0.5}), 80, 1).total_steps == 5


def test_resolve_rejects_too_little_data():
    c = config_from_dict({**MINIMAL, "batch_size": 8, "gradient_accumulation_steps": 4})
    with pytest.raises(ConfigError, match="batch_size: 20 training sequences"):
        resolve(c, 20, world_size=1)
