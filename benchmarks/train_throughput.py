"""Training throughput: instillm's engine against TRL's SFTTrainer, same model, data and batch.

    .venv/bin/python benchmarks/train_throughput.py --quick      # smoke run, ~1 min (2 sequences per step)
    .venv/bin/python benchmarks/train_throughput.py --threads 1  # the numbers of record (~12-15 min on 2 busy cores)
        [--threads auto|1|2] [--warmup 2] [--steps 16] [--slow-steps 2] [--no-levers] [--no-compile] [--fp32]
    .venv/bin/python benchmarks/train_throughput.py --model real [--lora] [--quick]
        [--model DIR] [--random-weights] [--device auto|cpu|cuda] [--data JSONL] [--save-data JSONL]
        # SmolLM2-135M-Instruct (`make real-model`), full fine-tuning or LoRA (r 16, every linear layer
        # but the head) on both sides, in the precision fastest here for both (`dtype`: fp32 without
        # bf16 matmul units); 1 warm-up + 4 measured steps per run; one lever, torch.compile of instillm's
        # decoder, adopted when faster (~45 min here); --quick: 4 sequences per step, 1 + 2 steps, no
        # compiled runs (< 5 min)

On a CUDA card (`--device auto` picks it) both sides train there in bf16 (TRL with flash-attention 2
where that package is installed, else SDPA), and the results file gets `_cuda` in its name. For a
machine without the weights or ../shared (`benchmarks/gpu_check.sh`): `--random-weights` trains the
model's architecture and tokenizer from fresh random weights (a step's time does not depend on their
values; `_random` in the name), `--save-data FILE` writes the T0 sample here and `--data FILE` reads it.

What is compared
  model   the `small` preset (Llama, 27.8M parameters, tied embeddings), built once in a temporary
          directory by `instillm.models.factory.init_model`; every run loads the same weights.
  data    a seeded sample of T0 rows (`--rows-per-file` from each of the 294 files of
          ../shared/data/t0_multitask; `instillm.data.skills.build_suite` when ../shared is absent),
          imported with `instillm.data.importer.import_files` and rendered once by instillm
          (chatml template, max_length 512, examples longer than 512 tokens dropped). TRL gets the
          very same token ids as a pre-tokenized dataset (`input_ids` + `completion_mask`) with
          `completion_only_loss=True`, so both sides train on identical tokens and labels.
  batch   one optimizer step = the same number of real tokens on every side: 8 sequences
          (unpadded ≈1.46k tokens) for unpacked / length-grouped / padding-free, or
          round(8 × mean length / 512) = 3 packed rows of ≤512 tokens. No gradient accumulation.
  optim   AdamW lr 5e-4 constant, no warmup, no weight decay, grad-norm clip 1.0, seed 0.
  TRL     SFTTrainer in four configurations (all bf16=True, i.e. bf16 autocast, completion-only loss):
          unpacked; `train_sampling_strategy="group_by_length"` (the transformers 5 name of
          group_by_length); `packing=True, packing_strategy="bfd"` (implies padding-free);
          `padding_free=True`; and (not with --quick / --no-trl-compile) grouped, packed and
          padding-free again with `torch_compile=True` (3 warm-up steps). Its fastest settings
          otherwise: `activation_checkpointing=False` (SFTConfig defaults gradient checkpointing on),
          default fused AdamW, no eval, no saving, no tqdm. TRL's best = the fastest of these runs.
  instillm `instillm.train.loop.setup()` + `train_step()` (the engine's own step) with packed or
          length-grouped batches; bf16 = autocast with `cpu_bf16_matmul: auto`: torch's own oneDNN
          bf16 kernels on a CPU with AVX512-BF16/AMX, fp32 GEMMs on bf16 values on an AVX2-only CPU
          (instillm/train/loop.py `Fp32Gemm`). Levers tried in the same run (one run each): packed vs
          length-grouped vs unpacked, fused vs per-parameter AdamW, the other thread count, the other
          `cpu_bf16_matmul` kernel choice, torch.compile of the decoder (against eager, same steps).

Throughput = real (non-padding) input tokens, prompt and response, of the measured optimizer steps
divided by their wall time (end of the last warm-up step → end of the last measured step, so data
loading, collation, logging and the optimizer are all inside). `--warmup` steps are excluded.
On a CPU without bf16 matmul units (AVX2 only) TRL's bf16 runs hit torch's emulated bf16 GEMMs
(~10 tokens/s): they then use `--slow-steps` measured steps after one warm-up, and both sides are
compared in fp32 too (as with --fp32), so that the headline `ratio` is against TRL's fastest
configuration in any precision.

Interleaving: the comparison alternates instillm and TRL runs (instillm, TRL unpacked, instillm,
TRL grouped, ..., TRL last, instillm) so that the other jobs on the machine load both sides alike;
instillm's number is the median of its runs, and each TRL run is also compared with the two instillm
runs around it (`ratio_paired_vs_each_trl_config`, `ratio_paired_min`). The load average, torch threads
and the seconds torch.compile spent in each step (`compile_seconds_per_step`; `compile_seconds_measured`
over the measured steps, where a recompile would cost a run throughput) are recorded with every run.

Loss check: instillm replays the exact examples, step by step, that TRL's best bf16 run trained on
(recovered from its collator), from the same initial weights with the same optimizer settings;
`loss_rel_diff` = |instillm − TRL| / TRL of the token-weighted mean training loss over the steps
that hold the last 20% of the examples (`loss_rel_diff_fp32`: the same against TRL's best fp32 run,
which has more steps; only with --fp32). When the comparison is in bf16 without --fp32, two bf16
runs drift apart over the steps (rounding, amplified by each update), so the check also runs in
fp32: TRL's best configuration once more in fp32 (eager) and instillm replaying its steps
(`loss_rel_diff_fp32`), and instillm's fp32 replay of TRL's bf16 steps as the reference each bf16
run is measured against (`loss_rel_diff_vs_fp32`: {trl_bf16, instillm_bf16}).

MFU = 6 · parameters · tokens/s over a matmul peak measured in the same run (large torch.matmul,
best operand layout, current threads): `mfu` uses the bf16 peak as asked (the meaningful number on
a CPU with native bf16); on an AVX2-only CPU bf16 GEMMs are emulated, instillm computes its bf16
matmuls with fp32 kernels, and `mfu_vs_fp32_peak` is the meaningful utilisation.

Writes benchmarks/results/train_throughput.json (--quick: train_throughput_quick.json) and, without
--quick, train_profile.txt: torch.profiler top ops of one step of instillm's best bf16 setting
(train_profile_eager.txt: the same step eager, when the best setting is compiled); a real
model's are train_profile_real_{full,lora}[_eager].txt.

torch.compile is adopted as instillm's best setting (`compile: true` in the train config)
only when its lever run measures faster than the eager run of the same steps; the lever runs in
bf16, or in fp32 where bf16 matmuls are emulated, and compile is used in that precision's runs.
A real model (`--model real` or a directory) runs this lever alone, first (not with --quick or
--no-compile): its steps are too slow for the others.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
T0_DIR = REPO.parent / "shared" / "data" / "t0_multitask"
MAX_LENGTH = 512
LR = 5e-4
SEED = 0
TRL_MODES = ("unpacked", "grouped", "packed", "padding_free")
TRL_COMPILED_MODES = ("grouped", "packed", "padding_free")  # with TrainingArguments.torch_compile
PACKED_ATTENTIONS = ("auto", "segments", "mask", "varlen")  # instillm's packed_attention settings
REAL_MODEL = REPO / ".cache" / "smollm2-135m-instruct"  # `make real-model`: SmolLM2-135M-Instruct from its GGUF
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}  # --lora: both sides, every linear layer but the LM head
# what random_weights() copies beside the new weights (the model's own generation settings included)
TOKENIZER_AND_GENERATION_FILES = (
    "tokenizer",
    "special_tokens_map",
    "chat_template",
    "vocab",
    "merges",
    "generation_config",
)
DEVICE = "cpu"  # where both sides train (--device; main() sets it once)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# machine


def machine_info() -> dict[str, Any]:
    """The CPU as recorded with every result: its name, and its family/model/stepping, since hosts whose
    name is only "AMD EPYC" differ by generation."""
    from _machine import cpu_name, cpuinfo

    info = cpuinfo()
    cpu_id = " ".join(f"{k} {info[k]}" for k in ("cpu family", "model", "stepping") if k in info)
    return {
        "cpu": cpu_name(info),
        "cpu_id": cpu_id or None,
        "cache_size": info.get("cache size"),
        "cores": os.cpu_count(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }


def device_info(device: str) -> dict[str, Any]:
    """The accelerator both sides train on: {"device": "cpu"}, or the CUDA card's name and memory."""
    if device != "cuda":
        return {"device": device}
    props = torch.cuda.get_device_properties(0)
    return {
        "device": "cuda",
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
    }


