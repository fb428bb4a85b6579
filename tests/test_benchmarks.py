"""Benchmarks whose optional dependency is missing stop with one line naming the extra to install."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUN_WITHOUT = """
import runpy, sys
sys.modules[{module!r}] = None  # as if the package were not installed
sys.argv = [{script!r}, "--quick"]
sys.path.insert(0, {bench!r})
runpy.run_path({path!r}, run_name="__main__")
"""


@pytest.mark.parametrize("script,module", [("train_throughput.py", "trl"), ("rouge_filter.py", "rouge_score")])
def test_missing_optional_dependency_is_one_line_naming_the_extra(script: str, module: str) -> None:
    path = REPO / "benchmarks" / script
    code = RUN_WITHOUT.format(module=module, script=script, bench=str(path.parent), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"{script} needs ") and 'pip install -e ".[bench]"' in lines[0]


def test_train_throughput_names_its_results_and_counts_the_flops_each_side_executes() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    assert tt.result_name(real=False, lora=False, quick=False) == "train_throughput.json"
    assert tt.result_name(real=False, lora=False, quick=True) == "train_throughput_quick.json"
    assert tt.result_name(real=False, lora=True, quick=False) == "train_throughput_lora.json"
    assert tt.result_name(real=True, lora=False, quick=False) == "train_throughput_real_full.json"
    assert tt.result_name(real=True, lora=True, quick=True) == "train_throughput_real_lora_quick.json"
    # the GPU check's files never replace the CPU's files of record
    assert tt.result_name(True, False, False, device="cuda") == "train_throughput_real_full_cuda.json"
    assert tt.result_name(True, True, True, "cuda", True) == "train_throughput_real_lora_random_cuda_quick.json"
    assert tt.result_name(True, False, False, custom=True) == "train_throughput_model_full.json"
    # the headline ratio is against TRL's fastest in any precision: fp32 runs too where bf16 is emulated
    assert tt.compared_precisions("bf16", fp32=False, emulated_bf16=True) == ("bf16", "fp32")
    assert tt.compared_precisions("bf16", fp32=False, emulated_bf16=False) == ("bf16",)
    assert tt.compared_precisions("bf16", fp32=True, emulated_bf16=False) == ("bf16", "fp32")
    assert tt.compared_precisions("fp32", fp32=True, emulated_bf16=True) == ("fp32",)
    full = tt.executed_utilisation({"body": 100, "head": 50}, False, 0.1, ins=10.0, trl=5.0, peak=1e4)
    assert full["executed_flops_per_token"] == {"instillm": 630, "trl": 900}  # head only at trained positions
    assert full["mfu_executed"] == 0.63 and full["trl_mfu_executed"] == 0.45
    lora = tt.executed_utilisation({"body": 100, "head": 50}, True, 0.1, ins=10.0, trl=5.0, peak=1e4)
    assert lora["executed_flops_per_token"] == {"instillm": 420, "trl": 600}  # no weight gradients


def test_train_throughput_counts_linear_weights_apart_from_the_head(tiny_model_dir) -> None:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    from instillm.models.loading import load_model

    model = load_model(tiny_model_dir, dtype=torch.float32)
    counts = tt.linear_parameters(model)
    cfg = model.config
    assert counts["head"] == cfg.vocab_size * cfg.hidden_size
    layers = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 7 * cfg.num_hidden_layers
    assert counts["body"] == sum(m.weight.numel() for m in layers)


def test_train_throughput_random_weights_keep_the_architecture_and_tokenizer_without_the_weights(
    tiny_model_dir, tmp_path
) -> None:
    import shutil

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    from instillm.models.loading import load_model, load_tokenizer

    bare = tmp_path / "bare"  # what travels to the GPU: config and tokenizer, no weights
    shutil.copytree(tiny_model_dir, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    made = [tt.random_weights(bare, tmp_path / f"w{i}", seed=s) for i, s in enumerate((0, 0, 1))]
    original = load_model(tiny_model_dir, dtype=torch.float32)
    models = [load_model(d, dtype=torch.float32) for d in made]

    def shape(config) -> dict:
        return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}

    assert shape(models[0].config) == shape(original.config)
    assert (made[0] / "generation_config.json").read_text() == (tiny_model_dir / "generation_config.json").read_text()
    assert load_tokenizer(made[0])("a b c").input_ids == load_tokenizer(tiny_model_dir)("a b c").input_ids
    weights = [dict(m.named_parameters())["model.layers.0.mlp.down_proj.weight"] for m in (original, *models)]
    assert torch.equal(weights[1], weights[2])  # seeded
    assert torch.equal(weights[0], weights[1])  # the fixture is instillm's own init with seed 0
    assert not torch.equal(weights[1], weights[3])
    assert not (made[0] / "gguf_source.json").exists()


def test_train_throughput_turns_checkpointing_off_by_either_name_and_picks_trl_attention() -> None:
    import dataclasses

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    @dataclasses.dataclass
    class Older:  # transformers 5.17's TrainingArguments: one name
        gradient_checkpointing: bool = True

    @dataclasses.dataclass
    class Newer(Older):  # transformers 5.25: the new name, the old one kept as an alias
        activation_checkpointing: bool = True

    assert tt.no_checkpointing(Older) == {"gradient_checkpointing": False}
    assert tt.no_checkpointing(Newer) == {"activation_checkpointing": False, "gradient_checkpointing": False}
    assert tt.trl_attention("cpu") == "sdpa"
    assert tt.device_info("cpu") == {"device": "cpu"}


def test_train_throughput_keeps_going_past_a_failed_trl_configuration() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    def run(name: str, fast: bool) -> dict:
        if not fast:
            raise RuntimeError("no flash-attention kernel")
        return {"name": name, "mode": name, "tokens_per_s": 10.0}

    rows = [tt.guarded(run, "packed", False), tt.guarded(run, "grouped", fast=True)]
    assert rows[0] == {"name": "packed", "mode": "packed", "error": "RuntimeError: no flash-attention kernel"}
    assert tt.measured(rows) == [rows[1]]
    with pytest.raises(SystemExit, match="every TRL configuration failed: RuntimeError: no flash"):
        tt.measured(rows[:1])


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "t0_multitask").is_dir(), reason="needs ../shared/data")
def test_train_throughput_saves_the_t0_sample_it_trains_on(tmp_path) -> None:
    path = tmp_path / "sample" / "t0.jsonl"
    script = REPO / "benchmarks" / "train_throughput.py"
    code = RUN_WITHOUT.format(module="trl", script=script.name, bench=str(script.parent), path=str(script))
    code = code.replace('"--quick"', f'"--save-data", {str(path)!r}')  # TRL hidden: not needed for the data
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert f"wrote {path}: {len(rows)} examples from 1132 T0 rows (4 per file)" in proc.stdout
    assert len(rows) == 1104 and all(r["messages"] for r in rows)


def test_train_throughput_never_saves_the_sample_over_the_t0_files_it_reads(tmp_path, monkeypatch) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    t0 = tmp_path / "t0_multitask"  # stands in for ../shared's files: a broken guard writes here, not there
    t0.mkdir()
    (t0 / "task_template.jsonl").write_text('{"prompt": "Say hi.", "completion": "hi<|endoftext|>"}\n')
    monkeypatch.setattr(tt, "T0_DIR", t0)
    target = t0 / "sample.jsonl"
    with pytest.raises(SystemExit) as stop:
        tt.save_data(target, 4)
    assert (
        str(stop.value)
        == f"train_throughput: --save-data {target} is inside the T0 files it reads ({t0}): choose another path"
    )
    assert sorted(f.name for f in t0.iterdir()) == ["task_template.jsonl"]
    assert tt.save_data(tmp_path / "out" / "sample.jsonl", 4) == 0  # elsewhere it writes
    assert len((tmp_path / "out" / "sample.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    "content,expected",
    [(None, "does not exist"), ("", "holds no examples"), ('{"messages": [\n', ":1: malformed_json")],
    ids=["missing", "empty", "malformed"],
)
def test_train_throughput_bad_data_is_one_line_naming_it(tiny_model_dir, tmp_path, content, expected) -> None:
    pytest.importorskip("trl")  # the run asks for TRL before it reads --data
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content, encoding="utf-8")
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--model", str(tiny_model_dir)]
    cmd += ["--quick", "--device", "cpu", "--data", str(data), "--out", str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_throughput: ") and str(data) in last and expected in last
    assert not (tmp_path / "out.json").exists()


def test_train_throughput_compares_both_sides_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path) -> None:
    pytest.importorskip("trl")
    out = tmp_path / "tiny.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--model", str(tiny_model_dir)]
    args = ["--quick", "--seqs", "2", "--rows-per-file", "1", "--threads", "1", "--fp32", "--out", str(out)]
    args += ["--packed-attention", "best"]  # short runs of each packed_attention that runs here, the fastest kept
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    for prec in r["summary"]:
        trl = r["comparison"][prec]["trl"]
        assert [x["mode"] for x in trl] == ["unpacked", "grouped", "packed", "padding_free"] or prec == "bf16"
        assert all(x["tokens_per_s"] > 0 and x["measured_steps"] == 2 for x in trl)
        s = r["summary"][prec]
        assert s["trl_best"] == max(x["tokens_per_s"] for x in trl)
        assert s["ratio"] == round(s["instillm"] / s["trl_best"], 3)
        ins = r["comparison"][prec]["instillm"]
        assert len(ins) == len(trl) + 1  # every TRL run between two instillm runs
        assert s["ratio_paired"] == tt_paired(ins, trl) and s["ratio_paired_min"] == min(s["ratio_paired"].values())
        assert all(x["compile_seconds_measured"] == 0 for x in trl + ins)  # --quick compiles nothing
    # in fp32 both sides train the same tokens with the same loss: instillm's replay of TRL's best run
    check = r["loss_check"]["fp32"]
    assert check["instillm_trained_tokens"] == check["trl_trained_tokens"]
    assert r["loss_rel_diff_fp32"] <= 1e-3 and check["instillm_losses"][0] == pytest.approx(
        check["trl_losses"][0], 1e-3
    )
    best = max(r["summary"].values(), key=lambda s: s["instillm"])["instillm"]
    assert r["ratio"] == round(best / max(s["trl_best"] for s in r["summary"].values()), 3)
    assert r["mode"] == "full" and r["data"]["examples"] > 0
    levers = {x["name"]: x["tokens_per_s"] for x in r["levers"]}
    assert set(levers) == {"packed, packed_attention: segments", "packed, packed_attention: mask"}  # no CUDA: no varlen
    chosen = r["instillm_best_setting"]["packed_attention"]
    assert levers[f"packed, packed_attention: {chosen}"] == max(levers.values())


def tt_paired(ins: list[dict], trl: list[dict]) -> dict[str, float]:
    """Each TRL run against the mean of the two instillm runs around it, written out here."""
    return {
        t["mode"]: round((ins[i]["tokens_per_s"] + ins[i + 1]["tokens_per_s"]) / 2 / t["tokens_per_s"], 3)
        for i, t in enumerate(trl)
    }


def test_train_throughput_gives_fp32_runs_segments_for_varlen(tmp_path) -> None:
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    args = argparse.Namespace(lora=False, quick=True)
    b = tt.Bench(args, tmp_path, tmp_path, tmp_path / "d.jsonl", 1, 1, 1, 2, "bf16", False, rows=1, attention="varlen")
    assert b.cfg("a", "bf16", True, False, 2).packed_attention == "varlen"
    assert b.cfg("b", "fp32", True, False, 2).packed_attention == "segments"  # flash takes bf16; same math
    assert b.cfg("c", "bf16", True, False, 2, packed_attention="mask").packed_attention == "mask"


def test_packed_attention_times_each_method_and_compares_its_outputs(monkeypatch) -> None:
    import torch
    import torch.nn.attention.varlen as varlen

    sys.path.insert(0, str(REPO / "benchmarks"))
    import packed_attention as pa

    from tests.train.helpers import varlen_stand_in

    seg = pa.rows_for([5, 7, 3, 9, 4, 6], 16, random.Random(0), tokens=20)
    assert seg.shape[1] == 16 and int((seg > 0).sum()) >= 20
    row = pa.measure(seg, repeats=1, heads=(4, 2))
    assert not pa.has_varlen("cpu") and "varlen_ms" not in row  # torch's kernel is CUDA's
    assert (
        row["mask_ms"] > 0
        and row["segments_ms"] > 0
        and row["speedup"] == round(row["mask_ms"] / row["segments_ms"], 2)
    )
    assert row["segments_max_abs_output_diff"] < 0.05  # bf16 rounding
    # with a kernel there (a CPU stand-in here), varlen is timed and checked the same way
    monkeypatch.setattr(varlen, "varlen_attn", varlen_stand_in(True, []))
    monkeypatch.setattr(pa, "has_varlen", lambda device: True)
    row = pa.measure(seg, repeats=1, heads=(4, 2))
    assert row["varlen_ms"] > 0 and row["varlen_max_abs_output_diff"] < 0.05
    assert row["varlen_speedup_vs_mask"] == round(row["mask_ms"] / row["varlen_ms"], 2)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    "content,expected",
    [(None, "does not exist"), ("", "holds no examples"), ('{"messages": [\n', ":1: malformed_json")],
    ids=["missing", "empty", "malformed"],
)
def test_packed_attention_bad_data_is_one_line_naming_it(tmp_path, content, expected) -> None:
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content, encoding="utf-8")
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "packed_attention.py"), "--data", str(data), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("packed_attention: ") and str(data) in last and expected in last
    assert not out.exists()


@pytest.mark.parametrize("script", ["packed_attention.py", "train_throughput.py"])
def test_benchmarks_never_write_their_results_over_the_data_they_read(tmp_path, script) -> None:
    data = tmp_path / "data.jsonl"
    row = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    data.write_text(row, encoding="utf-8")
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "--data", str(data), "--out", str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    name = script.removesuffix(".py")
    assert proc.stderr.strip().splitlines()[-1] == (
        f"{name}: --out {data} would overwrite input {data}; write the output elsewhere"
    )
    assert data.read_text(encoding="utf-8") == row


def test_generation_throughput_headlines_each_method_in_its_fastest_dtype() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import generation_throughput as gt

    tps = {"naive@float32": 50.0, "naive@bfloat16": 30.0, "instillm@float32": 200.0, "instillm@bfloat16": 400.0}
    assert gt.fastest(tps, "naive") == "naive@float32"
    assert gt.fastest(tps, "instillm") == "instillm@bfloat16"
    assert gt.fastest({"naive": 1.0, "instillm": 2.0, "instillm_padded_prefill": 3.0}, "instillm") == "instillm"
    # outputs are compared with the naive loop's in the same dtype
    assert gt.naive_of("instillm@bfloat16") == "naive@bfloat16"
    assert gt.naive_of("hf_batched") == gt.naive_of("instillm_padded_prefill") == "naive"
    # a run on the real model never lands on the small preset's record
    assert gt.default_out(prefix=False, real=True).name == "generation_throughput_real.json"
    assert gt.default_out(prefix=False, real=False).name == "generation_throughput.json"
    assert gt.default_out(prefix=True, real=False).name == "generation_prefix.json"
    assert gt.default_out(prefix=True, real=True).name == "generation_prefix_real.json"
    assert gt.command_of(["--model", "real", "--prefix"]).endswith("generation_throughput.py --model real --prefix")


def test_generation_throughput_main_times_every_method_in_each_dtype(tiny_model_dir, tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import generation_throughput as gt

    out = tmp_path / "gen.json"
    small = ["--model", str(tiny_model_dir), "--n-prompts", "6", "--max-new-tokens", "6", "--batch-size", "4"]
    result = gt.main([*small, "--repeats", "2", "--dtype", "best", "--out", str(out)])
    assert out.is_file() and json.loads(out.read_text())["tokens_per_s_by_method"] == result["tokens_per_s_by_method"]
    methods = {f"{m}@{d}" for m in ("naive", "hf_batched", "instillm") for d in ("float32", "bfloat16")}
    assert set(result["seconds"]) == methods and all(len(v) == 2 for v in result["seconds"].values())
    assert result["identical_outputs"] and result["hf_batched_identical_outputs"]
    assert set(result["dtype_of"]) == {"naive", "hf_batched", "instillm"}
    # each headline is its method's fastest dtype
    tps = result["tokens_per_s_by_method"]
    assert result["instillm_tokens_per_s"] == max(tps["instillm@float32"], tps["instillm@bfloat16"])
    assert result["settings"]["n_prompts"] == 6 and result["settings"]["repeats"] == 2
    # generated tokens: greedy answers of at most 6 tokens, a stop token counted
    assert 0 < result["generated_tokens"]["instillm@float32"] <= 6 * 7


def test_generation_throughput_ablations_compare_each_variant_with_the_naive_loop(tiny_model_dir, tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import generation_throughput as gt

    small = ["--model", str(tiny_model_dir), "--n-prompts", "5", "--max-new-tokens", "5", "--batch-size", "2"]
    result = gt.main([*small, "--repeats", "1", "--ablations", "--out", str(tmp_path / "gen.json")])
    for name in ("instillm_padded_prefill", "instillm_no_shared_prefix", "instillm_prefill_1_prompt"):
        assert result[f"{name}_identical_outputs"] is True and result[f"{name}_tokens_per_s"] > 0
    assert "naive" in result["seconds"] and "@" not in "".join(result["seconds"])  # one dtype: today's keys


def test_generation_prefix_says_when_no_prompt_fits_the_model(tiny_model_dir, tmp_path) -> None:
    # the tiny model's tokenizer spends over 1,024 tokens on each Self-Instruct prompt
    cmd = [sys.executable, str(REPO / "benchmarks" / "generation_throughput.py"), "--model", str(tiny_model_dir)]
    out = tmp_path / "prefix.json"
    proc = subprocess.run([*cmd, "--prefix", "--repeats", "1", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("generation_throughput: no Self-Instruct prompt") and "--max-new-tokens" in last
    assert not out.exists()


def test_generation_prefix_counts_what_the_static_generator_prefilled(tiny_model_dir) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import generation_throughput as gt

    from instillm.llm.generation import GenerateOptions, Generator
    from instillm.models.loading import load_model, load_tokenizer

    gen = Generator(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir))
    header = list(range(10, 40))
    prompts = [header + [50 + i] * (1 + i) for i in range(4)]
    shared, record = gt.run_static(gen, prompts, GenerateOptions(max_new_tokens=2, batch_size=4))
    assert record.prefilled_tokens == len(header) + sum(1 + i for i in range(4))
    plain, record = gt.run_static(gen, prompts, GenerateOptions(max_new_tokens=2, batch_size=4, min_shared_prefix=0))
    assert record.prefilled_tokens == sum(len(p) for p in prompts) and plain == shared


def test_decode_products_times_both_products_and_compares_their_logits(tiny_model_dir, tmp_path) -> None:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import decode_products as dp

    out = tmp_path / "decode.json"
    result = dp.main(
        ["--model", str(tiny_model_dir), "--rows", "1", "3", "--repeats", "1", "--steps", "2", "--generator", "3"]
        + ["--unpadded", "--out", str(out)]
    )
    (g,) = result["generator"]
    assert g["prompts"] == 3 and g["identical_outputs"] and g["torch_decode_s"] > 0
    assert [r["rows"] for r in result["by_rows"]] == [1, 3]
    for r in result["by_rows"]:
        assert r["torch_ms"] > 0 and r["transposed_ms"] > 0 and r["unpadded_ms"] > 0
        assert r["padding_speedup"] == round(r["unpadded_ms"] / r["transposed_ms"], 2)
        assert r["max_abs_logit_diff"] < 1e-4
    assert out.exists() and result["machine"]["cpu_count"]
    assert torch.is_grad_enabled()  # the benchmark leaves autograd as it found it (later tests train)


def test_serve_load_mixed_reports_the_median_of_ratios_taken_within_each_repeat() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import serve_load as sl

    greedy = next(i for i in range(100) if sl.mixed_request(i)["temperature"] == 0)
    sampled = next(i for i in range(100) if sl.mixed_request(i)["temperature"] > 0)
    static = {"requests_per_s": 1.0, "texts": {greedy: "a", sampled: "b"}}

    def run(rps: float, loaded: float, idle: float, warm: float, sampled_text: str) -> dict:
        return {
            "scheduler": "priority",
            "requests_per_s": rps,
            "short_p50_s": loaded,
            "steady_short_p50_s": loaded,
            "short_idle_p50_s": idle,
            "steady_short_idle_p50_s": idle,
            "short_idle_warm_p50_s": warm,
            "texts": {greedy: "a", sampled: sampled_text},
        }

    runs = [run(4.0, 0.6, 0.4, 0.3, "b"), run(3.0, 0.5, 0.25, 0.25, "x"), run(5.0, 0.45, 0.36, 0.3, "b")]
    got, ratios = sl.combine(runs, static)
    assert ratios == {k: got[k] for k in ratios} and "short_p50_s" not in ratios
    assert got["throughput_ratio"] == 4.0
    assert got["short_p50_ratio"] == 1.5  # ratios 1.5, 2.0, 1.25: each repeat against its own idle run
    assert got["short_p50_ratio_warm_idle"] == 2.0  # 2.0, 2.0, 1.5
    assert got["short_p50_s"] == 0.5 and got["short_idle_p50_s"] == 0.36
    assert got["identical_greedy_outputs"] is True
    assert got["sampled_requests_identical"] == 0  # the fewest of any repeat
    assert [r["short_p50_ratio"] for r in got["runs"]] == [1.5, 2.0, 1.25]
    assert "texts" not in got and all("texts" not in r for r in got["runs"])
    runs[1]["texts"][greedy] = "changed"
    assert sl.combine(runs, static)[1]["identical_greedy_outputs"] is False


def test_serve_load_names_a_cuda_run_apart_and_records_the_device(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import serve_load as sl

    assert sl.on_device(sl.RESULTS_MIXED, "cuda").name == "serve_load_mixed_cuda.json"
    assert sl.on_device(sl.RESULTS_MIXED, "cpu") == sl.RESULTS_MIXED
    got = sl.machine((0.0, 0.0, 0.0), "cpu")
    assert got["device"] == "cpu" and got["gpu"] is None


@pytest.mark.parametrize(
    "compiled_tps,emulated,adopted", [(12.0, True, True), (8.0, False, False), (None, False, False)]
)
def test_train_throughput_real_model_adopts_compile_where_its_lever_measured_faster(
    tmp_path, monkeypatch, compiled_tps, emulated, adopted
) -> None:
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    calls = []

    def lever(make_cfg, label, precision):
        calls.append((make_cfg("x").precision, label, precision))
        comp = {"tokens_per_s": compiled_tps} if compiled_tps else {"name": "c", "error": "boom"}
        return [comp, {"tokens_per_s": 10.0}]

    monkeypatch.setattr(tt, "compile_lever", lever)
    flags = dict(lora=False, quick=False, no_levers=False, no_compile=False, packed_attention="auto")
    args = argparse.Namespace(model="real", **flags)
    primary = "fp32" if emulated else "bf16"
    b = tt.Bench(args, tmp_path, tmp_path, tmp_path / "d.jsonl", 1, 4, 1, 8, primary, emulated, rows=3)
    levers, best = tt.run_levers(b, {})
    assert calls == [(primary, "packed", primary)] and len(levers) == 2  # bf16 where native, else fp32
    assert best["compile"] is adopted and tt.compiles(b, best, primary) is adopted
    assert not tt.compiles(b, best, "bf16" if emulated else "fp32")  # compiled only where it was measured
    assert tt.warmup_of(b, best, primary) == (3 if adopted else 1)
    assert tt.best_setting(b, best)["torch_compile_precision"] == (primary if adopted else None)
    for off in ({"quick": True}, {"no_compile": True}, {"no_levers": True}):  # no compile lever: eager
        calls.clear()
        b.args = argparse.Namespace(model="real", **{**flags, **off})
        assert tt.run_levers(b, {}) == ([], {"packing": True, "group": False, "compile": False}) and not calls


def test_train_throughput_records_the_cpu_generation_beside_its_name(monkeypatch, tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    fake = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\nstepping\t: 1\n"
    fake += "cache size\t: 512 KB\n\nprocessor\t: 1\nmodel name\t: other\n"
    real_read = Path.read_text
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: fake if str(self) == "/proc/cpuinfo" else real_read(self, *a, **k)
    )
    info = tt.machine_info()
    assert info["cpu"] == "AMD EPYC" and info["cpu_id"] == "cpu family 25 model 1 stepping 1"
    assert info["cache_size"] == "512 KB"  # the first processor's block only


def test_train_throughput_pairs_each_trl_run_with_the_instillm_runs_beside_it() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    ins = [{"tokens_per_s": v} for v in (100.0, 100.0, 50.0, 60.0)]  # the machine slows down in the middle
    trl = [
        {"mode": "unpacked", "tokens_per_s": 50.0},
        {"mode": "grouped", "tokens_per_s": 40.0},  # ran while it was slow: beside 100 and 50
        {"mode": "packed", "error": "boom"},
    ]
    s = tt.summary_of({"instillm": ins, "trl": trl})
    assert s["instillm"] == 80.0 and s["trl_best"] == 50.0 and s["ratio"] == 1.6  # median over all runs
    assert s["ratio_paired"] == {"unpacked": 2.0, "grouped": 1.875}  # the failed run has no pair
    assert s["ratio_paired_min"] == 1.875
    # the last TRL run of a list without the closing instillm run is paired with the one before it
    assert tt.paired_ratios(ins[:2], trl[:2]) == {"unpacked": 2.0, "grouped": 2.5}


def test_train_throughput_counts_the_compile_time_inside_each_step() -> None:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    f = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    start, after = tt.compile_seconds(), []
    for n in (3, 3, 5):  # compiled, cached, recompiled for a new shape
        f(torch.ones(n))
        after.append(tt.compile_seconds())
    got = tt.compile_time(start, after, warmup=1)
    first, cached, recompiled = got["compile_seconds_per_step"]
    assert first > 0 and cached == 0 and recompiled > 0
    assert got["compile_seconds_measured"] == round(cached + recompiled, 3)
