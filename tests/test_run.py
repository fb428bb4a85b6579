"""`instillm run`: the whole loop on the tiny preset, stage caching, config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from instillm.errors import ConfigError
from instillm.run import load_run_config, run, run_config_from_dict

# A few skills a tiny model picks up within seconds of CPU training.
MINI = {
    "name": "mini",
    "skills": {
        "families": ["even_odd", "sign", "first_n"],
        "heldout_families": ["first_n"],
        "n_train_per_family": 800,
        "n_eval_per_family": 12,
    },
    "model": {"init": "tiny", "seed": 0, "vocab_size": 300},
    "train": {
        "max_length": 96,
        "packing": True,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.05,
        "max_steps": 500,
        "logging_interval": 50,
    },
    "eval": {"max_new_tokens": 24, "batch_size": 32},
}

# The same run cut to two training steps on a few examples: for tests of which stages rerun.
TWO_STEPS = {
    **MINI,
    "skills": {**MINI["skills"], "n_train_per_family": 20, "n_eval_per_family": 2},
    "train": {**MINI["train"], "max_steps": 2},
}


def write_cfg(tmp_path: Path, **over) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**MINI, "output_dir": str(tmp_path / "out"), **over}))
    return path


def test_mini_run_learns_and_reports(tmp_path: Path):
    cfg = load_run_config(write_cfg(tmp_path))
    messages: list[str] = []
    results = run(cfg, say=messages.append)
    out = Path(cfg.output_dir)
    for name in ("results.json", "report.html", "report.md", "before_after.png", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["after"]) == {"heldout_instances", "heldout_phrasings", "heldout_families"}
    assert saved["after"]["heldout_instances"] > saved["before"]["heldout_instances"]
    assert saved["after"]["heldout_instances"] >= 0.5, saved["after"]
    assert all(v < 0.2 for v in saved["baseline_per_family"]["heldout_instances"].values())
    # A second run with the same config skips every stage.
    messages.clear()
    again = run(cfg, say=messages.append)
    assert sum("skipped" in m for m in messages) == 5
    assert again["after"] == results["after"]


def test_changing_eval_settings_reruns_only_evaluations(tmp_path: Path):
    base = TWO_STEPS
    cfg = run_config_from_dict({**base, "output_dir": str(tmp_path / "o")})
    run(cfg, say=lambda m: None)
    messages: list[str] = []
    cfg2 = run_config_from_dict({**base, "output_dir": str(tmp_path / "o"), "eval": {"max_new_tokens": 8}})
    run(cfg2, say=messages.append)
    skipped = {m.removeprefix("[dim]").split(":")[0] for m in messages if "skipped" in m}
    assert skipped == {"data", "model", "train"}


def test_config_errors_are_reported_together(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        run_config_from_dict({"bogus": 1, "eval": {"max_new_tokens": 0}, "train": {"lr": 1, "model": "x"}})
    msg = str(e.value)
    for part in (
        "bogus: unknown key",
        "eval.max_new_tokens",
        "train.lr: unknown key",
        "train.model: set by instillm run",
    ):
        assert part in msg, msg
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")


def test_model_initializer_range_is_checked_and_reaches_the_model(tmp_path: Path):
    with pytest.raises(ConfigError, match="model.initializer_range: must be > 0"):
        run_config_from_dict({"model": {"initializer_range": 0}})
    base = {
        **MINI,
        "skills": {**MINI["skills"], "n_train_per_family": 20, "n_eval_per_family": 2},
        "train": {**MINI["train"], "max_steps": 1},
        "eval": {"max_new_tokens": 2, "before": False},
    }
    cfg = run_config_from_dict(
        {**base, "output_dir": str(tmp_path / "o"), "model": {**MINI["model"], "initializer_range": 0.06}}
    )
    run(cfg, say=lambda m: None)
    model_cfg = json.loads((tmp_path / "o" / "model" / "config.json").read_text())
    assert model_cfg["initializer_range"] == 0.06


def test_the_quickstart_config_is_valid_and_builds_its_suite():
    from instillm.data.skills import SuiteConfig, heldout_family_names

    cfg = load_run_config(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    suite = SuiteConfig(
        **{
            **cfg.skills.__dict__,
            "families": tuple(cfg.skills.families),
            "heldout_families": tuple(cfg.skills.heldout_families),
        }
    )
    assert 0 < len(heldout_family_names(suite)) < len(suite.selected())


def test_an_empty_user_eval_file_fails_before_the_model_stage(tmp_path: Path):
    from instillm.data.skills import SuiteConfig, build_suite, write_suite
    from instillm.errors import DataError

    train = tmp_path / "train.jsonl"
    write_suite(
        build_suite(
            SuiteConfig(families=("even_odd",), heldout_families=(), n_train_per_family=4, n_eval_per_family=1)
        ),
        tmp_path / "s",
    )
    train.write_text((tmp_path / "s" / "train.jsonl").read_text())
    (tmp_path / "held.jsonl").write_text("")
    cfg = run_config_from_dict(
        {"output_dir": str(tmp_path / "o"), "data": {"train": [str(train)], "eval": [str(tmp_path / "held.jsonl")]}}
    )
    with pytest.raises(DataError, match="held.jsonl"):
        run(cfg, say=lambda m: None)
    assert not (tmp_path / "o" / "model").exists()


def test_api_key_never_in_repr_nor_in_stage_keys(tmp_path):
    # rotating a judge's key must not re-run stages, and the key shows in no repr
    from instillm.run import RunConfig

    def config(key: str) -> RunConfig:
        judge = {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "j", "api_key": key}
        return RunConfig.from_dict(
            {
                "name": "k",
                "output_dir": str(tmp_path),
                "suites": {"judge": {"reference": str(tmp_path / "ref.json"), "judge": judge}},
            }
        )

    (tmp_path / "ref.json").write_text("[]")
    a, b = config("sk-one-111"), config("sk-two-222")
    assert "sk-one-111" not in repr(a) and "sk-one-111" not in str(a.to_dict())
    from dataclasses import asdict

    from instillm.run import _hash, _redact

    assert _hash(_redact(asdict(a.suites.judge))) == _hash(_redact(asdict(b.suites.judge)))


def test_real_student_config_loads():
    from pathlib import Path

    from instillm.run import load_run_config

    cfg = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "real_student.yaml")
    assert cfg.model.path == ".cache/smollm2-135m-instruct" and cfg.train.lora is not None
    assert set(cfg.skills.heldout_families) <= set(cfg.skills.families)


def test_a_changed_resolved_template_reruns_the_evaluations_after(tmp_path: Path):
    """The after-evaluations use template "auto": what it resolves to (the saved template) is in their keys."""
    base = TWO_STEPS
    cfg = run_config_from_dict({**base, "output_dir": str(tmp_path / "o")})
    run(cfg, say=lambda m: None)
    final = tmp_path / "o" / "train" / "final"
    saved = final / "chat_template.jinja"
    if saved.is_file():
        saved.write_text(saved.read_text() + "{# edited #}")
    else:
        tc = json.loads((final / "tokenizer_config.json").read_text())
        tc["chat_template"] += "{# edited #}"
        (final / "tokenizer_config.json").write_text(json.dumps(tc))
    messages: list[str] = []
    run(cfg, say=messages.append)
    skipped = {m.removeprefix("[dim]").split(":")[0] for m in messages if "skipped" in m}
    assert skipped == {"data", "model", "eval_before", "train"}