def busy_processes() -> list[str]:
    """Other processes using CPU right now (`ps`), to say how loaded the machine was."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pcpu,pid,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    me = os.getpid()
    rows = [ln.strip()[:120] for ln in out if ln.split() and float(ln.split()[0]) >= 5.0 and int(ln.split()[1]) != me]
    return rows[:8]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "instillm"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def matmul_peaks(quick: bool, device: str = "cpu") -> dict[str, Any]:
    """GFLOP/s of a large torch.matmul on `device`, bf16 and fp32, for each operand layout (best = the peak)."""
    cuda = device == "cuda"
    n = 8192 if cuda else 1024 if quick else 2048
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict[str, Any] = {"shape": [n, n, n], "device": device}
    layouts = {"row@row": (False, False), "row@col": (False, True), "col@row": (True, False)}
    for dtype in (torch.bfloat16, torch.float32):
        res = {}
        for name, (ta, tb) in layouts.items():
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            a = a.t() if ta else a
            b = b.t() if tb else b
            if dtype == torch.bfloat16 and name == "row@row" and not (quick or cuda):
                a, b = a[:1024, :1024], b[:1024, :1024]  # ~1 GFLOP/s: keep it short
            flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
            a @ b
            sync()
            best = math.inf
            t_end = time.perf_counter() + (0.3 if quick else 3.0)
            while True:
                t = time.perf_counter()
                a @ b
                sync()
                best = min(best, time.perf_counter() - t)
                if time.perf_counter() > t_end:
                    break
            res[name] = round(flops / best / 1e9, 2)
        key = "bf16" if dtype == torch.bfloat16 else "fp32"
        out[key] = res
        out[f"{key}_peak_gflops"] = max(res.values())
    return out


# --------------------------------------------------------------------------------------------
# model and data


def build_data(work: Path, rows_per_file: int) -> tuple[Path, dict[str, Any]]:
    """A canonical JSONL of a seeded sample of T0 rows (or the skills suite without ../shared)."""
    from instillm.data.importer import import_files

    out = work / "train.jsonl"
    files = sorted(glob.glob(str(T0_DIR / "*.jsonl")))
    if files:
        rng = random.Random(f"train-throughput-{SEED}")
        lines: list[str] = []
        for f in files:
            rows = [ln for ln in Path(f).read_text(encoding="utf-8").splitlines() if ln.strip()]
            lines += rng.sample(rows, min(rows_per_file, len(rows)))
        rng.shuffle(lines)
        src = work / "t0_sample.jsonl"
        src.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
        summary = import_files([src], out)
        info = {
            "source": "t0_multitask",
            "files": len(files),
            "rows_per_file": rows_per_file,
            "rows": summary.rows_read,
            "imported": summary.rows_imported,
            "rejected": dict(summary.rejects_by_reason),
        }
    else:
        from instillm.data.skills import build_suite

        examples = build_suite()["train"][: rows_per_file * 294]
        out.write_text("".join(ex.to_json() + "\n" for ex in examples), encoding="utf-8")
        info = {"source": "instillm.data.skills.build_suite", "rows": len(examples)}
    return out, info


def instillm_config(
    model_dir: Path,
    data: Path,
    out: Path,
    precision: str,
    packing: bool,
    group: bool,
    batch_size: int,
    total_steps: int,
    **extra: Any,
):
    from instillm.train.config import TrainConfig

    return TrainConfig(
        model=str(model_dir),
        datasets=({"path": str(data)},),
        output_dir=str(out),
        max_length=MAX_LENGTH,
        truncation="drop",
        packing=packing,
        group_by_length=group,
        batch_size=batch_size,
        learning_rate=LR,
        lr_scheduler="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=total_steps,
        seed=SEED,
        precision=precision,
        logging_interval=10_000,
        **extra,
    )


# --------------------------------------------------------------------------------------------
# measuring


def fresh_accelerate() -> None:
    """Forget Accelerate's process-wide state: TRL's Trainer fixes mixed_precision there (bf16 or
    no) and instillm's setup() builds its own Accelerator, so each run starts from a clean slate."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def summarize(
    name: str,
    side: str,
    precision: str,
    step_ends: list[float],
    t_start: float,
    tokens: list[int],
    losses: list[float],
    trained: list[int],
    warmup: int,
    load: tuple[float, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Row of one run: tokens/s over the measured steps (after `warmup`), losses per step."""
    ends = [t_start] + step_ends
    measured = len(step_ends) - warmup
    seconds = ends[-1] - ends[warmup]
    n_tok = sum(tokens[warmup : warmup + measured])
    row = {
        "name": name,
        "side": side,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "warmup_steps": warmup,
        "measured_steps": measured,
        "seconds": round(seconds, 3),
        "tokens": n_tok,
        "tokens_per_s": round(n_tok / seconds, 2) if seconds > 0 else None,
        "tokens_per_step": tokens,
        "step_seconds": [round(b - a, 3) for a, b in zip(ends, ends[1:])],
        "losses": [round(x, 5) for x in losses],
        "trained_tokens_per_step": trained,
        "load_avg_1min": [round(load[0], 2), round(load[1], 2)],
    }
    row.update(extra or {})
    log(
        f"{side:8s} {precision:4s} {name:34s} {row['tokens_per_s']} tok/s "
        f"({n_tok} tokens / {seconds:.1f} s, threads {row['threads']}"
        + (f", compiling {row['compile_seconds_measured']} s of it" if row.get("compile_seconds_measured") else "")
        + ")"
    )
    return row


def run_instillm(
    name: str,
    cfg: Any,
    warmup: int,
    *,
    replay: list[list[int]] | None = None,
    optimizer: str = "fused",
    compile_decoder: bool = False,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """`cfg.max_steps` optimizer steps of instillm's engine (setup + train_step), timed per step.

    replay: the example indices of each step (another run's), trained in that order instead of
    instillm's own batches (packed into rows when cfg.packing).
    """
    from instillm.train import loop as L

    load0 = os.getloadavg()[0]
    fresh_accelerate()
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        run = L.setup(dataclasses.replace(cfg, compile=compile_decoder), DEVICE)  # TrainConfig.compile
    if optimizer != "fused":  # lever: the optimizer implementation instillm used before (per-parameter loop)
        replace_optimizer(run, cfg, foreach=optimizer == "foreach")
    tokens, losses, trained, ends, compiling = [], [], [], [], []
    prof, t_prof = None, 0.0
    c_start, t_start = compile_seconds(), time.perf_counter()
    for step, batches in enumerate(instillm_batches(run, cfg, replay)):
        if profile_to is not None and step == cfg.max_steps - 1:
            prof, t_prof = start_profile(), time.perf_counter()
        stats = L.train_step(run.loss_module, batches, run.optimizer, run.scheduler, run.accelerator, cfg)
        ends.append(time.perf_counter())
        compiling.append(compile_seconds())
        tokens.append(stats.tokens)
        trained.append(stats.trained_tokens)
        losses.append(stats.loss)
    if prof is not None and profile_to is not None:
        prof.__exit__(None, None, None)
        write_profile(profile_to, prof, name, cfg, ends[-1] - t_prof, tokens[-1])
    extra = {
        "packing": cfg.packing,
        "group_by_length": cfg.group_by_length,
        "batch_size": cfg.batch_size,
        "attn_implementation": L.unwrap(run.model).config._attn_implementation,
        "optimizer": optimizer,
        "compile": compile_decoder,
        "fp32_gemm": L.uses_fp32_gemm(cfg, torch.device(DEVICE)),
        "device": DEVICE,
        **compile_time(c_start, compiling, warmup),
    }
    load = (load0, os.getloadavg()[0])
    return summarize(name, "instillm", cfg.precision, ends, t_start, tokens, losses, trained, warmup, load, extra)


def replace_optimizer(run: Any, cfg: Any, foreach: bool) -> None:
    """torch's AdamW without `fused` (the per-parameter loop, or foreach) in place of the run's fused one."""
    from instillm.train import loop as L

    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in run.optimizer.param_groups]
    run.optimizer = torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps, foreach=foreach
    )
    run.scheduler = L.build_scheduler(run.optimizer, cfg, run.plan)


def instillm_batches(run: Any, cfg: Any, replay: list[list[int]] | None) -> Any:
    """Each optimizer step's micro-batches, made when the step starts (inside its time): the engine's own
    (`step_stream`, as `instillm train` runs them), or `replay`'s examples step by step (packed into rows
    when cfg.packing)."""
    from instillm.data.pack import pack_lengths
    from instillm.train import loop as L
    from instillm.train.batching import collate

    if replay is None:
        yield from (batches for _, batches in L.step_stream(run))
        return
    items, pad = run.data.train, run.tokenizer.pad_token_id
    for ids in replay[: cfg.max_steps]:
        packs = pack_lengths([len(items[i]) for i in ids], cfg.max_length) if cfg.packing else None
        rows = [tuple(ids[j] for j in p) for p in packs] if packs is not None else [(i,) for i in ids]
        yield [collate(items, rows, pad, cfg.packing)]


def start_profile() -> Any:
    """torch.profiler over the CPU, entered (the caller exits it)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    prof.__enter__()
    return prof


def write_profile(path: Path, prof: Any, name: str, cfg: Any, seconds: float, tokens: int) -> None:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    # bmm and softmax are attention's: the per-example kernel (packed_attention: segments) is two
    # bmm's and a softmax forward; the decoder's other bmm (rotary angles) is (B, 32, 1) @ (B, 1, L).
    groups = {
        "matmul (mm/addmm)": ("aten::mm", "aten::addmm"),
        "attention (sdpa, or bmm + softmax)": (
            "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
            "aten::bmm",
            "aten::baddbmm",
            "aten::_softmax",
            "aten::_softmax_backward_data",
        ),
        "dtype casts and copies": ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone"),
        "optimizer (fused AdamW)": ("aten::_fused_adamw_",),
        "elementwise and reductions": (
            "aten::mul",
            "aten::mul_",
            "aten::add",
            "aten::add_",
            "aten::sum",
            "aten::pow",
            "aten::silu",
            "aten::silu_backward",
            "aten::fill_",
            "aten::div",
            "aten::neg",
            "aten::rsqrt",
            "aten::mean",
            "aten::cat",
            "aten::linalg_vector_norm",
            "aten::_log_softmax",
            "aten::_log_softmax_backward_data",
            "aten::nll_loss_forward",
            "aten::masked_fill_",
            "aten::index",
            "aten::index_put_",
        ),
        "compiled (inductor) kernels": ("## Call CompiledFxGraph",),
    }
    lines = [
        f"torch.profiler, one instillm optimizer step: {name} ({cfg.precision}, packing={cfg.packing}, "
        f"group_by_length={cfg.group_by_length}, batch_size={cfg.batch_size}), {tokens} real tokens, "
        f"{seconds:.2f} s under the profiler, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}",
        "",
        "self CPU time by group:",
    ]
    for label, names in groups.items():
        t = sum(
            e.self_cpu_time_total
            for e in events
            if e.key in names or any(e.key.startswith(n) for n in names if n.startswith("## "))
        )
        lines.append(f"  {label:36s} {t / 1e6:8.3f} s  {100 * t / max(total, 1):5.1f}%")
    lines += [f"  {'all ops':36s} {total / 1e6:8.3f} s", "", events.table(sort_by="self_cpu_time_total", row_limit=30)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class _CountingCollator:
    """Wraps TRL's collator: records each batch's real tokens and which examples it holds."""

    def __init__(self, inner: Any, index: dict[tuple[int, ...], int]) -> None:
        self.inner, self.index = inner, index
        self.tokens: list[int] = []
        self.examples: list[list[int]] = []

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        ids: list[int] = []
        n = 0
        for f in features:
            seq = list(f["input_ids"])
            n += len(seq)
            bounds = list(f["seq_lengths"]) if "seq_lengths" in f else [len(seq)]
            start = 0
            for length in bounds:
                ids.append(self.index.get(tuple(seq[start : start + length]), -1))
                start += length
        self.tokens.append(n)
        self.examples.append(ids)
        return self.inner(features)


def run_trl(
    name: str,
    mode: str,
    precision: str,
    items: list,
    tokenizer: Any,
    model_dir: Path,
    work: Path,
    batch: int,
    warmup: int,
    steps: int,
    compile: bool = False,
    lora: Any = None,
) -> dict[str, Any]:
    """`warmup + steps` optimizer steps of TRL's SFTTrainer.train(), timed per step by a callback.

    compile: TrainingArguments.torch_compile (the whole model, inductor).
    lora: an instillm TrainConfig with a `lora` setting: TRL's model gets its adapters from instillm's own
    `add_lora` (same shape, same seed), so both sides start from identical adapters.
    """
    if mode not in TRL_MODES:
        raise ValueError(f"TRL mode {mode!r} is not one of {TRL_MODES}")
    from trl import SFTConfig, SFTTrainer

    from instillm.models.loading import load_model

    load0 = os.getloadavg()[0]
    fresh_accelerate()
    ds = trl_dataset(items)
    checkpointing_off = no_checkpointing(SFTConfig)
    args = SFTConfig(**sft_settings(name, mode, precision, work, batch, warmup + steps, compile, checkpointing_off))
    model = load_model(model_dir, dtype=torch.float32, attn_implementation=trl_attention(DEVICE))
    clock = step_clock()
    with contextlib.redirect_stdout(sys.stderr):
        if lora is not None:
            from instillm.train.loop import add_lora

            model = add_lora(model, lora)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, callbacks=[clock])
        counting = _CountingCollator(trainer.data_collator, {tuple(r.input_ids): i for i, r in enumerate(items)})
        trainer.data_collator = counting
        c_start, t_start = compile_seconds(), time.perf_counter()
        trainer.train()
    n = len(clock.ends)
    examples = counting.examples[:n]
    extra = {
        "mode": mode + (" + torch_compile" if compile else ""),
        "per_device_train_batch_size": batch,
        "step_examples": examples,
        "unmatched_examples": sum(i < 0 for ids in examples for i in ids),
        "optim": str(args.optim),
        "activation_checkpointing": any(getattr(args, k) for k in checkpointing_off),
        "torch_compile": bool(args.torch_compile),
        "lora": lora is not None,
        "attn_implementation": model.config._attn_implementation,
        "device": DEVICE,
        **compile_time(c_start, clock.compiling, warmup),
    }
    load = (load0, os.getloadavg()[0])
    tokens, losses, trained = counting.tokens[:n], clock.losses[:n], trl_trained(items, examples)
    return summarize(name, "trl", precision, clock.ends, t_start, tokens, losses, trained, warmup, load, extra)


def trl_dataset(items: list) -> Any:
    """instillm's rendered examples as TRL's pre-tokenized dataset: input_ids and completion_mask."""
    import datasets
    from datasets import Dataset

    from instillm.data.render import IGNORE_INDEX

    datasets.disable_progress_bars()
    return Dataset.from_dict(
        {
            "input_ids": [list(r.input_ids) for r in items],
            "completion_mask": [[int(x != IGNORE_INDEX) for x in r.labels] for r in items],
        }
    )


def sft_settings(
    name: str, mode: str, precision: str, work: Path, batch: int, total: int, compile: bool, off: dict[str, bool]
) -> dict[str, Any]:
    """SFTConfig's settings for one TRL run in `mode` (`off`: the checkpointing switches, all off)."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(work / f"trl-{name}"),
        max_steps=total,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=precision == "bf16",
        fp16=False,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
        data_seed=SEED,
        dataloader_num_workers=0,
        use_cpu=DEVICE == "cpu",
        completion_only_loss=True,
        max_length=MAX_LENGTH,
        **off,
    )
    if compile:
        kwargs["torch_compile"] = True
    if mode == "grouped":
        kwargs["train_sampling_strategy"] = "group_by_length"
    elif mode == "packed":
        kwargs.update(packing=True, packing_strategy="bfd")
    elif mode == "padding_free":  # TRL refuses max_length here; every example is already ≤ 512 tokens
        kwargs.update(padding_free=True, max_length=None)
    return kwargs


def step_clock() -> Any:
    """A TrainerCallback that records when each optimizer step ends (`ends`) and its logged `losses`."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.compiling: list[float] = []
            self.losses: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            if DEVICE == "cuda":  # the step's kernels finish before its clock stops
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            self.compiling.append(compile_seconds())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Clock()


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far (dynamo's own clock of its
    forward and backward compiles; it grows when a step recompiles for a new shape)."""
    from torch._dynamo.utils import calculate_time_spent

    return float(calculate_time_spent()["total_wall_time"])


def compile_time(start: float, after_steps: list[float], warmup: int) -> dict[str, Any]:
    """Compile seconds per optimizer step (from `compile_seconds()` at the start and after each step) and
    their sum over the measured steps, where a recompile costs the run throughput."""
    per_step = [round(b - a, 3) for a, b in zip([start] + after_steps, after_steps)]
    return {"compile_seconds_per_step": per_step, "compile_seconds_measured": round(sum(per_step[warmup:]), 3)}


def trl_trained(items: list, step_examples: list[list[int]]) -> list[int]:
    """The tokens TRL trains per step: its shifted labels drop each example's first position."""
    from instillm.data.render import IGNORE_INDEX

    return [
        sum(items[i].n_trained - (items[i].labels[0] != IGNORE_INDEX) for i in ids if i >= 0) for ids in step_examples
    ]


def no_checkpointing(config_class: Any) -> dict[str, bool]:
    """SFTConfig's settings that turn activation checkpointing off (it defaults on): `activation_checkpointing`
    in newer transformers, `gradient_checkpointing` (its older name, kept as an alias there) in both."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {k: False for k in ("activation_checkpointing", "gradient_checkpointing") if k in names}


def trl_attention(device: str) -> str:
    """TRL's attention: flash-attention 2 on CUDA where the package is installed (its fastest), else SDPA."""
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def random_weights(model_dir: Path, dest: Path, seed: int = SEED) -> Path:
    """`model_dir`'s architecture and tokenizer with freshly initialised weights, saved in `dest`.

    Only `model_dir`'s config and tokenizer files are read, so the weights need not be there: the GPU
    check's stand-in for a model whose weights cannot travel (a step's time does not depend on their values).
    """
    from transformers import AutoConfig

    from instillm.models.factory import build_model

    model = build_model(AutoConfig.from_pretrained(model_dir), seed=seed)
    model.save_pretrained(dest)
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and f.name.startswith(TOKENIZER_AND_GENERATION_FILES):
            shutil.copy2(f, dest / f.name)
    return dest


def guarded(run: Any, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`run(name, ...)`'s row, or a row with the error if it raised: one TRL configuration that fails
    (a missing kernel, say) does not cost the runs around it (a lent GPU's minutes are few)."""
    try:
        return run(name, *args, **kwargs)
    except Exception as e:  # report why, keep going
        log(f"{name} failed: {type(e).__name__}: {e}")
        return {"name": name, "mode": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}


def measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that ran (no `error`); stops with the errors when none did."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        sys.exit("train_throughput: every TRL configuration failed: " + "; ".join(r["error"] for r in rows))
    return ok


def compile_lever(make_cfg: Any, label: str, precision: str) -> list[dict[str, Any]]:
    """instillm with torch.compile(decoder), then eager, on the same steps (3 warm-up: compilation and a
    recompile for the second shape); a compiled run that raises is recorded with its error (`guarded`)."""
    name = f"{label}, {precision}, torch.compile(decoder)"
    return [
        guarded(run_instillm, name, make_cfg("c"), 3, compile_decoder=True),
        run_instillm(f"{label}, {precision}, eager (same steps as compile)", make_cfg("e"), 3),
    ]


def fp32_reference(trl_run: dict[str, Any], bf16_check: dict[str, Any], make_cfg: Any, run_trl_fp32: Any) -> dict:
    """The loss check in fp32 for a bf16 comparison: TRL's best configuration again in fp32 (eager: the
    same arithmetic as compiled) and instillm replaying its steps in fp32; and how far each side's bf16
    tail loss is from instillm's fp32 replay of TRL's bf16 steps."""
    trl32 = run_trl_fp32(len(trl_run["step_examples"]))
    rows = {"bf16": trl_run["step_examples"], "fp32": trl32["step_examples"]}
    n_ex = {name: [len(ids) for ids in replay] for name, replay in rows.items()}  # examples per step
    tails = {}
    for name, replay in rows.items():
        rep = run_instillm(
            f"fp32 replay of TRL {trl_run['mode']} ({name})", make_cfg(f"ref-{name}", len(replay)), 0, replay=replay
        )
        tails[name] = tail_loss(rep["losses"], rep["trained_tokens_per_step"], n_ex[name])
    trl32_tail = tail_loss(trl32["losses"], trl32["trained_tokens_per_step"], n_ex["fp32"])
    ref = tails["bf16"]
    return {
        "fp32_replay_tail_loss": ref,
        "trl_bf16_rel_diff_vs_fp32": round(abs(bf16_check["trl_tail_loss"] - ref) / ref, 6),
        "instillm_bf16_rel_diff_vs_fp32": round(abs(bf16_check["instillm_tail_loss"] - ref) / ref, 6),
        "trl_fp32_config": trl32["mode"] + " (eager)",
        "trl_fp32_losses": trl32["losses"],
        "trl_fp32_tail_loss": trl32_tail,
        "instillm_fp32_tail_loss": tails["fp32"],
        "rel_diff_fp32": round(abs(tails["fp32"] - trl32_tail) / trl32_tail, 6),
    }


def tail_loss(losses: list[float], trained: list[int], examples_per_step: list[int], frac: float = 0.2) -> float:
    """Token-weighted mean loss over the last steps that hold the last `frac` of the examples."""
    total, need, acc = sum(examples_per_step), 0, 0
    need = max(1, math.ceil(frac * total))
    k = len(losses)
    while k > 0 and acc < need:
        k -= 1
        acc += examples_per_step[k]
    w = trained[k:]
    return sum(loss * t for loss, t in zip(losses[k:], w)) / max(sum(w), 1)


def optimizer_step_ms(model_dir: Path, rounds: int) -> dict[str, float]:
    """Milliseconds per AdamW step over the model's parameters: fused vs foreach vs the per-parameter
    loop (torch's CPU default, which instillm used before), interleaved, median of `rounds`."""
    from instillm.models.loading import load_model

    params = list(load_model(model_dir, dtype=torch.float32).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    kinds = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
    opts = {k: torch.optim.AdamW(params, lr=1e-6, **kw) for k, kw in kinds.items()}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for rep in range(rounds + 1):
        for k, opt in opts.items():
            t = time.perf_counter()
            opt.step()
            if rep:
                times[k].append(1000 * (time.perf_counter() - t))
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def calibrate_threads(model_dir: Path, items: list, pad_id: int, rounds: int) -> dict[str, Any]:
    """fp32 forward+backward of the model on a fixed 4×~250-token batch at 1 and 2 threads (interleaved)."""
    from instillm.models.loading import load_model
    from instillm.train.batching import collate
    from instillm.train.loss import token_loss_sum

    model = load_model(model_dir, dtype=torch.float32)
    model.train()
    rows = [(i,) for i in sorted(range(len(items)), key=lambda i: abs(len(items[i]) - 250))[:4]]
    batch = collate(items, rows, pad_id, False)
    times: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(rounds + 1):
        for n in (1, 2):
            torch.set_num_threads(n)
            t = time.perf_counter()
            loss, count = token_loss_sum(model, **batch.model_inputs())
            (loss / count).backward()
            model.zero_grad(set_to_none=True)
            if rep:  # the first round warms up
                times[n].append(time.perf_counter() - t)
    tps = {n: round(batch.n_tokens / statistics.median(v), 1) for n, v in times.items()}
    return {"fp32_fwd_bwd_tokens_per_s": tps, "best": max(tps, key=tps.get)}


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (< 3 min): 2 sequences per step, fewer runs")
    ap.add_argument("--threads", default="auto", choices=("auto", "1", "2"))
    ap.add_argument("--warmup", type=int, default=None, help="warm-up optimizer steps (default 2, quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="measured optimizer steps (default 16, quick 2)")
    ap.add_argument(
        "--slow-steps",
        type=int,
        default=None,
        help="measured steps of runs with emulated (slow) bf16 matmuls, after 1 warm-up (default 2, quick 1)",
    )
    ap.add_argument("--seqs", type=int, default=None, help="sequences per optimizer step (default 8, quick 2)")
    ap.add_argument("--rows-per-file", type=int, default=None, help="T0 rows sampled per file (default 4, quick 2)")
    ap.add_argument("--no-levers", action="store_true", help="skip the instillm lever runs")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile lever")
    ap.add_argument(
        "--no-trl-compile",
        action="store_true",
        help=f"skip TRL with torch_compile=True ({', '.join(TRL_COMPILED_MODES)}; never with --quick)",
    )
    ap.add_argument(
        "--fp32",
        action="store_true",
        help="also compare in fp32 (instillm vs the four TRL modes); always on where bf16 matmuls are emulated",
    )
    ap.add_argument(
        "--model",
        default="small",
        help="small: the 28M random preset; real: SmolLM2-135M-Instruct (`make real-model`), in the precision "
        "fastest on this CPU for both sides (fp32 without bf16 matmul units), compile its only lever; or a model "
        "directory, run as `real` is",
    )
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="train --model's architecture and tokenizer from fresh random weights (its weights need not be there)",
    )
    ap.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where both sides train (auto: CUDA when available); on CUDA both sides run in bf16",
    )
    ap.add_argument("--data", type=Path, default=None, help="a canonical JSONL to train on instead of the T0 sample")
    ap.add_argument("--save-data", type=Path, default=None, help="write the T0 sample (canonical JSONL) here and exit")
    ap.add_argument(
        "--compile-lever",
        action="store_true",
        help="only instillm's torch.compile lever (compiled vs eager, same steps), to <results>_compile_lever.json",
    )
    ap.add_argument("--lora", action="store_true", help=f"LoRA {LORA} on every linear layer but the head, both sides")
    ap.add_argument(
        "--packed-attention",
        default="auto",
        choices=(*PACKED_ATTENTIONS, "best"),
        help="instillm's packed_attention for its packed rows (best: time each that can run here, in short "
        "lever runs, and compare with the fastest; varlen needs CUDA)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="default results/train_throughput.json (--quick: results/train_throughput_quick.json)",
    )
    return ap.parse_args(argv)


@dataclasses.dataclass
class Bench:
    """One benchmark's settings and shared state: what every run of either side is built from."""

    args: argparse.Namespace
    work: Path
    model_dir: Path
    data_path: Path
    warmup: int  # warm-up optimizer steps of a run
    steps: int  # measured optimizer steps of a run
    slow: int  # measured steps of a run on emulated bf16 matmuls
    seqs: int  # sequences per optimizer step (unpacked sides)
    primary: str  # the precision of record
    emulated_bf16: bool
    rows: int = 0  # packed rows per optimizer step (the same real tokens as `seqs` sequences)
    items: list[Any] = dataclasses.field(default_factory=list)  # instillm's rendered examples
    tokenizer: Any = None
    threads: int = 1
    matmul_params: dict[str, int] = dataclasses.field(default_factory=dict)  # linear_parameters()
    attention: str = "auto"  # instillm's packed_attention (chosen by attention_levers with --packed-attention best)

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def compile_precision(self) -> str:
        """Where compile_levers measures torch.compile, and so where instillm compiles if adopted: bf16 where
        it is native, fp32 where it is emulated (compile is refused there)."""
        return "fp32" if self.emulated_bf16 else "bf16"

    @property
    def real(self) -> bool:
        """A real architecture (SmolLM2 or a model directory), not the small preset."""
        return bool(self.args.model != "small")

    def cfg(self, name: str, precision: str, packing: bool, group: bool, total: int, **extra: Any) -> Any:
        """instillm's train config for one run of `total` optimizer steps."""
        from instillm.train.config import LoraSettings

        if self.args.lora:
            extra["lora"] = LoraSettings(**LORA)
        # varlen's flash kernel takes bf16; fp32 runs (the loss check's reference) get its exact equal, segments
        attention = extra.pop("packed_attention", self.attention)
        extra["packed_attention"] = "segments" if attention == "varlen" and precision == "fp32" else attention
        work = self.work / f"i-{name}-{time.perf_counter_ns()}"
        batch = self.rows if packing else self.seqs
        return instillm_config(self.model_dir, self.data_path, work, precision, packing, group, batch, total, **extra)

    def best_cfg(self, name: str, precision: str, best: dict[str, bool], total: int, **extra: Any) -> Any:
        """The config of instillm's best batching (`best`: packing, group) for one run."""
        return self.cfg(name, precision, best["packing"], best["group"], total, **extra)

    def trl_lora(self, precision: str) -> Any:
        """The LoRA config TRL's model gets its adapters from (instillm's `add_lora`), or None."""
        return self.cfg(f"trl-lora-{precision}", precision, False, False, 1) if self.args.lora else None


def main(argv: list[str] | None = None) -> int:
    from _deps import require

    args = parse_args(argv)
    real = args.model != "small"
    source = REAL_MODEL if args.model == "real" else Path(args.model)
    if args.save_data is not None:  # instillm's importer alone: no TRL needed
        return save_data(args.save_data, args.rows_per_file or 4)
    if args.data is not None and args.out is not None:  # before any work, TRL or not
        from instillm.data.importer import refuse_overwrite

        refuse_overwrite([args.data], {f"--out {args.out}": Path(args.out)})
    require("trl")
    if real and not (source / "config.json").is_file():
        hint = ": run `make real-model` first" if args.model == "real" else ""
        sys.exit(f"train_throughput: no model config at {source / 'config.json'}{hint}")
    global DEVICE
    from instillm.models.loading import resolve_device

    DEVICE = resolve_device(args.device)
    t_begin = time.perf_counter()
    torch.manual_seed(SEED)
    custom = args.model not in ("small", "real")
    out = Path(args.out or RESULTS / result_name(real, args.lora, args.quick, DEVICE, args.random_weights, custom))
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), **device_info(DEVICE)}
    result = start_result(args, source, machine)
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        b = prepare_bench(args, source, Path(tmp), result)
        set_threads(b, result)
        result["matmul_peak"] = matmul_peaks(b.quick, DEVICE)
        log(f"matmul GFLOP/s: {result['matmul_peak']}")
        if args.compile_lever:  # the real model's compile lever alone: compiled vs eager, same steps
            return write_compile_lever(b, result, out)
        result["levers"], best = run_levers(b, result)
        compare(b, best, result, out, real)
        result.update(load_avg_end=load_avg(), busy_processes_end=busy_processes())
        result["wall_seconds"] = round(time.perf_counter() - t_begin, 1)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_table(result)
    print(f"\nwrote {out}")
    return 0


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def start_result(args: argparse.Namespace, source: Path, machine: dict[str, Any]) -> dict[str, Any]:
    """The result's header: the command, the model, the mode, the precision of record and the machine."""
    return {
        "command": "python " + " ".join(["benchmarks/train_throughput.py", *sys.argv[1:]]),
        "quick": args.quick,
        "model": model_label(args.model, source, args.random_weights),
        "mode": "lora" if args.lora else "full",
        "lora": LORA if args.lora else None,
        "dtype": primary_precision(args.model != "small", machine),
        "device": DEVICE,
        "cpu": machine["cpu"],
        "machine": machine,
        "versions": versions(),
        "load_avg_start": load_avg(),
        "busy_processes_start": busy_processes(),
    }


def emulates_bf16(machine: dict[str, Any]) -> bool:
    """No AVX512-BF16/AMX: torch's bf16 GEMMs are slow loops (a CUDA card multiplies bf16 natively)."""
    return DEVICE == "cpu" and not machine["onednn_bf16"]


def primary_precision(real: bool, machine: dict[str, Any]) -> str:
    """The precision both sides are compared in: the small model's record is bf16 (as asked, --fp32 adds
    fp32); the real model's is the one fastest here for both (fp32 where bf16 matmuls are emulated)."""
    return "fp32" if real and emulates_bf16(machine) else "bf16"


def prepare_bench(args: argparse.Namespace, source: Path, work: Path, result: dict[str, Any]) -> Bench:
    """The model (built, given or freshly initialised), the data rendered once by instillm, the batch."""
    from instillm.models.factory import init_model

    q, real = args.quick, args.model != "small"
    log("building the small model and the data" if not real else f"the model: {source}; the data")
    model_dir = source if real else init_model("small", work / "model", seed=SEED)
    if args.random_weights:
        model_dir = random_weights(model_dir, work / "random-weights")
    if args.data is not None:
        data_path, data_info = args.data, {"source": str(args.data)}
    else:
        data_path, data_info = build_data(work, args.rows_per_file if args.rows_per_file is not None else 2 if q else 4)
    b = Bench(
        args,
        work,
        model_dir,
        data_path,
        warmup=args.warmup if args.warmup is not None else (1 if q or real else 2),
        steps=args.steps if args.steps is not None else (2 if q else 4 if real else 16),
        slow=args.slow_steps if args.slow_steps is not None else (1 if q else 2),
        seqs=args.seqs if args.seqs is not None else (2 if q and not real else 4 if q else 8),
        primary=result["dtype"],
        emulated_bf16=emulates_bf16(result["machine"]),
        attention=args.packed_attention if args.packed_attention != "best" else "auto",
    )
    result.update(render_data(b, data_info))
    return b


def render_data(b: Bench, data_info: dict[str, Any]) -> dict[str, Any]:
    """Render the data once (instillm's chatml, max_length 512) and size the batch: sets b.items,
    b.tokenizer and b.rows; returns the result's params, data, batch and optimizer entries."""
    from instillm.models.loading import count_parameters, load_model, load_tokenizer
    from instillm.train.loop import prepare_data

    base = load_model(b.model_dir, dtype=torch.float32)
    n_params, b.matmul_params = count_parameters(base), linear_parameters(base)
    del base
    b.tokenizer = load_tokenizer(b.model_dir)
    probe = instillm_config(b.model_dir, b.data_path, b.work / "probe", "bf16", False, False, b.seqs, 1)
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        td = prepare_data(probe, b.tokenizer)
    b.items = td.train
    lengths = [len(r) for r in b.items]
    mean_len = sum(lengths) / len(lengths)
    b.rows = max(1, round(b.seqs * mean_len / MAX_LENGTH))
    data_info.update(
        {
            "examples": len(b.items),
            "dropped_over_512": dict(td.render_stats.dropped),
            "mean_tokens": round(mean_len, 1),
            "trained_fraction": round(sum(r.n_trained for r in b.items) / sum(lengths), 4),
        }
    )
    log(f"{len(b.items)} examples, mean {mean_len:.0f} tokens; {b.seqs} sequences or {b.rows} packed rows per step")
    return {
        "params": n_params,
        "data": data_info,
        "batch": {
            "sequences_per_step": b.seqs,
            "packed_rows_per_step": b.rows,
            "approx_tokens_per_step": round(b.seqs * mean_len),
            "note": "same real tokens per optimizer step on every side",
        },
        "optimizer": {"lr": LR, "schedule": "constant", "weight_decay": 0.0, "max_grad_norm": 1.0},
    }


def set_threads(b: Bench, result: dict[str, Any]) -> None:
    """torch's thread count: calibrated on a CPU with --threads auto, else as given (or torch's own)."""
    if b.args.threads == "auto" and DEVICE == "cpu":
        cal = calibrate_threads(b.model_dir, b.items, b.tokenizer.pad_token_id, 1 if b.quick else 2)
        b.threads = cal["best"]
    else:
        cal, b.threads = None, torch.get_num_threads() if b.args.threads == "auto" else int(b.args.threads)
    torch.set_num_threads(b.threads)
    result["threads"] = {"used": b.threads, "calibration": cal}
    log(f"torch threads {b.threads} ({cal})")


def write_compile_lever(b: Bench, result: dict[str, Any], out: Path) -> int:
    """--compile-lever: instillm compiled against eager on the same steps, to <out>_compile_lever.json."""
    result["levers"] = compile_levers(b, first_best())
    out = out.with_name(out.stem + "_compile_lever.json")
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n".join(f"{r['name']}: {r.get('tokens_per_s', r.get('error'))} tokens/s" for r in result["levers"]))
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------------------------
# instillm's levers (bf16 unless named): batching, optimizer, threads, native bf16, compile


def first_best() -> dict[str, bool]:
    """instillm's setting before any lever: packed rows, eager."""
    return {"packing": True, "group": False, "compile": False}


def run_levers(b: Bench, result: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, bool]]:
    """The lever runs (none with --no-levers) and instillm's best setting: packing, group, compile. A real
    model's step takes ~10 s on a CPU, so its levers are packed_attention (--packed-attention best) and
    compile (not with --quick or --no-compile); the small model runs them all."""
    best = first_best()
    if b.args.packed_attention == "best":
        levers = attention_levers(b)
    elif b.args.no_levers or b.real:
        levers = []
    else:
        return small_model_levers(b, result, best)
    if b.real and not (b.quick or b.args.no_levers or b.args.no_compile):
        levers += compile_levers(b, best)
    return levers, best


