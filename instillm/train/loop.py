"""The training loop: `train(config)` fine-tunes a causal LM on canonical JSONL data.

Pipeline: read datasets → (chain-of-thought ratio) → render with the chat template (response-only
labels) → seeded eval split → multi-task mixing of the training part → micro-batches (padded or
packed) → AdamW on Accelerate (DDP when launched with torchrun) → checkpoints, metrics, final model.

Everything is checked before any compute: the config on construction, then the dataset paths,
the model path, the rendered data (not empty) and the plan (enough data for one step).

Output layout (`output_dir/`):

- `run.json` — config, resolved plan, data files with sha256, per-task counts, versions, git SHA
- `metrics.jsonl` — one line for the first step and per logging interval (step, loss, lr, grad_norm,
  trained_tokens, tokens_per_s, epoch), and per evaluation (step, eval_loss)
- `tb/` — the same scalars for TensorBoard
- `checkpoints/step-N/` — see `instillm.train.checkpoint`; `resume: auto` continues from the newest
  complete one (verified against its manifest; newer incomplete ones are moved aside, logged), and
  only with the settings it was written with (all but `RESUMABLE`: logging, eval, save, speed options)
- `final/` — the model (full fine-tuning) or the LoRA adapter, with the tokenizer whose chat
  template is the one used in training; `export()` merges an adapter into a full model.
- `.instillm.lock` — held (flock, with the pid) by the run writing the dir: a second run on the
  same dir fails at once naming that pid; only the main process of a DDP run takes it.

An output_dir that holds files but no checkpoints and no `run.json` of this run (same config but
`output_dir`/`resume`) is someone else's: training refuses it unless `train(..., overwrite=True)`
(`--overwrite`), which writes into it, replacing instillm's own files and leaving others alone.
A torn last line of `metrics.jsonl` (a crash mid-write) is dropped, with a warning, on resume.

Test hook: when the environment variable `INSTILLM_TEST_KILL_AFTER_STEP=N` is set, the process
kills itself with SIGKILL right after the checkpoint of step N is written (used by the resume
test to simulate a crash; never set it otherwise).

Run as a module for scripts and multi-process CPU/GPU runs:
`torchrun --nproc_per_node 2 -m instillm.train.loop CONFIG.yaml [KEY=VALUE ...]`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from instillm.data.importer import read_examples
from instillm.data.mix import MixResult, mix_cot, mix_tasks
from instillm.data.render import RenderConfig, Rendered, Renderer, RenderStats, save_template
from instillm.data.schema import Example
from instillm.errors import ConfigError, DataError, InstillmError, ModelError
from instillm.train import attention
from instillm.train import checkpoint as ckpt
from instillm.train.batching import (
    MicroBatch,
    collate,
    count_rows,
    epoch_micro_batches,
    eval_micro_batches,
    step_shard,
)
from instillm.train.config import Plan, TrainConfig, load_config, resolve
from instillm.train.lora import fuse_lora_forward
from instillm.train.loss import TokenLoss, split_causal_lm, step_scale, token_loss_sum, unwrap

KILL_HOOK = "INSTILLM_TEST_KILL_AFTER_STEP"
FINAL = "final"
RUN_FILE = "run.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainData:
    """Rendered training and eval examples, and how they were obtained."""

    train: list[Rendered]
    eval: list[Rendered]
    mix: MixResult
    render_stats: RenderStats
    files: list[dict[str, Any]]  # {path, sha256, examples}
    renderer: Renderer


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced and its last numbers."""

    output_dir: Path
    final_dir: Path
    plan: Plan
    steps: int
    final_loss: float | None  # mean loss of the last optimizer step
    eval_loss: float | None
    trained_tokens: int  # response tokens that received loss, all steps and processes
    tokens_per_s: float  # real (non-pad) tokens per second over this process's run time
    task_counts: dict[str, int] = field(default_factory=dict)
    resumed_from: int | None = None


# --------------------------------------------------------------------------------------------
# data


sha256_file = ckpt.sha256_file  # hex SHA-256 of a file's bytes


def load_examples(config: TrainConfig) -> tuple[list[Example], list[dict[str, Any]], dict[str, float]]:
    """All examples, the files' hashes, and each task's mixing weight (that of its dataset).

    An example's task is its dataset's `task`, else its own `task`, else the file name stem.
    """
    missing = [
        f"datasets[{i}].path: {s.path} does not exist"
        for i, s in enumerate(config.datasets)
        if not Path(s.path).is_file()
    ]
    if missing:
        raise DataError("; ".join(missing))
    examples: list[Example] = []
    files: list[dict[str, Any]] = []
    weights: dict[str, float] = {}
    for i, spec in enumerate(config.datasets):
        rows = list(read_examples(spec.path))  # DataError names file:line of a bad row
        if not rows:
            raise DataError(f"datasets[{i}].path: {spec.path} holds no examples")
        for ex in rows:
            task = spec.task or ex.task or Path(spec.path).name.split(".")[0]
            if weights.setdefault(task, spec.weight) != spec.weight:
                raise ConfigError(
                    f"datasets[{i}].weight: task {task!r} also comes from a dataset with weight "
                    f"{weights[task]}; give each dataset its own `task` name"
                )
            examples.append(ex if ex.task == task else dataclasses.replace(ex, task=task))
        files.append({"path": str(spec.path), "sha256": sha256_file(spec.path), "examples": len(rows)})
    return examples, files, weights


