"""`instillm run` with evaluation suites: results.json and the report, stage caching, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from instillm.errors import ConfigError
from instillm.run import load_run_config, run, run_config_from_dict

# Seconds, not learning: a few steps on a few examples (tests/test_run.py checks that training learns).
FAST = {
    "name": "suites",
    "skills": {"families": ["even_odd", "sign"], "n_train_per_family": 20, "n_eval_per_family": 2},
    "model": {"init": "tiny", "seed": 0, "vocab_size": 300},
    "train": {"max_length": 96, "batch_size": 4, "max_steps": 2, "logging_interval": 1},
    "eval": {"max_new_tokens": 8, "batch_size": 8},
}
ZEROSHOT_TEMPLATES = ("glue_mrpc_equivalent.jsonl", "glue_mrpc_generate_paraphrase.jsonl")  # rank + generation


@pytest.fixture()
def suite_data(shared_data: Path, tmp_path: Path) -> dict[str, str]:
    """IFEval inputs and a directory holding two T0 templates (one classification, one generation)."""
    t0 = tmp_path / "t0"
    t0.mkdir()
    for name in ZEROSHOT_TEMPLATES:
        (t0 / name).symlink_to(shared_data / "t0_multitask" / name)
    return {"ifeval": str(shared_data / "ifeval" / "input_data.jsonl"), "t0": str(t0)}


def suites(data: dict[str, str], ifeval_limit: int = 3) -> dict:
    return {
        "ifeval": {"inputs": data["ifeval"], "limit": ifeval_limit, "max_new_tokens": 16},
        "zeroshot": {"data": data["t0"], "limit": 3, "max_new_tokens": 8},
    }


def skipped(messages: list[str]) -> set[str]:
    return {m.removeprefix("[dim]").split(":")[0] for m in messages if "skipped" in m}


def test_suites_land_in_results_and_report_and_are_cached(tmp_path: Path, suite_data: dict[str, str]):
    out = tmp_path / "out"
    cfg = run_config_from_dict({**FAST, "output_dir": str(out), "suites": suites(suite_data)})
    run(cfg, say=lambda m: None)
    saved = json.loads((out / "results.json").read_text())
    ife, zs = saved["suites"]["ifeval"], saved["suites"]["zeroshot"]
    for stage in ("before", "after"):
        assert ife[stage]["num_prompts"] == 3
        assert 0.0 <= ife[stage]["prompt_level_strict"] <= ife[stage]["prompt_level_loose"] <= 1.0
        assert sum(g["n"] for g in ife[stage]["per_group"].values()) == ife[stage]["num_instructions"]
        assert set(ife[stage]["per_group"]) == {i.split(":")[0] for i in ife[stage]["per_instruction"]}
        assert zs[stage]["evaluated_clusters"] == ["paraphrase_identification"]
        kinds = {t: v["kind"] for t, v in zs[stage]["templates"].items()}
        assert kinds == {"glue_mrpc_equivalent": "classification", "glue_mrpc_generate_paraphrase": "generation"}
        assert all(v["n"] == 3 for v in zs[stage]["templates"].values())
    for f in ("ifeval_before/responses.jsonl", "ifeval_after/ifeval_summary.json", "zeroshot_after/results.json"):
        assert (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    for part in (
        "## IFEval",
        "prompt level strict",
        "## Zero-shot T0 clusters",
        "| paraphrase_identification |",
        "suite_ifeval.png",
        "suite_zeroshot.png",
        "IFEval: weakest instruction groups",
        "Zero-shot T0: weakest",
    ):
        assert part in md, part
    assert (out / "suite_ifeval.png").stat().st_size > 0 and (out / "suite_zeroshot.png").stat().st_size > 0
    assert 'src="suite_zeroshot.png"' in (out / "report.html").read_text()

    messages: list[str] = []
    again = run(cfg, say=messages.append)
    assert skipped(messages) == {
        "data",
        "model",
        "eval_before",
        "train",
        "eval_after",
        "ifeval_before",
        "ifeval_after",
        "zeroshot_before",
        "zeroshot_after",
    }
    assert again["suites"] == saved["suites"]

    messages.clear()
    cfg2 = run_config_from_dict({**FAST, "output_dir": str(out), "suites": suites(suite_data, ifeval_limit=2)})
    changed = run(cfg2, say=messages.append)
    assert skipped(messages) == {
        "data",
        "model",
        "eval_before",
        "train",
        "eval_after",
        "zeroshot_before",
        "zeroshot_after",
    }
    assert changed["suites"]["ifeval"]["after"]["num_prompts"] == 2


def test_cli_run_with_eval_before_off_skips_suites_before(tmp_path: Path, suite_data: dict[str, str]):
    from typer.testing import CliRunner

    from instillm.cli import app

    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({**FAST, "output_dir": str(tmp_path / "o"), "eval": {**FAST["eval"], "before": False}})
    )
    sets = [
        "--set",
        f"suites.ifeval.inputs={suite_data['ifeval']}",
        "--set",
        "suites.ifeval.limit=1",
        "--set",
        "suites.ifeval.max_new_tokens=4",
    ]
    res = CliRunner().invoke(app, ["run", str(path), *sets])
    assert res.exit_code == 0, res.output
    assert "ifeval: prompt-level strict accuracy — → " in res.output
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["suites"]["ifeval"]["before"] is None and saved["suites"]["ifeval"]["after"]["num_prompts"] == 1
    assert not (tmp_path / "o" / "ifeval_before").exists()
    assert "## IFEval" in (tmp_path / "o" / "report.md").read_text()
    res = CliRunner().invoke(app, ["run", str(path), "--set", "suites.zeroshot.data=nowhere"])
    assert res.exit_code != 0 and "suites.zeroshot.data: path not found: nowhere" in res.output, res.output


def test_bad_suite_config_fails_in_one_pass(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        run_config_from_dict(
            {
                "suites": {
                    "ifeval": {"inputs": str(tmp_path / "nope.jsonl"), "limt": 3},
                    "zeroshot": {"data": str(tmp_path / "no_t0"), "heldout_clusters": ["sentimen"]},
                    "mt_bench": {"data": str(tmp_path), "judge": {"kind": "openai", "model": "j"}},
                    "judge": {
                        "reference": str(tmp_path / "ref.json"),
                        "judge": {"model": "j", "base_url": "u"},
                        "judge_style": "vibes",
                    },
                    "alpaca": {},
                }
            }
        )
    msg = str(e.value)
    for part in (
        "suites.alpaca: unknown key",
        "suites.ifeval.limt: unknown key (did you mean 'limit'?)",
        "suites.ifeval.inputs: file not found",
        "suites.zeroshot.data: path not found",
        "suites.mt_bench.data: " + str(tmp_path) + " lacks question.jsonl",
        "suites.mt_bench.judge.base_url: required",
        "suites.judge.reference: file not found",
        "suites.judge.judge_style: 'vibes'",
        "suites.zeroshot.heldout_clusters: ['sentimen'] unknown",
    ):
        assert part in msg, msg
    with pytest.raises(ConfigError, match="suites.zeroshot.data: .*no \\*.jsonl template file"):
        run_config_from_dict({"suites": {"zeroshot": {"data": str(tmp_path)}}})
    with pytest.raises(ConfigError, match="suites.mt_bench.judge: required"):
        run_config_from_dict({"suites": {"mt_bench": {"data": str(tmp_path)}}})


def test_set_overrides_reach_suites(tmp_path: Path, suite_data: dict[str, str]):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\n")
    cfg = load_run_config(
        path,
        [
            f"suites.ifeval.inputs={suite_data['ifeval']}",
            "suites.ifeval.limit=5",
            f"suites.zeroshot.data={suite_data['t0']}",
            "suites.zeroshot.heldout_clusters=[paraphrase_identification]",
        ],
    )
    assert cfg.suites.ifeval.limit == 5 and cfg.suites.zeroshot.heldout_clusters == ("paraphrase_identification",)
    assert set(cfg.suites.configured()) == {"ifeval", "zeroshot"}
    with pytest.raises(ConfigError, match="suites.ifeval.inputs: required"):
        load_run_config(path, ["suites.ifeval.limit=5"])


def test_mt_bench_and_judge_suites_through_a_served_judge(tmp_path: Path, shared_data: Path, tiny_server):
    """The tiny model judges itself over HTTP: the numbers are noise, the plumbing and the counts are not."""
    ref = tmp_path / "ref.json"
    # Short rows: the judge prompt has to fit the tiny judge's 1,024 positions.
    rows = [
        {"instruction": "Name a color.", "output": "Blue.", "generator": "ref-model", "dataset": "koala"},
        {"instruction": "Say hi.", "output": "Hi!", "generator": "ref-model", "dataset": "oasst"},
    ]
    ref.write_text(json.dumps(rows))
    # The served judge needs no key; one given must still never be written to disk.
    judge = {
        "kind": "openai",
        "base_url": tiny_server.base_url,
        "model": tiny_server.model,
        "max_retries": 0,
        "api_key": "sk-secret-123",
    }
    out = tmp_path / "out"
    cfg = run_config_from_dict(
        {
            **FAST,
            "output_dir": str(out),
            "eval": {**FAST["eval"], "before": False},
            "suites": {
                "mt_bench": {
                    "data": str(shared_data / "mt_bench"),
                    "limit": 1,
                    "max_new_tokens": 8,
                    "judge": judge,
                    "judge_max_tokens": 8,
                },
                "judge": {"reference": str(ref), "max_new_tokens": 8, "judge": judge, "judge_max_tokens": 4},
            },
        }
    )
    res = run(cfg, say=lambda m: None)["suites"]
    mt = res["mt_bench"]["after"]
    assert mt["n_questions"] == 1 and mt["n_judgments"] == 2 == mt["n"] + mt["n_failures"]
    assert set(mt["per_turn"]) == {"1", "2"} and mt["judge"] == "tiny"
    assert len((out / "mt_bench_after" / "judgments.jsonl").read_text().splitlines()) == 2
    jd = res["judge"]["after"]
    assert jd["n_pairs"] == 2 and jd["n_judged"] + jd["n_failures"] == 2 and jd["reference"] == rows[0]["generator"]
    assert sum(d["n_pairs"] for d in jd["per_dataset"].values()) == 2
    annotations = json.loads((out / "judge_after" / "annotations.json").read_text())
    assert [a["instruction"] for a in annotations] == [r["instruction"] for r in rows]
    md = (out / "report.md").read_text()
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".yaml", ".jsonl", ".md", ".html"):
            assert "sk-secret-123" not in f.read_text(errors="replace"), f
    assert "## MT-Bench" in md and "## Pairwise judge" in md and (out / "suite_judge.png").exists()


def test_example_run_config_and_its_suites_block_load(shared_data: Path, tmp_path: Path):
    """configs/example_run.yaml loads as is, and with its commented-out `suites:` block switched on."""
    example = Path(__file__).resolve().parents[1] / "configs" / "example_run.yaml"
    assert load_run_config(example).suites.configured() == {}
    lines = example.read_text().splitlines()
    start = lines.index("# suites:")
    on = lines[:start] + [ln[2:] for ln in lines[start:]]
    text = "\n".join(on).replace("../shared/data", str(shared_data))
    (tmp_path / "run.yaml").write_text(text)
    cfg = load_run_config(tmp_path / "run.yaml")
    assert set(cfg.suites.configured()) == {"ifeval", "zeroshot", "mt_bench", "judge"}
    assert cfg.suites.mt_bench.judge.base_url == "http://127.0.0.1:8000/v1" and cfg.suites.judge.limit == 20
