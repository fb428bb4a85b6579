"""A LoRA run's adapter loads from any current directory: its base is saved by absolute path and
looked up through one function (run.json, then adapter_config.json; relative names against the run
dir, then the current directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from instillm.errors import ModelError
from instillm.models.loading import adapter_base, load_local
from instillm.train.config import config_from_dict
from instillm.train.loop import train
from tests.train.helpers import base_config, make_examples, write_jsonl


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step LoRA run trained with its base given relative to the current directory."""
    tmp = tmp_path_factory.mktemp("lora-rel")
    data = write_jsonl(tmp / "d.jsonl", make_examples(16, "upper"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tiny_model_dir.parent)
        cfg = base_config(Path(tiny_model_dir.name), data, tmp / "run", max_steps=2, lora={"r": 4, "dropout": 0.0})
        train(config_from_dict(cfg), progress=False)
    return tmp / "run"


def test_a_lora_run_loads_from_another_directory(lora_run, tiny_model_dir, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = lora_run / "final"
    assert json.loads((lora_run / "run.json").read_text())["config"]["model"] == tiny_model_dir.name  # relative
    recorded = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tiny_model_dir.resolve())  # pinned absolute at save time
    monkeypatch.chdir(tmp_path)
    lm = load_local(final, device="cpu")
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final).eval()
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, expected(input_ids=ids).logits)


def test_an_older_run_with_a_relative_base_loads_from_where_it_resolves(lora_run, tiny_model_dir, monkeypatch):
    config_path = lora_run / "final" / "adapter_config.json"
    saved = config_path.read_text()
    config_path.write_text(json.dumps({**json.loads(saved), "base_model_name_or_path": tiny_model_dir.name}))
    try:
        monkeypatch.chdir(lora_run)  # neither name resolves here
        with pytest.raises(ModelError, match=r"base model of the LoRA adapter.*base_model_name_or_path"):
            adapter_base(lora_run / "final")
        monkeypatch.chdir(tiny_model_dir.parent)  # where it was trained
        assert Path(adapter_base(lora_run / "final")) == tiny_model_dir.resolve()
        assert load_local(lora_run / "final", device="cpu").model is not None
    finally:
        config_path.write_text(saved)


def _adapter(run: Path, recorded: str, in_run_json: str | None = None) -> Path:
    final = run / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": recorded}))
    if in_run_json is not None:
        (run / "run.json").write_text(json.dumps({"config": {"model": in_run_json}}))
    return final


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_adapter_base_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    in_run = _model_dir(tmp_path / "run" / "base")
    in_cwd = _model_dir(tmp_path / "base")
    elsewhere = _model_dir(tmp_path / "abs" / "base")
    # a relative name: against the run dir first, then the current directory
    assert Path(adapter_base(_adapter(tmp_path / "run", "base"))) == in_run
    assert Path(adapter_base(_adapter(tmp_path / "run2", "base"))) == in_cwd
    # an absolute path (new runs record one) wins over a relative run.json entry
    assert Path(adapter_base(_adapter(tmp_path / "run3", str(elsewhere), in_run_json="base"))) == elsewhere
    # nothing local: a hub id is passed on, anything else is a clear error
    assert adapter_base(_adapter(tmp_path / "run4", "org/model")) == "org/model"
    with pytest.raises(ModelError, match="gone-model"):
        adapter_base(_adapter(tmp_path / "run5", "gone-model"))