def prepare_data(config: TrainConfig, tokenizer: Any) -> TrainData:
    """Read, render, split and mix; DataError when nothing is left to train on."""
    examples, files, weights = load_examples(config)
    if config.mixing.cot_ratio is not None:
        examples = mix_cot(examples, config.mixing.cot_ratio, seed=config.seed)
    renderer = Renderer(tokenizer, RenderConfig(config.template, config.max_length, config.truncation))
    rendered, stats = renderer.render_many(examples)
    if not rendered:
        raise DataError(
            f"datasets: no example is left after rendering ({stats.n_examples} read, dropped: "
            f"{dict(stats.dropped)}); raise max_length (now {config.max_length}) or use "
            "truncation: truncate-prompt"
        )
    train_items, eval_items = split_eval(rendered, config.eval_split, config.seed)
    groups: dict[str, list[Rendered]] = {}
    for r in train_items:  # Rendered.task is the example's task
        groups.setdefault(r.task, []).append(r)
    mixed = mix_tasks(
        groups,
        total=config.mixing.total,
        cap=config.mixing.cap,
        temperature=config.mixing.temperature,
        weights=weights,
        seed=config.seed,
    )
    return TrainData(list(mixed.examples), eval_items, mixed, stats, files, renderer)


def split_eval(items: Sequence[Rendered], fraction: float, seed: int) -> tuple[list[Rendered], list[Rendered]]:
    """Seeded random split: (train, eval) with max(1, round(fraction·n)) eval items when fraction > 0."""
    if fraction <= 0:
        return list(items), []
    n_eval = max(1, round(fraction * len(items)))
    if n_eval >= len(items):
        raise ConfigError(f"eval_split: {fraction} of {len(items)} examples leaves nothing to train on")
    order = list(range(len(items)))
    random.Random(f"instillm-eval-{seed}").shuffle(order)
    held = set(order[:n_eval])
    return ([r for i, r in enumerate(items) if i not in held], [items[i] for i in sorted(held)])


# --------------------------------------------------------------------------------------------
# model and optimisation


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The model to train (fp32 master weights), LoRA-wrapped when configured, in train mode."""
    from instillm.models.loading import load_model

    model = load_model(config.model, dtype=torch.float32, attn_implementation=config.attn_implementation)
    model.config.use_cache = False  # no KV cache in training
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input grads, so it also works with frozen LoRA bases.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    mode = packed_attention(config, model.config._attn_implementation) if config.packing else None
    if mode in ("segments", "varlen") and model.config._attn_implementation != "flash_attention_2":
        attention.register()
        model.set_attn_implementation(attention.SEGMENTS if mode == "segments" else attention.VARLEN)
    if config.lora is not None:
        model = add_lora(model, config)
        fuse_lora_forward(model)
    model.train()
    return model


def packed_attention(config: TrainConfig, backend: str | None) -> str:
    """How packed rows keep examples apart with attention `backend`: segments, mask or varlen (flash)."""
    if backend == "flash_attention_2":
        return "varlen"
    if config.packed_attention == "auto":
        return "mask" if backend == "eager" else "segments"
    return config.packed_attention


def add_lora(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """peft LoRA adapters on `lora.target_modules`; only adapter weights stay trainable.

    The adapters' random init (peft's Kaiming-uniform A; B is zero) draws from a generator seeded with
    `seed` alone, whatever loading the model drew before: the same seed gives the same adapters.
    """
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    assert lora is not None
    targets: Any = "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
    alpha: Any = lora.alpha  # peft annotates an int; it scales by alpha / r, a float works (and is what we ask)
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    try:
        with torch.random.fork_rng():  # the adapters' init is a function of the seed alone
            torch.manual_seed(config.seed)
            return get_peft_model(model, peft_config)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules: {list(lora.target_modules)} do not fit this model: {e}") from e


def compile_decoder(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """`torch.compile` the decoder's forward in place (the LM head and loss stay eager); returns `model`.

    Inductor fuses the decoder's elementwise work (RMSNorm, rotary, SiLU·mul, autocast casts), which
    on a CPU is about a third of a step: the `small` preset trains ~1.3x faster in bf16 (measured in
    benchmarks/train_throughput.py). The first step compiles (tens of seconds on one core with a cold
    cache) and new input shapes recompile, so it pays off on long runs with steady shapes (packed rows).
    Not with the fp32-GEMM emulation of bf16 (`Fp32Gemm` intercepts dispatch).
    """
    if uses_fp32_gemm(config, next(model.parameters()).device):
        raise ConfigError(
            "compile: not supported while bf16 matmuls run as fp32 GEMMs (cpu_bf16_matmul: fp32, "
            "or auto on a CPU without bf16 matmul units); use precision fp32 or "
            "cpu_bf16_matmul: native"
        )
    decoder, _ = split_causal_lm(model)
    decoder.forward = torch.compile(decoder.forward)
    return model


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases); fused on CUDA and CPU.

    On a CPU the fused kernel takes ~60 ms per step for 28M parameters, against ~270 ms for
    torch's default there (the per-parameter loop) and ~440 ms for foreach (measured, 1 thread).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = bool(params) and params[0].device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=config.adam_betas, eps=config.adam_eps, fused=fused or None
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, plan: Plan) -> Any:
    """transformers' LR schedule with `plan.warmup_steps` linear warmup over `plan.total_steps`."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps)


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast (matmuls in bf16, weights and loss in fp32) or nothing for fp32."""
    if config.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_bf16_matmul() -> bool:
    """Whether torch multiplies bf16 matrices with oneDNN on this CPU (AVX-512 / AVX512-BF16 / AMX).

    Without it (e.g. AVX2-only CPUs) torch falls back to generic bf16 loops that run 7-50x slower
    than fp32 MKL GEMMs, slowest (~1 GFLOP/s) for the untransposed operands of the backward pass.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch built without oneDNN
        return False


