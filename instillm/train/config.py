"""What the user asked for (`TrainConfig`, 1:1 with the YAML file) and what it resolves to (`Plan`).

`TrainConfig` is an `instillm.config.Config`: frozen and validated on construction, every problem
(unknown key, wrong type, bad value) collected and reported at once, each named by its field path
(`lora.r`, `datasets[1].weight`). `TrainSettings` is every field but model/datasets/output_dir: the
`train:` section of an `instillm run` config, which fills those in (`TrainConfig.of`).

`resolve()` is a pure function from the config plus facts known only after the data is
rendered (how many training sequences, how many processes) to the `Plan`:
global batch, steps per epoch, total and warmup steps. The plan is saved in `run.json`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instillm.config import (
    Config,
    apply_overrides,
    check_choice,
    check_min,
    check_range,
    field_values,
    read_yaml_mapping,
)
from instillm.data.render import TRUNCATION_POLICIES
from instillm.errors import ConfigError

LR_SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16")
RESUME_MODES = ("auto", "never")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
PACKED_ATTENTIONS = ("auto", "segments", "mask", "varlen")
CPU_BF16_MATMULS = ("auto", "fp32", "native")


# --------------------------------------------------------------------------------------------
# the config


@dataclass(frozen=True)
class DatasetSpec(Config):
    """One canonical JSONL file; `task` overrides each example's task, `weight` scales its mixing rate."""

    path: str
    weight: float = 1.0
    task: str | None = None

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        """`- data.jsonl` is shorthand for `- {path: data.jsonl}`."""
        return {"path": value} if isinstance(value, str) else value

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = [] if v["path"] else ["path: must not be empty"]
        check_min(problems, "weight", v["weight"], 0, strict=True)
        return problems


@dataclass(frozen=True)
class LoraSettings(Config):
    """LoRA adapter shape; `target_modules` ["all-linear"] means every linear layer but the head."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        """`lora: true` is LoRA with the default shape."""
        return {} if value is True else value

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min(problems, "r", v["r"], 1)
        check_min(problems, "alpha", v["alpha"], 0, strict=True)
        check_range(problems, "dropout", v["dropout"], 0, 1, "[)")
        if not v["target_modules"]:
            problems.append("target_modules: must name at least one module (or 'all-linear')")
        return problems


@dataclass(frozen=True)
class MixingSettings(Config):
    """Multi-task mixing: rate ∝ weight·min(n, cap)^(1/temperature); `total` examples per epoch."""

    cap: int | None = None
    temperature: float = 1.0
    total: int | None = None
    cot_ratio: float | None = None  # fraction of chain-of-thought examples to keep, None = as is

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min(problems, "cap", v["cap"], 1, note=" (or null for no cap)")
        check_min(problems, "temperature", v["temperature"], 0, strict=True)
        check_min(problems, "total", v["total"], 1, note=" (or null)")
        check_range(problems, "cot_ratio", v["cot_ratio"], 0, 1, note=" (or null)")
        return problems


RUN_FILLED = ("model", "datasets", "output_dir")  # TrainConfig fields an `instillm run` fills in


@dataclass(frozen=True)
class TrainSettings(Config):
    """Every training setting but what to train and where (`RUN_FILLED`): a run's `train:` section."""

    path_prefix = "train"
    title = "invalid training settings"
    # data
    template: str = "auto"
    max_length: int = 2048
    truncation: str = "drop"
    packing: bool = False
    group_by_length: bool = False
    mixing: MixingSettings = field(default_factory=MixingSettings)
    eval_split: float = 0.0  # fraction of rendered examples held out for eval loss
    # batch: batch_size is the micro-batch per process, in sequences (packed rows when packing)
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    # optimisation
    learning_rate: float = 2e-5
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None  # overrides warmup_ratio
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    seed: int = 0
    # model
    precision: str = "fp32"  # bf16 = torch.autocast over fp32 master weights
    # bf16 on a CPU: "fp32" runs the bf16 matmuls/attention as fp32 kernels on the bf16 values
    # (results rounded to bf16), "native" uses torch's bf16 kernels, "auto" = fp32 when the CPU
    # has no oneDNN bf16 matmul (AVX2-only CPUs, where native bf16 is 7-50x slower)
    cpu_bf16_matmul: str = "auto"
    gradient_checkpointing: bool = False
    # torch.compile of the decoder forward: ~1.3x faster bf16 steps on the `small` preset (CPU,
    # benchmarks/train_throughput.py) after a first step that compiles; new shapes recompile, so
    # it pays off with steady shapes (packing). Not with the fp32-GEMM emulation of bf16.
    compile: bool = False
    attn_implementation: str | None = None  # None = the model's own (sdpa for the tiny preset)
    # How packed rows keep their examples apart: "segments" attends within each example only
    # (instillm.train.attention; ~2x faster attention on a CPU), "mask" runs the model's sdpa/eager
    # kernel over whole rows with a block-diagonal mask; "varlen" gives the examples to torch's flash
    # varlen kernel in one call (CUDA, bf16; not yet measured on a GPU). "auto": segments with sdpa,
    # mask with eager (the reference math); flash_attention_2 always uses its own varlen kernel.
    packed_attention: str = "auto"
    lora: LoraSettings | None = None
    # bookkeeping
    logging_interval: int = 10  # optimizer steps
    eval_interval: int = 0  # optimizer steps; 0 = only at the end
    save_interval: int = 0  # optimizer steps; 0 = no intermediate checkpoints
    save_total_limit: int = 0  # keep only the newest N checkpoints; 0 = keep all
    resume: str = "auto"

    @classmethod
    def unknown_key(cls, key: str, names: Sequence[str]) -> str:
        if key in RUN_FILLED:
            return "set by instillm run; remove it"
        return super().unknown_key(key, names)

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        for rules in (_choices, _attention, _counts, _optimisation):
            rules(problems, v)
        return problems


