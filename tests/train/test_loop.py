"""End-to-end training on the tiny preset: loss drops, outputs are complete, errors come first."""

from __future__ import annotations

import json
import math

import pytest
import torch

from instillm.errors import ConfigError, DataError, ModelError
from instillm.train.config import config_from_dict
from instillm.train.loop import train
from tests.train.helpers import base_config, make_examples, read_metrics, write_jsonl


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return [
        write_jsonl(d / "reverse.jsonl", make_examples(120, "reverse")),
        write_jsonl(d / "upper.jsonl", make_examples(120, "upper")),
    ]


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, task_files, tmp_path_factory):
    """30 optimizer steps of full fine-tuning on two tasks, with eval and a checkpoint."""
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = base_config(
        tiny_model_dir,
        task_files,
        out,
        max_steps=30,
        batch_size=8,
        eval_split=0.1,
        eval_interval=15,
        save_interval=15,
        save_total_limit=1,
        warmup_steps=3,
        lr_scheduler="cosine",
        weight_decay=0.01,
    )
    return train(config_from_dict(cfg), progress=False)


def test_loss_drops(full_run):
    losses = [m["loss"] for m in read_metrics(full_run.output_dir) if "loss" in m]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    evals = [m["eval_loss"] for m in read_metrics(full_run.output_dir) if "eval_loss" in m]
    assert len(evals) == 2 and evals[1] < evals[0] and full_run.eval_loss == evals[1]
    assert math.isclose(full_run.final_loss, losses[-1])


def test_every_weight_changed_and_model_reloads_with_template(full_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after_model = AutoModelForCausalLM.from_pretrained(full_run.final_dir)
    after = after_model.state_dict()
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k]) and "rotary" not in k]
    assert unchanged == []
    assert after_model.config.use_cache is True
    tok = AutoTokenizer.from_pretrained(full_run.final_dir)
    assert "<|im_start|>" in tok.chat_template