def uses_fp32_gemm(config: TrainConfig, device: torch.device) -> bool:
    """Whether bf16 training on `device` runs its matmuls as fp32 GEMMs (`cpu_bf16_matmul`)."""
    if config.precision != "bf16" or device.type != "cpu" or config.cpu_bf16_matmul == "native":
        return False
    return config.cpu_bf16_matmul == "fp32" or not cpu_has_bf16_matmul()


class Fp32Gemm(TorchDispatchMode):
    """bf16 matmuls and CPU attention computed by fp32 kernels on the same bf16 values.

    Products of bf16 numbers are exact in fp32 and bf16 kernels accumulate in fp32 too, so
    upcasting the bf16 operands, running the fp32 kernel and rounding the result back to bf16
    is the arithmetic of a bf16 matmul (up to summation order); on a CPU without bf16 matmul
    units it is several times faster. Every other op, and every op without bf16 operands, runs
    unchanged. Active around forward *and* backward (autograd's matmuls are intercepted too).
    """

    _BF16 = torch.bfloat16
    _MATMULS = frozenset(getattr(torch.ops.aten, name).default for name in ("mm", "addmm", "bmm", "baddbmm"))
    _SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    _SDPA_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default
    _OPS = _MATMULS | {_SDPA, _SDPA_BACKWARD}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in self._OPS:
            return func(*args, **kwargs)
        if not any(isinstance(a, torch.Tensor) and a.dtype == self._BF16 for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        up = [self._up(a) for a in args]
        out = func(*up, **{k: self._up(v) for k, v in kwargs.items()})
        if func is self._SDPA:  # (output, logsumexp): the output in the query's dtype, logsumexp stays fp32
            return out[0].to(args[0].dtype), out[1]
        if func is self._SDPA_BACKWARD:  # gradients in the dtypes of query, key, value
            return tuple(g.to(x.dtype) for g, x in zip(out, args[1:4]))
        return out.to(self._BF16)

    def _up(self, x: Any) -> Any:
        return x.float() if isinstance(x, torch.Tensor) and x.dtype == self._BF16 else x


def matmul_mode(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """`Fp32Gemm` when `uses_fp32_gemm`, else nothing; wrap forward and backward in it."""
    return Fp32Gemm() if uses_fp32_gemm(config, device) else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# one optimizer step


@dataclass(frozen=True)
class StepStats:
    """Numbers of one optimizer step, already summed over processes."""

    loss: float  # mean cross-entropy over the step's trained tokens
    trained_tokens: int
    tokens: int  # real (non-pad) input tokens
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step used


def accumulate(
    loss_module: torch.nn.Module, batches: Sequence[MicroBatch], accelerator: Any, config: TrainConfig
) -> tuple[float, int, int]:
    """Backward over this process's micro-batches of one step; (mean loss, trained tokens, tokens), global.

    Token counts of the whole step are all-reduced first, so each micro-batch's loss_sum is scaled
    by world_size / global_count and the gradient is the exact mean over the step's trained tokens.
    """
    counts = torch.tensor(
        [sum(b.n_trained for b in batches), sum(b.n_tokens for b in batches)], device=accelerator.device
    )
    n_trained, n_tokens = (int(x) for x in accelerator.reduce(counts, reduction="sum"))
    scale = step_scale(n_trained, accelerator.num_processes)
    loss_total = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        # Gradients are all-reduced only on the last micro-batch of the step.
        with (
            contextlib.nullcontext() if last else accelerator.no_sync(loss_module),
            matmul_mode(config, accelerator.device),
        ):
            with autocast(config, accelerator.device):
                loss_sum, _ = loss_module(**batch.model_inputs())
            accelerator.backward(loss_sum * scale)
        loss_total += loss_sum.detach()
    loss = float(accelerator.reduce(loss_total, reduction="sum")) / max(n_trained, 1)
    return loss, n_trained, n_tokens


def train_step(
    loss_module: torch.nn.Module,
    batches: Sequence[MicroBatch],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Any,
    config: TrainConfig,
) -> StepStats:
    """One optimizer step: accumulate gradients, clip, AdamW, LR schedule."""
    loss, n_trained, n_tokens = accumulate(loss_module, batches, accelerator, config)
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    grad_norm = accelerator.clip_grad_norm_([p for p in loss_module.parameters() if p.requires_grad], max_norm)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss, n_trained, n_tokens, float(grad_norm), lr)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, items: Sequence[Rendered], config: TrainConfig, accelerator: Any, pad_id: int
) -> float | None:
    """Mean loss over the eval examples' trained tokens (padded batches, shared across processes)."""
    if not items:
        return None
    lm = model  # the bare (or peft) model: no DDP hooks in evaluation
    was_training = lm.training
    lm.eval()
    totals = torch.zeros(2, device=accelerator.device, dtype=torch.float64)  # (loss sum, token count)
    for rows in eval_micro_batches(len(items), config.batch_size, accelerator.num_processes, accelerator.process_index):
        batch = collate(items, rows, pad_id, packing=False).to(accelerator.device)
        with matmul_mode(config, accelerator.device), autocast(config, accelerator.device):
            loss_sum, n = token_loss_sum(lm, **batch.model_inputs())
        totals += torch.stack([loss_sum.double(), n.double()])
    totals = accelerator.reduce(totals, reduction="sum")
    lm.train(was_training)
    return float(totals[0] / totals[1]) if totals[1] > 0 else None