def _choices(problems: list[str], v: Mapping[str, Any]) -> None:
    for name, choices in (
        ("truncation", TRUNCATION_POLICIES),
        ("lr_scheduler", LR_SCHEDULERS),
        ("precision", PRECISIONS),
        ("cpu_bf16_matmul", CPU_BF16_MATMULS),
        ("resume", RESUME_MODES),
        ("attn_implementation", ATTN_IMPLEMENTATIONS),
        ("packed_attention", PACKED_ATTENTIONS),
    ):
        check_choice(problems, name, v[name], choices)


def _attention(problems: list[str], v: Mapping[str, Any]) -> None:
    if v["packed_attention"] == "varlen" and v["precision"] != "bf16":
        problems.append(
            f"packed_attention: 'varlen' runs a flash kernel, which takes bf16, not precision {v['precision']!r}; "
            "set precision: bf16 or packed_attention: auto"
        )
    if v["attn_implementation"] == "flash_attention_2" and v["packed_attention"] != "auto":
        problems.append(
            f"packed_attention: {v['packed_attention']!r} does not apply to flash_attention_2, "
            "which keeps packed examples apart with its varlen kernel; leave it at 'auto'"
        )


def _counts(problems: list[str], v: Mapping[str, Any]) -> None:
    for name, low in (
        ("max_length", 2),
        ("batch_size", 1),
        ("gradient_accumulation_steps", 1),
        ("logging_interval", 1),
        ("eval_interval", 0),
        ("save_interval", 0),
        ("save_total_limit", 0),
        ("seed", 0),
        ("warmup_steps", 0),
    ):
        check_min(problems, name, v[name], low)
    check_min(problems, "max_steps", v["max_steps"], 1, note=" (or null to use epochs)")
    check_range(problems, "eval_split", v["eval_split"], 0, 1, "[)")