def small_model_levers(
    b: Bench, result: dict[str, Any], best: dict[str, bool]
) -> tuple[list[dict[str, Any]], dict[str, bool]]:
    """The small model's levers: batching, the AdamW implementation, threads, bf16 kernels, compile."""
    n = b.warmup + b.steps
    levers = [
        run_instillm(label, b.cfg(label, "bf16", packing, group, n), b.warmup)
        for label, packing, group in (("packed", True, False), ("length-grouped", False, True))
    ]
    if not b.quick:
        levers.append(run_instillm("unpacked (random order)", b.cfg("u", "bf16", False, False, n), b.warmup))
    top = max(levers, key=lambda r: r["tokens_per_s"] or 0)
    best.update(packing=top["packing"], group=top["group_by_length"])
    if DEVICE == "cpu":  # the CPU implementations of AdamW, timed on the CPU
        result["optimizer_step_ms"] = optimizer_step_ms(b.model_dir, 3 if b.quick else 7)
        log(f"AdamW step, ms: {result['optimizer_step_ms']}")
    if not b.quick:
        levers += full_levers(b, best)
    return levers, best


def full_levers(b: Bench, best: dict[str, bool]) -> list[dict[str, Any]]:
    """The levers of a full (not --quick) run, around the best batching; sets best["compile"]."""
    bl, n = batching_label(best), b.warmup + b.steps
    levers = []
    if best["packing"]:  # the packed lever attends per example (packed_attention: auto)
        name = "packed, block-diagonal mask over whole rows (packed_attention: mask)"
        levers.append(run_instillm(name, b.cfg("m", "bf16", True, False, n, packed_attention="mask"), b.warmup))
    name = f"{bl}, per-parameter AdamW (old default)"
    levers.append(run_instillm(name, b.best_cfg("o", "bf16", best, n), b.warmup, optimizer="for-loop"))
    if DEVICE == "cpu":
        levers += cpu_levers(b, best)
    if not b.args.no_compile:
        levers += compile_levers(b, best)
    return levers