# --------------------------------------------------------------------------------------------
# bookkeeping


class RunLog:
    """metrics.jsonl + TensorBoard + a rich progress bar, all on the main process only."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, enabled: bool, progress: bool) -> None:
        self.enabled = enabled
        self.metrics_path = output_dir / "metrics.jsonl"
        self.writer = self.bar = None
        if not enabled:
            return
        _truncate_metrics(self.metrics_path, start_step)  # drop lines a crashed run wrote after its checkpoint
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total_steps, completed=start_step, loss="-", tps="-")
            self.bar.start()

    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics line and its scalars to TensorBoard."""
        if not self.enabled:
            return
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if self.writer is not None and key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])
        if self.bar is not None and "loss" in record:
            self.bar.update(self.task, loss=f"{record['loss']:.4f}", tps=f"{record['tokens_per_s']:.0f}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.writer is not None:
            self.writer.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only metrics lines of steps <= `step` (all of them are rewritten on resume), atomically.

    Unreadable lines (a torn last line of a crashed run) are dropped with a warning."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    rows = [_metrics_row(ln) for ln in lines]
    if None in rows:
        logger.warning("%s: dropped %d unreadable line(s) (a crash mid-write)", path, rows.count(None))
    kept = [ln for ln, row in zip(lines, rows) if row is not None and row.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
    os.replace(tmp, path)


def _metrics_row(line: str) -> dict[str, Any] | None:
    """One metrics line as a dict, or None when it is not one."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step", 0), int) else None


def git_sha() -> str | None:
    """Commit of the instillm source tree, when it is a git checkout with a commit."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    """Versions of python and the packages that decide the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("instillm", "torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_manifest(
    config: TrainConfig, plan: Plan, data: TrainData, resumed_from: int | None, attn_implementation: str | None
) -> dict[str, Any]:
    """Write output_dir/run.json: what was asked, what it resolved to, which data and code."""
    manifest = {
        "config": config.to_dict(),
        "plan": plan.to_dict(),
        "data": data.files,
        "template": data.renderer.template_name,
        "attn_implementation": attn_implementation,
        "task_counts": data.mix.counts,
        "task_available": data.mix.available,
        "n_train_examples": len(data.train),
        "n_eval_examples": len(data.eval),
        "render": {
            "kept": data.render_stats.n_kept,
            "truncated": data.render_stats.truncated,
            "dropped": dict(data.render_stats.dropped),
        },
        "versions": package_versions(),
        "git_sha": git_sha(),
        "resumed_from": resumed_from,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = Path(config.output_dir) / RUN_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def report(data: TrainData, plan: Plan, config: TrainConfig) -> None:
    """Print per-task counts, render counts and the plan before training (main process)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title="training mixture")
    for col in ("task", "available", "taken", "rate"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, available, taken, rate in data.mix.table():
        table.add_row(task, str(available), str(taken), f"{rate:.3f}")
    console.print(table)
    st = data.render_stats
    console.print(
        f"rendered {st.n_kept}/{st.n_examples} examples (truncated {st.truncated}, dropped "
        f"{dict(st.dropped) or 0}); {len(data.train)} train, {len(data.eval)} eval"
    )
    console.print(
        f"plan: {plan.total_steps} steps ({plan.epochs:.2f} epochs of {plan.steps_per_epoch}), "
        f"global batch {plan.global_batch} {'packed rows' if config.packing else 'sequences'} "
        f"on {plan.world_size} process(es), warmup {plan.warmup_steps}"
    )


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    """Everything the loop needs, built and checked before the first step."""

    config: TrainConfig
    accelerator: Any
    tokenizer: Any
    data: TrainData
    plan: Plan
    model: torch.nn.Module  # the bare (or peft) model; saved and evaluated as is
    loss_module: torch.nn.Module  # TokenLoss(model), DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: Any
    start_step: int = 0
    trained_tokens: int = 0
    last_loss: float | None = None
    resumed_from: int | None = None
    lock: ckpt.OutputLock | None = None  # the output dir's lock (main process only)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def release(self) -> None:
        """Release the output dir's lock (end of the run)."""
        if self.lock is not None:
            self.lock.release()


def find_resume(config: TrainConfig, accelerator: Any = None) -> Path | None:
    """The checkpoint to continue from (`resume: auto`): the newest complete one, or None for a fresh run.

    The main process verifies the checkpoints (see `ckpt.newest_complete`) and tells the others."""
    latest = ckpt.latest_checkpoint(config.output_dir)
    if latest is not None and config.resume == "never":
        raise ConfigError(
            f"resume: never, but output_dir {config.output_dir} already holds checkpoints "
            f"({latest.name}); use resume: auto to continue, or a new output_dir"
        )
    if config.resume != "auto":
        return None
    main = accelerator is None or accelerator.is_main_process
    chosen = ckpt.newest_complete(config.output_dir) if main and latest is not None else None
    if accelerator is None or accelerator.num_processes == 1:
        return chosen
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([chosen], from_process=0)[0]  # every process takes part, found or not


def check_output_dir(config: TrainConfig, overwrite: bool = False) -> None:
    """ConfigError when output_dir holds files of something other than this run, unless `overwrite`.

    This run's dir: absent, empty, holding checkpoints (resume decides), or a `run.json` of the same config."""
    out = Path(config.output_dir)
    if overwrite or not out.is_dir() or (out / ckpt.CHECKPOINTS).is_dir() or _same_run(out, config):
        return
    others = sorted(p.name for p in out.iterdir() if p.name != ckpt.LOCK_FILE)
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise ConfigError(
            f"output_dir: {out} is not empty ({shown}) and holds no checkpoints or run.json of this "
            "run; use a new or empty output_dir, or --overwrite (train(..., overwrite=True)) to "
            "write into it anyway"
        )


def claim_output_dir(config: TrainConfig, overwrite: bool, lock: ckpt.OutputLock) -> None:
    """Check output_dir is this run's and lock it when it exists (a new dir is locked once created).

    A lock file already there is tried first, so a dir in use reports its holder's pid."""
    if lock.path.exists():
        lock.acquire()
    check_output_dir(config, overwrite)
    if lock.directory.is_dir():
        lock.acquire()


def _same_run(out: Path, config: TrainConfig) -> bool:
    """Whether `out/run.json` was written by a run of `config` (output_dir and resume aside)."""
    try:
        saved = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    ours = json.loads(json.dumps(config.to_dict()))
    ignore = {"output_dir", "resume"}
    return isinstance(saved, dict) and {k: v for k, v in saved.items() if k not in ignore} == {
        k: v for k, v in ours.items() if k not in ignore
    }


def data_fingerprint(data: TrainData) -> str:
    """SHA-256 of the data files' hashes and the training mixture (resuming needs the same data)."""
    hashes = [f["sha256"] for f in data.files]  # not the paths: moving the files is fine
    payload = json.dumps([hashes, data.mix.counts, len(data.train), len(data.eval)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# Settings a run may change when it resumes: where and how often it logs, evaluates and saves, and
# how the same arithmetic runs (speed and memory options). Every other setting decides the weights.
RESUMABLE = frozenset(
    {
        "output_dir",
        "resume",
        "logging_interval",
        "eval_interval",
        "save_interval",
        "save_total_limit",
        "compile",
        "gradient_checkpointing",
        "attn_implementation",
        "packed_attention",
        "cpu_bf16_matmul",
    }
)


def resume_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings (JSON values) a checkpoint of `config` can only be resumed with: all but `RESUMABLE`.

    A local model is its absolute path; datasets are their weights and tasks (data_sha256 compares
    their contents, so moving the files is fine)."""
    values = json.loads(json.dumps(config.to_dict()))
    values["model"] = _model_ref(config.model)
    values["datasets"] = [{"weight": d["weight"], "task": d["task"]} for d in values["datasets"]]
    return {k: v for k, v in values.items() if k not in RESUMABLE}


def _model_ref(model: str) -> str:
    """A local model directory as its absolute path, a hub id as is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def settings_sha256(settings: dict[str, Any]) -> str:
    """SHA-256 of `resume_settings` (stored in each checkpoint's state)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _differences(saved: dict[str, Any], ours: dict[str, Any], prefix: str = "") -> list[str]:
    """`name: old → new` for each setting that differs (nested settings by dotted name)."""
    found = []
    for key in sorted(set(saved) | set(ours)):
        old, new = saved.get(key), ours.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        else:
            found.append(f"{prefix}{key}: {json.dumps(old)} → {json.dumps(new)}")
    return found


def check_resume_settings(config: TrainConfig, checkpoint: Path) -> None:
    """ConfigError naming every setting that differs from those `checkpoint` was written with."""
    state = json.loads((checkpoint / ckpt.STATE_FILE).read_text(encoding="utf-8"))
    saved, ours = state.get("config"), resume_settings(config)
    if not isinstance(saved, dict) or state.get("config_sha256") == settings_sha256(ours):
        return  # the same settings, or a checkpoint of an older instillm (only plan and data are compared)
    changed = _differences(saved, ours)
    if changed:
        raise ConfigError(
            f"resume: checkpoint {checkpoint} was written with other settings ({'; '.join(changed)}); "
            "set them back to continue that run, or start over in a new output_dir (or delete "
            f"{Path(config.output_dir) / ckpt.CHECKPOINTS})"
        )


def restore(run: Run, path: Path) -> None:
    """Load checkpoint `path` into `run` after checking it belongs to the same plan and data."""
    state = json.loads((path / ckpt.STATE_FILE).read_text(encoding="utf-8"))
    if state.get("plan") != run.plan.to_dict() or state.get("data_sha256") != data_fingerprint(run.data):
        what = "plan" if state.get("plan") != run.plan.to_dict() else "data"
        raise ConfigError(
            f"resume: checkpoint {path} was written for a different {what} (settings or data "
            "changed since); use a new output_dir, or delete its checkpoints/ to start over"
        )
    state = ckpt.load_checkpoint(path, run.model, run.optimizer, run.scheduler, run.accelerator.process_index)
    run.start_step, run.trained_tokens = state["step"], state["trained_tokens"]
    run.last_loss, run.resumed_from = state.get("loss"), state["step"]


def setup(config: TrainConfig, device: str = "auto", overwrite: bool = False) -> Run:
    """Check and build everything: data, plan, model, optimizer, scheduler, resumed state.

    `device`: "auto" lets Accelerate place the model (CUDA when available); "cpu" keeps it on the CPU.
    `overwrite`: write into a non-empty output_dir of something else (see `check_output_dir`).
    The main process holds the output dir's lock from here on: `Run.release()` (train() does) frees it."""
    from accelerate import Accelerator

    from instillm.models.loading import resolve_device

    # mixed_precision stays "no": Accelerate fixes it once per process (a singleton), while
    # bf16 here is a plain torch.autocast, so train() can run with either precision any time.
    # Accelerate starts a gloo process group for torchrun's CPU processes only when told cpu=True.
    cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision="no", cpu=cpu_ddp or resolve_device(device) == "cpu")
    lock = ckpt.OutputLock(config.output_dir)
    try:
        if accelerator.is_main_process:
            claim_output_dir(config, overwrite, lock)
        return _build(config, accelerator, lock)
    except BaseException:
        lock.release()
        raise


def _build(config: TrainConfig, accelerator: Any, lock: ckpt.OutputLock) -> Run:
    """`setup` once the output dir is checked (and locked when it exists)."""
    from accelerate.utils import set_seed

    from instillm.models.loading import load_tokenizer

    if config.packing and config.packed_attention == "varlen":
        attention.check_varlen(accelerator.device)  # before any compute
    resume_from = find_resume(config, accelerator)
    if resume_from is not None:
        check_resume_settings(config, resume_from)  # before any compute
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config, tokenizer)
    n_rows = count_rows([len(r) for r in data.train], config.max_length, config.packing)
    plan = resolve(config, n_rows, accelerator.num_processes)
    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        lock.acquire()
        report(data, plan, config)
    set_seed(config.seed)
    model = build_model(config)
    if config.compile:
        compile_decoder(model, config)
    loss_module = accelerator.prepare(TokenLoss(model))  # moves to the device, wraps DDP
    optimizer = build_optimizer(model, config)
    run = Run(
        config,
        accelerator,
        tokenizer,
        data,
        plan,
        model,
        loss_module,
        optimizer,
        build_scheduler(optimizer, config, plan),
        lock=lock if lock.held else None,
    )
    if resume_from is not None:
        restore(run, resume_from)
    if run.is_main:
        lm: Any = unwrap(model)  # a transformers model (nn.Module's typing hides `config`)
        write_manifest(config, plan, data, run.resumed_from, lm.config._attn_implementation)
    return run


def step_batches(run: Run, epoch_batches: list, step: int) -> list[MicroBatch]:
    """This process's micro-batches (on the device) for global optimizer step `step`."""
    acc, cfg = run.accelerator, run.config
    shard = step_shard(
        epoch_batches,
        step % run.plan.steps_per_epoch,
        cfg.gradient_accumulation_steps,
        acc.num_processes,
        acc.process_index,
    )
    return [collate(run.data.train, rows, run.tokenizer.pad_token_id, cfg.packing).to(acc.device) for rows in shard]


def save_step(run: Run, step: int) -> None:
    """Checkpoint after `step` optimizer steps, prune old ones, and apply the test kill hook."""
    cfg, plan = run.config, run.plan
    state = {
        "step": step,
        "epoch": step // plan.steps_per_epoch,
        "step_in_epoch": step % plan.steps_per_epoch,
        "trained_tokens": run.trained_tokens,
        "loss": run.last_loss,
        "plan": plan.to_dict(),
        "data_sha256": data_fingerprint(run.data),
        "config": resume_settings(cfg),
        "config_sha256": settings_sha256(resume_settings(cfg)),
    }
    ckpt.save_checkpoint(cfg.output_dir, step, run.model, run.optimizer, run.scheduler, state, run.accelerator)
    if run.is_main:
        ckpt.prune_checkpoints(cfg.output_dir, cfg.save_total_limit)
    if os.environ.get(KILL_HOOK) == str(step):  # test hook: simulate a crash right after a save
        os.kill(os.getpid(), signal.SIGKILL)


def step_stream(run: Run) -> Iterator[tuple[int, list[MicroBatch]]]:
    """(step, this process's micro-batches on the device) from `run.start_step` to the plan's end; an
    epoch's order is built when its first step comes."""
    cfg, plan = run.config, run.plan
    lengths = [len(r) for r in run.data.train]
    cached_epoch, epoch_batches = -1, []
    for step in range(run.start_step, plan.total_steps):
        epoch = step // plan.steps_per_epoch
        if epoch != cached_epoch:  # the epoch's order is a function of (seed, epoch) only
            epoch_batches = epoch_micro_batches(
                lengths, cfg.batch_size, cfg.max_length, cfg.packing, cfg.group_by_length, cfg.seed, epoch
            )
            cached_epoch = epoch
        yield step, step_batches(run, epoch_batches, step)


def run_loop(run: Run, log: RunLog) -> tuple[float | None, float]:
    """Train from `run.start_step` to the plan's end; (last eval loss, tokens/s over the run)."""
    cfg, plan, acc = run.config, run.plan, run.accelerator
    eval_loss = None
    window = {"loss": 0.0, "trained": 0, "tokens": 0, "t": time.perf_counter()}
    start_t, all_tokens = time.perf_counter(), 0
    for step, batches in step_stream(run):
        stats = train_step(run.loss_module, batches, run.optimizer, run.scheduler, acc, cfg)
        done = step + 1
        run.trained_tokens += stats.trained_tokens
        run.last_loss = stats.loss
        all_tokens += stats.tokens
        window["loss"] += stats.loss * stats.trained_tokens
        window["trained"] += stats.trained_tokens
        window["tokens"] += stats.tokens
        if done == 1 or done % cfg.logging_interval == 0 or done == plan.total_steps:  # the curve from step 1
            log.log(_metrics(run, done, stats, window))
            window = {"loss": 0.0, "trained": 0, "tokens": 0, "t": time.perf_counter()}
        if run.data.eval and ((cfg.eval_interval and done % cfg.eval_interval == 0) or done == plan.total_steps):
            eval_loss = evaluate(run.model, run.data.eval, cfg, acc, run.tokenizer.pad_token_id)
            log.log({"step": done, "eval_loss": eval_loss})
        if cfg.save_interval and done % cfg.save_interval == 0:
            save_step(run, done)
        log.advance()
    return eval_loss, all_tokens / max(time.perf_counter() - start_t, 1e-9)


def _metrics(run: Run, step: int, stats: StepStats, window: dict[str, float]) -> dict[str, Any]:
    """One metrics line: token-weighted mean loss of the interval and its throughput."""
    seconds = max(time.perf_counter() - window["t"], 1e-9)
    return {
        "step": step,
        "epoch": round(step / run.plan.steps_per_epoch, 4),
        "loss": window["loss"] / max(window["trained"], 1),
        "lr": stats.lr,
        "grad_norm": stats.grad_norm,
        "trained_tokens": run.trained_tokens,
        "tokens_per_s": window["tokens"] / seconds,
    }


def save_final(run: Run) -> Path:
    """Model (or LoRA adapter) and tokenizer with the training chat template in output_dir/final."""
    final = Path(run.config.output_dir) / FINAL
    if run.is_main:
        model: Any = run.model  # a transformers / peft model (nn.Module's typing hides their attributes)
        lm: Any = unwrap(model)
        model.config.use_cache = True
        if lm.config._attn_implementation in attention.PIECE_BACKENDS:
            lm.set_attn_implementation("sdpa")  # what it runs outside packed rows anyway
        _pin_base_model(model, run.config.model)
        model.save_pretrained(final)
        save_template(run.tokenizer, run.data.renderer)
        run.tokenizer.save_pretrained(final)
    run.accelerator.wait_for_everyone()
    return final


def _pin_base_model(model: Any, base: str) -> None:
    """Record a LoRA adapter's local base model by its absolute path (a relative one breaks in another cwd)."""
    for peft_config in getattr(model, "peft_config", {}).values():
        peft_config.base_model_name_or_path = _model_ref(base)


def train(config: TrainConfig, progress: bool = True, device: str = "auto", overwrite: bool = False) -> TrainResult:
    """Fine-tune `config.model` on `config.datasets`; resumes from the newest checkpoint (resume: auto).

    `device` "auto" trains on CUDA when available (Accelerate places the model), "cpu" on the CPU.
    `overwrite`: train into a non-empty output_dir that holds no run of this config (`--overwrite`)."""
    run = setup(config, device, overwrite)
    out = Path(config.output_dir)
    try:
        log = RunLog(out, run.plan.total_steps, run.start_step, enabled=run.is_main, progress=progress)
        try:
            eval_loss, tokens_per_s = run_loop(run, log)
        finally:
            log.close()
        final = save_final(run)
    finally:
        run.release()
    return TrainResult(
        out,
        final,
        run.plan,
        run.plan.total_steps,
        run.last_loss,
        eval_loss,
        run.trained_tokens,
        tokens_per_s,
        dict(run.data.mix.counts),
        run.resumed_from,
    )


# --------------------------------------------------------------------------------------------
# export and command line


def export(run_dir: str | Path, out_dir: str | Path, merge: bool = True) -> Path:
    """A standalone model from a run: LoRA merged into the base (merge) or the adapter copied as is.

    Written into a temp dir beside `out_dir`, then renamed into place (replacing an earlier export)."""
    import shutil

    from instillm.models.loading import adapter_base, load_model, load_tokenizer

    run_dir, out = Path(run_dir), Path(out_dir)
    src = run_dir / FINAL if (run_dir / FINAL).is_dir() else run_dir
    is_adapter = (src / "adapter_config.json").is_file()
    if not is_adapter and not (src / "config.json").is_file():
        raise ModelError(
            f"{run_dir} holds no trained model (expected {FINAL}/ with config.json or adapter_config.json)"
        )
    base = adapter_base(src) if is_adapter and merge else None
    check_export_dir(out, [run_dir, src, *([Path(base)] if base and Path(base).is_dir() else [])])
    if is_adapter and not merge:
        with staged_dir(out) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        return out
    tokenizer = load_tokenizer(src)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), src).merge_and_unload()
    else:
        model = load_model(src)
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def check_export_dir(out: Path, sources: Sequence[Path]) -> None:
    """ConfigError when export dir `out` overlaps a dir it reads, or holds files other than an earlier export."""
    target = out.resolve()
    for src in sources:
        source = src.resolve()
        if target == source or source in target.parents or target in source.parents:
            raise ConfigError(
                f"-o/--output: {out} overlaps {src}, which the export reads; export to a directory outside it"
            )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o/--output: {out} is a file; give a directory to export into")
    if out.is_dir() and any(out.iterdir()) and not _holds_model(out):
        raise ConfigError(f"-o/--output: {out} is not empty and holds no exported model; give a new or empty directory")


def _holds_model(path: Path) -> bool:
    """Whether `path` holds a saved model or LoRA adapter (an earlier export, replaced as a whole)."""
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A fresh hidden dir beside `out` to write into, renamed to `out` when the block succeeds (else removed)."""
    import secrets
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # the user's umask applies (mkdtemp's would be 0700)
    try:
        yield tmp
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` is renamed aside first and then deleted."""
    import shutil

    old = out.with_name(f"{new.name}.old") if out.exists() else None
    if old is not None:
        out.rename(old)
    new.rename(out)
    if old is not None and old.is_symlink():
        old.unlink()  # a link to an earlier export: the link goes, what it pointed to stays
    elif old is not None:
        shutil.rmtree(old)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m instillm.train.loop CONFIG.yaml [--overwrite] [--set] KEY=VALUE ...` (also under torchrun)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m instillm.train.loop CONFIG.yaml [--overwrite] [--set KEY=VALUE ...]", file=sys.stderr)
        return 2
    overrides = [a for a in args[1:] if a not in ("--set", "--overwrite")]
    try:
        result = train(load_config(args[0], overrides), overwrite="--overwrite" in args[1:])
    except InstillmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            json.dumps(
                {
                    "final_dir": str(result.final_dir),
                    "steps": result.steps,
                    "final_loss": result.final_loss,
                    "eval_loss": result.eval_loss,
                    "tokens_per_s": result.tokens_per_s,
                }
            )
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