def test_run_manifest_metrics_and_outputs(full_run, task_files):
    out = full_run.output_dir
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["config"]["max_steps"] == 30
    assert manifest["plan"]["total_steps"] == 30 and manifest["plan"]["global_batch"] == 8
    assert manifest["plan"]["warmup_steps"] == 3
    import hashlib

    assert [f["sha256"] for f in manifest["data"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in task_files]
    assert manifest["task_counts"] == full_run.task_counts and set(full_run.task_counts) == {"reverse", "upper"}
    assert sum(full_run.task_counts.values()) + manifest["n_eval_examples"] == 240
    assert {"torch", "transformers", "accelerate", "peft"} <= set(manifest["versions"])
    assert "git_sha" in manifest
    first = read_metrics(out)[0]
    assert {"step", "loss", "lr", "trained_tokens", "tokens_per_s", "grad_norm"} <= set(first)
    # Linear warmup over 3 steps as in transformers: step 1 runs at lr 0, step 2 at 1/3.
    assert first["lr"] == 0.0 and read_metrics(out)[1]["lr"] == pytest.approx(3e-3 / 3)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # save_total_limit 1: only the newest checkpoint is kept.
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-30"]
    assert full_run.trained_tokens == read_metrics(out)[-2]["trained_tokens"] > 0


def test_errors_name_the_setting_before_any_compute(tiny_model_dir, task_files, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="does not exist"):
        train(config_from_dict(base_config(tmp_path / "no-model", task_files, out)), progress=False)
    with pytest.raises(DataError, match=r"datasets\[1\].path"):
        train(config_from_dict(base_config(tiny_model_dir, [task_files[0], tmp_path / "x.jsonl"], out)), progress=False)
    with pytest.raises(DataError, match="no example is left after rendering.*max_length"):
        train(config_from_dict(base_config(tiny_model_dir, task_files, out, max_length=10)), progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        train(
            config_from_dict(
                base_config(tiny_model_dir, task_files, out, batch_size=200, gradient_accumulation_steps=3)
            ),
            progress=False,
        )
    assert not out.exists()  # nothing written, nothing computed


def test_resume_never_refuses_existing_checkpoints(full_run, tiny_model_dir, task_files):
    cfg = base_config(tiny_model_dir, task_files, full_run.output_dir, resume="never")
    with pytest.raises(ConfigError, match="resume: never"):
        train(config_from_dict(cfg), progress=False)


def test_changed_settings_refuse_to_resume(full_run, tiny_model_dir, task_files):
    cfg = base_config(
        tiny_model_dir, task_files, full_run.output_dir, max_steps=30, batch_size=4, eval_split=0.1, warmup_steps=3
    )
    with pytest.raises(ConfigError, match=r"other settings \(.*batch_size: 8 → 4"):
        train(config_from_dict(cfg), progress=False)


def test_metrics_start_at_the_first_step(tiny_model_dir, task_files, tmp_path):
    """The loss curve (report, TensorBoard) starts at step 1, not at the first logging interval."""
    cfg = base_config(tiny_model_dir, task_files, tmp_path / "out", max_steps=5, logging_interval=4)
    train(config_from_dict(cfg), progress=False)
    assert [m["step"] for m in read_metrics(tmp_path / "out") if "loss" in m] == [1, 4, 5]


def test_bf16_autocast_packed_step_saves_the_template_used(tiny_model_dir, task_files, tmp_path):
    from transformers import AutoTokenizer

    from instillm.data.templates import ALPACA

    cfg = base_config(
        tiny_model_dir,
        task_files,
        tmp_path / "out",
        precision="bf16",
        packing=True,
        max_steps=1,
        max_length=128,
        template="alpaca",
    )
    result = train(config_from_dict(cfg), progress=False)
    assert result.steps == 1 and math.isfinite(result.final_loss) and result.final_loss > 0
    # The tiny model ships chatml; the saved tokenizer carries the template training used.
    assert AutoTokenizer.from_pretrained(result.final_dir).chat_template == ALPACA


def test_gradient_checkpointing_gives_the_same_weights(tiny_model_dir, task_files, tmp_path):
    from safetensors.torch import load_file

    from instillm.train.loop import build_model

    on = build_model(config_from_dict(base_config(tiny_model_dir, task_files, tmp_path, gradient_checkpointing=True)))
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in on.modules())
    runs = []
    for gc in (False, True):
        cfg = base_config(
            tiny_model_dir,
            task_files,
            tmp_path / f"gc-{gc}",
            gradient_checkpointing=gc,
            max_steps=2,
            group_by_length=True,
        )
        runs.append(train(config_from_dict(cfg), progress=False))
    a, b = (load_file(str(r.final_dir / "model.safetensors")) for r in runs)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert runs[0].final_loss == pytest.approx(runs[1].final_loss, abs=1e-6)


def test_prepare_data_splits_then_mixes_with_cap_and_weights(tiny_model_dir, tiny_tokenizer, tmp_path):
    from instillm.train.loop import prepare_data

    big = write_jsonl(tmp_path / "big.jsonl", make_examples(200, "reverse"))
    small = write_jsonl(tmp_path / "small.jsonl", make_examples(40, "upper"))
    cfg = base_config(tiny_model_dir, [big, small], tmp_path / "out", eval_split=0.1, mixing={"cap": 60, "total": 200})
    cfg["datasets"][1]["weight"] = 2.0
    data = prepare_data(config_from_dict(cfg), tiny_tokenizer)
    assert len(data.eval) == 24 and len(data.train) == 200
    # rate ∝ weight · min(n, 60): reverse 1·60, upper 2·min(~36, 60)
    n_upper = data.mix.available["upper"]
    expected_upper = round(200 * 2 * n_upper / (60 + 2 * n_upper))
    assert data.mix.counts == {"reverse": 200 - expected_upper, "upper": expected_upper}
    assert {r.example_id for r in data.eval}.isdisjoint({r.example_id for r in data.train})

    cfg["datasets"][1]["task"] = "reverse"  # same task from two datasets with different weights
    with pytest.raises(ConfigError, match=r"datasets\[1\].weight"):
        prepare_data(config_from_dict(cfg), tiny_tokenizer)