def compile_levers(b: Bench, best: dict[str, bool]) -> list[dict[str, Any]]:
    """instillm's torch.compile lever on its best batching, in bf16 where it is native and fp32 where it is
    emulated (compile is refused there); adopted (best["compile"]) for the runs in that precision when the
    compiled run measured faster than eager on the same steps."""
    cprec = b.compile_precision
    make_cfg = lambda tag: b.best_cfg(tag, cprec, best, 3 + b.steps)  # noqa: E731
    comp, eager = compile_lever(make_cfg, batching_label(best), cprec)
    best["compile"] = "error" not in comp and comp["tokens_per_s"] > eager["tokens_per_s"]
    log(f"torch.compile {'adopted' if best['compile'] else 'not adopted'} for {cprec}")
    return [comp, eager]


def cpu_levers(b: Bench, best: dict[str, bool]) -> list[dict[str, Any]]:
    """The CPU's levers: the other thread count, and the other choice of bf16 matmul kernels."""
    bl, other = batching_label(best), 2 if b.threads == 1 else 1
    torch.set_num_threads(other)
    levers = [run_instillm(f"{bl}, {other} thread(s) (4 measured steps)", b.best_cfg("t", "bf16", best, 1 + 4), 1)]
    torch.set_num_threads(b.threads)
    if b.emulated_bf16:  # auto = fp32 GEMMs here; the lever is torch's own bf16 kernels
        cfg = b.best_cfg("n", "bf16", best, 1 + b.slow, cpu_bf16_matmul="native")
        levers.append(run_instillm(f"{bl}, native bf16 kernels", cfg, 1))
    else:  # auto = native (oneDNN/AMX) bf16 here; the lever is fp32 kernels on bf16 values
        cfg = b.best_cfg("f", "bf16", best, b.warmup + b.steps, cpu_bf16_matmul="fp32")
        levers.append(run_instillm(f"{bl}, bf16 values on fp32 GEMMs (cpu_bf16_matmul=fp32)", cfg, b.warmup))
    return levers


