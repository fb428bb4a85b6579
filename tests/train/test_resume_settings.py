"""Resuming only continues a run of the same settings: a changed template, learning rate, model or
LoRA shape is refused by name before any compute; logging, eval and save intervals may change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instillm.errors import ConfigError
from instillm.train import checkpoint as ckpt
from instillm.train.config import config_from_dict
from instillm.train.loop import RESUMABLE, check_resume_settings, resume_settings, train
from tests.train.helpers import base_config, make_examples, write_jsonl


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "d.jsonl", make_examples(24, "reverse"))


def _config(model_dir: Path, data: Path, out: Path, **overrides: object):
    settings = {"max_steps": 2, "save_interval": 1, "template": "chatml", **overrides}
    return config_from_dict(base_config(model_dir, data, out, **settings))


def test_changed_template_and_learning_rate_refuse_to_resume(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    train(_config(tiny_model_dir, data, out), progress=False)
    weights = (out / "final" / "model.safetensors").read_bytes()
    changed = _config(tiny_model_dir, data, out, template="alpaca", learning_rate=1e-3)
    with pytest.raises(ConfigError) as info:
        train(changed, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert 'template: "chatml" → "alpaca"' in message and "learning_rate: 0.003 → 0.001" in message
    assert "step-2" in message and "new output_dir" in message and str(out / "checkpoints") in message
    assert (out / "final" / "model.safetensors").read_bytes() == weights  # not saved again with the new template
    assert json.loads((out / "run.json").read_text())["config"]["template"] == "chatml"


def test_changed_lora_shape_is_named_by_its_dotted_setting(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    train(_config(tiny_model_dir, data, out, lora={"r": 4, "alpha": 8, "dropout": 0.0}), progress=False)
    with pytest.raises(ConfigError, match=r"lora\.alpha: 8\.0 → 16\.0; lora\.dropout: 0\.0 → 0\.1"):
        train(_config(tiny_model_dir, data, out, lora={"r": 4, "alpha": 16, "dropout": 0.1}), progress=False)


def test_logging_eval_and_save_settings_may_change_on_resume(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    train(_config(tiny_model_dir, data, out, max_steps=2), progress=False)
    again = _config(tiny_model_dir, data, out, logging_interval=5, save_interval=2, save_total_limit=1)
    assert train(again, progress=False).resumed_from == 2


def test_resume_settings_leave_out_what_may_change_and_the_data_paths(tiny_model_dir, data, tmp_path):
    settings = resume_settings(_config(tiny_model_dir, data, tmp_path / "out"))
    assert not RESUMABLE & set(settings)
    assert {"model", "template", "learning_rate", "lora", "max_length", "seed", "batch_size"} <= set(settings)
    assert settings["datasets"] == [{"weight": 1.0, "task": None}]  # moving the files is fine
    assert settings["model"] == str(Path(tiny_model_dir).resolve())


def test_checkpoints_of_older_versions_without_settings_still_resume(tiny_model_dir, data, tmp_path):
    step = tmp_path / "out" / ckpt.CHECKPOINTS / "step-1"
    step.mkdir(parents=True)
    (step / ckpt.STATE_FILE).write_text(json.dumps({"step": 1, "plan": {}, "data_sha256": "x"}))
    check_resume_settings(_config(tiny_model_dir, data, tmp_path / "out"), step)  # no error