def _optimisation(problems: list[str], v: Mapping[str, Any]) -> None:
    check_min(problems, "learning_rate", v["learning_rate"], 0, strict=True)
    check_range(problems, "warmup_ratio", v["warmup_ratio"], 0, 1, "[)")
    if v["warmup_steps"] is not None and v["warmup_ratio"] > 0:
        problems.append("warmup_steps: set either warmup_steps or warmup_ratio, not both")
    check_min(problems, "weight_decay", v["weight_decay"], 0)
    if not all(0 <= b < 1 for b in v["adam_betas"]):
        problems.append(f"adam_betas: both must be in [0, 1), got {list(v['adam_betas'])}")
    check_min(problems, "adam_eps", v["adam_eps"], 0, strict=True)
    check_min(problems, "max_grad_norm", v["max_grad_norm"], 0, note=" (0 = no clipping)")
    check_min(problems, "epochs", v["epochs"], 0, strict=True)


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Everything a training run needs; the YAML file maps onto these fields 1:1 (`TrainSettings`
    plus what to train and where)."""

    path_prefix = ""
    title = "invalid training config"
    model: str = field(kw_only=True)
    datasets: tuple[DatasetSpec, ...] = field(kw_only=True)
    output_dir: str = field(kw_only=True)

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = [] if v["model"] else ["model: must name a model directory or hub id"]
        if not v["datasets"]:
            problems.append("datasets: must list at least one canonical JSONL file")
        if not v["output_dir"]:
            problems.append("output_dir: must not be empty")
        return problems + TrainSettings.check(v)

    @classmethod
    def of(cls, settings: TrainSettings, **filled: Any) -> TrainConfig:
        """`settings` plus the `RUN_FILLED` fields (model, datasets, output_dir)."""
        return cls(**{**field_values(settings), **filled})

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict, what to train and where first."""
        data = super().to_dict()
        return {**{k: data.pop(k) for k in RUN_FILLED}, **data}


# --------------------------------------------------------------------------------------------
# loading


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A `TrainConfig` from a plain mapping; ConfigError lists every problem with its field path."""
    return TrainConfig.from_dict(data)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config (or start from {} when path is None) and apply KEY=VALUE overrides."""
    return TrainConfig.load(path, overrides)


# --------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class Plan:
    """What the config resolves to for one dataset and world size (saved in run.json)."""

    world_size: int
    micro_batch_size: int  # sequences per micro-batch per process
    gradient_accumulation_steps: int
    global_batch: int  # sequences per optimizer step, all processes together
    n_train_sequences: int  # per epoch: examples, or packed rows when packing
    micro_batches_per_epoch: int
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    warmup_steps: int
    epochs: float  # total_steps / steps_per_epoch
    dropped_micro_batches_per_epoch: int  # the tail that does not fill a whole optimizer step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve(config: TrainConfig, n_train_sequences: int, world_size: int = 1) -> Plan:
    """The run's plan: batches, steps and warmup from the config, the data size and the world size."""
    if world_size < 1:
        raise ConfigError(f"world_size: must be >= 1, got {world_size}")
    b, accum = config.batch_size, config.gradient_accumulation_steps
    micro = math.ceil(n_train_sequences / b)
    per_step = accum * world_size  # micro-batches per optimizer step, all processes
    steps_per_epoch = micro // per_step
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size: {n_train_sequences} training sequences make {micro} micro-batch(es) of {b}, fewer "
            f"than one optimizer step needs (gradient_accumulation_steps {accum} × {world_size} process(es) "
            f"= {per_step}); lower batch_size or gradient_accumulation_steps, or add data"
        )
    if config.max_steps is not None:
        total = config.max_steps
    else:
        total = max(1, math.ceil(config.epochs * steps_per_epoch - 1e-9))
    if config.warmup_steps is not None:
        warmup = min(config.warmup_steps, total)
    else:
        warmup = int(math.ceil(config.warmup_ratio * total))
    return Plan(
        world_size=world_size,
        micro_batch_size=b,
        gradient_accumulation_steps=accum,
        global_batch=b * per_step,
        n_train_sequences=n_train_sequences,
        micro_batches_per_epoch=micro,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        epochs=total / steps_per_epoch,
        dropped_micro_batches_per_epoch=micro - steps_per_epoch * per_step,
    )


__all__ = [
    "DatasetSpec",
    "LoraSettings",
    "MixingSettings",
    "TrainSettings",
    "TrainConfig",
    "Plan",
    "config_from_dict",
    "apply_overrides",
    "load_config",
    "read_yaml_mapping",
    "resolve",
]