def attention_levers(b: Bench) -> list[dict[str, Any]]:
    """--packed-attention best: instillm's packed rows with each packed_attention that can run here (varlen:
    CUDA), in the compared precision; the fastest becomes b.attention. A setting that fails is recorded."""
    names = ["segments", "mask"] + (["varlen"] if DEVICE == "cuda" and b.primary == "bf16" else [])
    n = b.warmup + b.steps
    levers = [
        guarded(run_instillm, f"packed, packed_attention: {name}", b.cfg(name, b.primary, True, False, n,
                packed_attention=name), b.warmup)
        for name in names
    ]  # fmt: skip
    ok = [(name, r) for name, r in zip(names, levers) if "error" not in r]
    if ok:
        b.attention = max(ok, key=lambda nr: nr[1]["tokens_per_s"] or 0)[0]
    log(f"packed_attention: {b.attention}")
    return levers


def batching_label(best: dict[str, bool]) -> str:
    return "packed" if best["packing"] else "length-grouped"


def best_setting(b: Bench, best: dict[str, bool]) -> dict[str, Any]:
    """instillm's best setting as recorded in the result."""
    return {
        "batching": batching_label(best),
        "optimizer": "fused AdamW",
        "packed_attention": (b.attention if b.attention != "auto" else "segments (auto)") if best["packing"] else None,
        "cpu_bf16_matmul": "n/a (CUDA)"
        if DEVICE == "cuda"
        else "auto (" + ("fp32 GEMMs" if b.emulated_bf16 else "native oneDNN bf16") + ")",
        "threads": b.threads,
        "torch_compile": best["compile"],
        "torch_compile_precision": b.compile_precision if best["compile"] else None,
    }


# --------------------------------------------------------------------------------------------
# the comparison, the loss check, the profile and the headline


def compare(b: Bench, best: dict[str, bool], result: dict[str, Any], out: Path, real: bool) -> None:
    """instillm's best setting against each TRL configuration, then the loss check, one profiled step
    and the headline keys, all into `result`."""
    result["instillm_best_setting"] = best_setting(b, best)
    precisions = compared_precisions(b.primary, b.args.fp32, b.emulated_bf16)
    comparison = {prec: interleaved(b, best, prec) for prec in precisions}
    result["comparison"] = comparison
    trl_ok = {prec: measured(comparison[prec]["trl"]) for prec in precisions}
    summary = {prec: summary_of(comparison[prec]) for prec in precisions}
    checks = {prec: loss_check(b, best, prec, max(trl_ok[prec], key=tokens_per_s)) for prec in precisions}
    if b.primary == "bf16" and "fp32" not in precisions:
        checks["fp32_reference"] = bf16_reference(b, best, max(trl_ok["bf16"], key=tokens_per_s), checks["bf16"])
    result["loss_check"] = checks
    if not b.quick and DEVICE == "cpu":  # the profile's table sorts CPU time
        profile_best(b, best, out.parent / ("train_profile.txt" if not real else profile_name(out)))
    result.update(headline(b, result, summary))


def profile_name(out: Path) -> str:
    return out.stem.replace("throughput", "profile") + ".txt"


def tokens_per_s(row: dict[str, Any]) -> float:
    return float(row["tokens_per_s"])


def compiles(b: Bench, best: dict[str, bool], prec: str) -> bool:
    """Whether instillm's runs in `prec` compile the decoder: compile was adopted from a lever in `prec`."""
    return best["compile"] and prec == b.compile_precision


def compiled_label(b: Bench, best: dict[str, bool], prec: str) -> str:
    return batching_label(best) + (" + torch.compile" if compiles(b, best, prec) else "")


def warmup_of(b: Bench, best: dict[str, bool], prec: str) -> int:
    """instillm's warm-up steps in `prec`: compiled, the first steps compile (and recompile once)."""
    return 3 if compiles(b, best, prec) else b.warmup


def trl_configurations(b: Bench, prec: str) -> list[tuple[str, bool]]:
    """(mode, torch_compile) of the TRL runs in `prec`: TRL's bf16 on emulated GEMMs is slow, so a quick
    run tries it unpacked alone, and never compiled."""
    slow_bf16 = prec == "bf16" and b.emulated_bf16
    modes = [(m, False) for m in (TRL_MODES if not (b.quick and slow_bf16) else ("unpacked",))]
    if not (b.quick or b.args.no_trl_compile or slow_bf16):
        modes += [(m, True) for m in TRL_COMPILED_MODES]
    return modes


def interleaved(b: Bench, best: dict[str, bool], prec: str) -> dict[str, list[dict[str, Any]]]:
    """instillm, TRL mode 1, instillm, TRL mode 2, ..., instillm: the machine's other load hits both sides
    alike, and every TRL run has an instillm run on either side of it (`paired_ratios`)."""
    runs: dict[str, list[dict[str, Any]]] = {"instillm": [], "trl": []}
    iw, label = warmup_of(b, best, prec), compiled_label(b, best, prec)

    def instillm_run() -> None:
        cfg = b.best_cfg(f"cmp-{prec}", prec, best, iw + b.steps)
        runs["instillm"].append(run_instillm(label, cfg, iw, compile_decoder=compiles(b, best, prec)))

    for mode, trl_compile in trl_configurations(b, prec):
        instillm_run()
        slow_bf16 = prec == "bf16" and b.emulated_bf16  # TRL's bf16 autocast hits the emulated GEMMs
        w, m = (1, b.slow) if slow_bf16 else (3 if trl_compile else b.warmup, b.steps)
        batch = b.rows if mode == "packed" else b.seqs
        name = mode + ("-compiled" if trl_compile else "")
        runs["trl"].append(
            guarded(
                run_trl,
                name,
                mode,
                prec,
                b.items,
                b.tokenizer,
                b.model_dir,
                b.work,
                batch,
                w,
                m,
                compile=trl_compile,
                lora=b.trl_lora(prec),
            )
        )
    instillm_run()
    return runs


def summary_of(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One precision's numbers (`interleaved`'s runs): instillm's median, TRL's best and each TRL
    configuration, the ratio, and each configuration's ratio to the instillm runs beside it."""
    trl_runs = measured(runs["trl"])
    trl_best = max(trl_runs, key=tokens_per_s)
    ins = statistics.median(r["tokens_per_s"] for r in runs["instillm"])
    paired = paired_ratios(runs["instillm"], runs["trl"])
    return {
        "instillm": ins,
        "trl_best": trl_best["tokens_per_s"],
        "trl_best_config": trl_best["mode"],
        "trl": {r["mode"]: r["tokens_per_s"] for r in trl_runs},
        "ratio": round(ins / trl_best["tokens_per_s"], 3),
        "ratio_paired": paired,
        "ratio_paired_min": min(paired.values()),
    }


def paired_ratios(instillm_runs: list[dict[str, Any]], trl_runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each TRL run's ratio to the mean of the instillm runs just before and just after it (run i sits
    between instillm runs i and i+1): a machine that slows for a while slows both sides of a pair, where
    the median of all instillm runs against one TRL run would not see it."""
    out = {}
    for i, trl in enumerate(trl_runs):
        if "error" in trl:
            continue
        beside = [r["tokens_per_s"] for r in instillm_runs[i : i + 2]]
        out[trl["mode"]] = round(statistics.mean(beside) / trl["tokens_per_s"], 3)
    return out


def loss_check(b: Bench, best: dict[str, bool], prec: str, trl_run: dict[str, Any]) -> dict[str, Any]:
    """instillm replays TRL's best run example for example; the tail losses compared."""
    replay = trl_run["step_examples"]
    rep = run_instillm(
        f"replay of TRL {trl_run['mode']}",
        b.best_cfg(f"replay-{prec}", prec, best, len(replay)),
        0,
        replay=replay,
        compile_decoder=compiles(b, best, prec),
    )
    n_ex = [len(ids) for ids in replay]
    trl_tail = tail_loss(trl_run["losses"], trl_run["trained_tokens_per_step"], n_ex)
    ins_tail = tail_loss(rep["losses"], rep["trained_tokens_per_step"], n_ex)
    return {
        "trl_config": trl_run["mode"],
        "steps": len(replay),
        "examples": sum(n_ex),
        "trl_losses": trl_run["losses"],
        "instillm_losses": rep["losses"],
        "trl_trained_tokens": trl_run["trained_tokens_per_step"],
        "instillm_trained_tokens": rep["trained_tokens_per_step"],
        "trl_tail_loss": trl_tail,
        "instillm_tail_loss": ins_tail,
        "rel_diff": round(abs(ins_tail - trl_tail) / trl_tail, 6),
    }


def bf16_reference(b: Bench, best: dict[str, bool], trl_run: dict[str, Any], bf16_check: dict[str, Any]) -> dict:
    """bf16 trajectories drift apart over steps (rounding, amplified by the updates): how far each bf16 run
    is from fp32 arithmetic, and the fp32 equivalence itself against TRL in fp32 (`fp32_reference`)."""

    def trl_fp32(n: int) -> dict[str, Any]:
        mode = trl_run["mode"].removesuffix(" + torch_compile")
        batch = trl_run["per_device_train_batch_size"]
        return run_trl(
            "fp32-check", mode, "fp32", b.items, b.tokenizer, b.model_dir, b.work, batch, 0, n, lora=b.trl_lora("fp32")
        )

    return fp32_reference(trl_run, bf16_check, lambda name, steps: b.best_cfg(name, "fp32", best, steps), trl_fp32)


def profile_best(b: Bench, best: dict[str, bool], path: Path) -> None:
    """One profiled instillm step in the precision of record (and eager too, when that step is compiled:
    <path>_eager.txt)."""
    prec = b.primary
    iw, label, compiled = warmup_of(b, best, prec), compiled_label(b, best, prec), compiles(b, best, prec)
    cfg = b.best_cfg("prof", prec, best, iw + 1)
    run_instillm(f"{label} (profiled)", cfg, iw, profile_to=path, compile_decoder=compiled)
    if compiled:  # and the eager step, to show what compilation changed
        cfg = b.best_cfg("prof-e", prec, best, 2)
        eager = path.with_name(path.stem + "_eager.txt")
        run_instillm(f"{batching_label(best)} eager (profiled)", cfg, 1, profile_to=eager)


def headline(b: Bench, result: dict[str, Any], summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline keys: the ratio (each side in its fastest precision), the loss check, MFU."""
    primary, checks, n_params = b.primary, result["loss_check"], result["params"]
    peak = result["matmul_peak"][f"{primary}_peak_gflops"] * 1e9
    peak_fp32 = result["matmul_peak"]["fp32_peak_gflops"] * 1e9
    # matmul FLOPs per token: forward 2N, backward 4N (input and weight gradients); LoRA's frozen base
    # skips the weight gradients, 4N (the adapters' own FLOPs are <1% at r=16)
    flops_per_token = (4 if b.args.lora else 6) * n_params
    ins, trl = summary[primary]["instillm"], summary[primary]["trl_best"]
    trl_prec = max(summary, key=lambda p: summary[p]["trl_best"])
    ins_prec = max(summary, key=lambda p: summary[p]["instillm"])
    ratio_any = round(summary[ins_prec]["instillm"] / summary[trl_prec]["trl_best"], 3)
    head: dict[str, Any] = {
        "instillm_tokens_per_s": ins,
        "trl_best_tokens_per_s": trl,
        "trl_best_config": summary[primary]["trl_best_config"],
        "ratio": ratio_any,  # the headline: each side in its fastest precision on this machine
        "ratio_precisions": {"instillm": ins_prec, "trl": trl_prec},
        "ratio_bf16": summary["bf16"]["ratio"] if "bf16" in summary else None,
        "loss_rel_diff": round(checks[primary]["rel_diff"], 6),
        "mfu": round(flops_per_token * ins / peak, 4),
        "mfu_peak_dtype": primary,
        "flops_per_token": flops_per_token,
        "mfu_vs_fp32_peak": round(flops_per_token * ins / peak_fp32, 4),
        "trl_mfu": round(flops_per_token * trl / peak, 4),
        **executed_utilisation(b.matmul_params, b.args.lora, result["data"]["trained_fraction"], ins, trl, peak),
        "mfu_note": mfu_note(flops_per_token // n_params, primary, b.emulated_bf16, result["machine"]),
        "ratio_vs_each_trl_config": {m: round(ins / v, 3) for m, v in summary[primary]["trl"].items()},
        "ratio_paired_vs_each_trl_config": summary[primary]["ratio_paired"],
        "ratio_paired_min": summary[primary]["ratio_paired_min"],
        "ratio_best_any_precision": ratio_any,
        "summary": summary,
        "emulated_bf16": b.emulated_bf16,
    }
    head.update(fp32_keys(checks, summary, flops_per_token, peak_fp32))
    return head


def fp32_keys(
    checks: dict[str, Any], summary: dict[str, Any], flops_per_token: int, peak_fp32: float
) -> dict[str, Any]:
    """The fp32 loss check's keys, and the fp32 comparison's numbers when one ran."""
    keys: dict[str, Any] = {}
    if "fp32_reference" in checks:
        ref = checks["fp32_reference"]
        keys["loss_rel_diff_fp32"] = ref["rel_diff_fp32"]
        keys["loss_rel_diff_vs_fp32"] = {
            "trl_bf16": ref["trl_bf16_rel_diff_vs_fp32"],
            "instillm_bf16": ref["instillm_bf16_rel_diff_vs_fp32"],
        }
    if "fp32" in summary:
        s = summary["fp32"]
        keys["loss_rel_diff_fp32"] = checks["fp32"]["rel_diff"]
        keys["fp32"] = {
            "instillm_tokens_per_s": s["instillm"],
            "trl_best_tokens_per_s": s["trl_best"],
            "trl_best_config": s["trl_best_config"],
            "ratio": s["ratio"],
            "mfu_vs_fp32_peak": round(flops_per_token * s["instillm"] / peak_fp32, 4),
        }
    return keys


def mfu_note(mult: int, primary: str, emulated_bf16: bool, machine: dict[str, Any]) -> str:
    """What `mfu` counts, and which peak is the meaningful one on this machine."""
    base = (
        f"{mult}·params·tokens/s over the measured {primary} matmul peak (one large torch.matmul, best operand "
        "layout, same threads). It counts the LM head at every token, while instillm projects only trained "
        "positions, so it overstates the matmul FLOPs instillm executes; attention FLOPs are not counted. "
    )
    if emulated_bf16 and primary == "bf16":
        return base + (
            "This CPU has no bf16 matmul units: instillm's bf16 runs its matmuls with fp32 kernels "
            "(cpu_bf16_matmul=auto), so `mfu_vs_fp32_peak` is the meaningful utilisation."
        )
    if emulated_bf16:
        return base + "Both sides ran in fp32, the fastest precision on this CPU (no bf16 matmul units)."
    if DEVICE == "cuda":
        return base + f"Both sides ran in bf16 on {machine.get('gpu')}: `mfu` uses its bf16 peak."
    return base + (
        "This CPU multiplies bf16 natively (oneDNN, AVX512-BF16/AMX), so `mfu` (bf16 peak) is the meaningful "
        "utilisation."
    )


def linear_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Weights that are matmuls: the decoder's linear layers ("body") and the LM head ("head")."""
    head = model.get_output_embeddings().weight.numel()
    body = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    )
    return {"body": body, "head": head}


def executed_utilisation(
    params: dict[str, int], lora: bool, trained_fraction: float, ins: float, trl: float, peak: float
) -> dict[str, Any]:
    """Utilisation by the matmul FLOPs each side executes per real token (attention not counted).

    Both run the decoder's linear layers at every token (forward 2, backward 4 per weight; 2 with LoRA's
    frozen base, whose weight gradients are skipped); TRL projects every position onto the vocabulary,
    instillm only the trained ones (`trained_fraction` of the tokens).
    """
    mult = 4 if lora else 6
    ins_flops = mult * params["body"] + mult * params["head"] * trained_fraction
    trl_flops = mult * (params["body"] + params["head"])
    return {
        "executed_flops_per_token": {"instillm": round(ins_flops), "trl": trl_flops},
        "mfu_executed": round(ins_flops * ins / peak, 4),
        "trl_mfu_executed": round(trl_flops * trl / peak, 4),
    }


def compared_precisions(primary: str, fp32: bool, emulated_bf16: bool) -> tuple[str, ...]:
    """The precisions both sides run in: `primary`, and fp32 with --fp32 or where bf16 matmuls are
    emulated (there TRL's fastest is in fp32, and the headline `ratio` is against the fastest in any)."""
    return (primary, "fp32") if (fp32 or emulated_bf16) and primary != "fp32" else (primary,)


def result_name(
    real: bool, lora: bool, quick: bool, device: str = "cpu", random_weights: bool = False, custom: bool = False
) -> str:
    """train_throughput[_lora][_quick].json for the small model; train_throughput_real_{full,lora}[_quick].json.

    A model directory of the user's is `model` in place of `real`; `_random` marks fresh weights and
    `_cuda` a run on a CUDA card, so that neither replaces the CPU's files of record.
    """
    tag = "model" if custom else "real"
    stem = "train_throughput" + (f"_{tag}_{'lora' if lora else 'full'}" if real else "_lora" if lora else "")
    stem += "_random" if random_weights else ""
    stem += "_cuda" if device == "cuda" else ""
    return stem + ("_quick" if quick else "") + ".json"


def model_label(model: str, source: Path, random: bool) -> str:
    """The `model` of the results: the small preset, SmolLM2-135M-Instruct or the directory given."""
    if model == "small":
        return "small preset (random weights)"
    name = "SmolLM2-135M-Instruct" if model == "real" else str(source)
    return name + (" architecture, fresh random weights" if random else "")


def save_data(path: Path, rows_per_file: int) -> int:
    """--save-data: the T0 sample the benchmark trains on, as a canonical JSONL at `path` (for a machine
    without ../shared: `--data path` there)."""
    if not T0_DIR.is_dir():
        sys.exit(f"train_throughput: --save-data needs the T0 files at {T0_DIR}")
    if path.resolve().is_relative_to(T0_DIR.resolve()):
        sys.exit(
            f"train_throughput: --save-data {path} is inside the T0 files it reads ({T0_DIR}): choose another path"
        )
    with tempfile.TemporaryDirectory(prefix="train-throughput-data-") as tmp:
        made, info = build_data(Path(tmp), rows_per_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made, path)
    print(f"wrote {path}: {info['imported']} examples from {info['rows']} T0 rows ({rows_per_file} per file)")
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(
        f"\nmachine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch threads {r['threads']['used']}, "
        + (f"GPU {r['machine']['gpu']}, " if r["machine"].get("gpu") else "")
        + f"load avg {r['load_avg_start'][0]} → {r['load_avg_end'][0]}"
    )
    print(f"{r.get('model', 'small preset')}, {r.get('mode', 'full')} fine-tuning")
    print(f"matmul peak GFLOP/s: bf16 {r['matmul_peak']['bf16']}, fp32 {r['matmul_peak']['fp32']}")
    print(
        f"batch: {r['batch']['sequences_per_step']} sequences or {r['batch']['packed_rows_per_step']} packed rows "
        f"(≈{r['batch']['approx_tokens_per_step']} real tokens) per optimizer step\n"
    )
    print("| side | precision | configuration | real tokens/s | runs |")
    print("|---|---|---|---|---|")
    for prec, s in r["summary"].items():
        runs = r["comparison"][prec]["instillm"]
        print(
            f"| instillm | {prec} | {runs[0]['name']} (median) | {s['instillm']:.1f} | "
            f"{', '.join(str(x['tokens_per_s']) for x in runs)} |"
        )
        for mode, v in s["trl"].items():
            print(f"| TRL | {prec} | {mode} | {v:.1f} | 1 |")
        for failed in (x for x in r["comparison"][prec]["trl"] if "error" in x):
            print(f"| TRL | {prec} | {failed['mode']} | failed: {failed['error'][:100]} | 1 |")
    for lv in r["levers"]:
        print(
            f"| instillm lever | {lv.get('precision', '')} | {lv['name']} | {lv.get('tokens_per_s', lv.get('error'))}"
            f" | 1 |"
        )
    if r.get("optimizer_step_ms"):
        print(f"\nAdamW step over the model's parameters, ms: {r['optimizer_step_ms']}")
    fp32, dtype = r.get("fp32"), r.get("dtype", "bf16")
    print(
        f"\nratio (each side in its fastest precision: {r['ratio_precisions']}) {r['ratio']}"
        f"\nratio ({dtype}, vs TRL's best: {r['trl_best_config']}) {r['summary'][dtype]['ratio']}  vs each TRL config "
        f"{r['ratio_vs_each_trl_config']}"
        + f"\nratio ({dtype}) of each TRL run to the instillm runs beside it {r['ratio_paired_vs_each_trl_config']}"
        + (f"  ratio (fp32) {fp32['ratio']}" if fp32 else "")
        + f"\nloss_rel_diff ({dtype}) {r['loss_rel_diff']}"
        + (f"  (fp32) {r['loss_rel_diff_fp32']}" if "loss_rel_diff_fp32" in r else "")
        + (f"  each bf16 run vs fp32 arithmetic {r['loss_rel_diff_vs_fp32']}" if "loss_rel_diff_vs_fp32" in r else "")
        + f"\nmfu ({dtype} peak) {r['mfu']}  mfu (fp32 peak) {r['mfu_vs_fp32_peak']}  TRL mfu ({dtype} peak) "
        f"{r['trl_mfu']}"
        + (
            f"\nutilisation by executed matmul FLOPs ({dtype} peak): instillm {r['mfu_executed']}  "
            f"TRL {r['trl_mfu_executed']}"
            if "mfu_executed" in r
            else ""
        )
    )


if __name__ == "__main__":
    from instillm.errors import InstillmError

    try:
        sys.exit(main())
    except InstillmError as e:  # a bad --data or --model: one line naming it, no traceback
        sys.exit(f"train_throughput: {e}")
