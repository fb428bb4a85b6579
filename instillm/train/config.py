"""What the user asked for (`TrainConfig`, 1:1 with the YAML file) and what it resolves to (`Plan`).

`TrainConfig` is frozen and validated on construction: every problem (unknown key, wrong type,
bad value) is collected and reported at once, each named by its field path (`lora.r`,
`datasets[1].weight`). `resolve()` is a pure function from the config plus facts known only
after the data is rendered (how many training sequences, how many processes) to the `Plan`:
global batch, steps per epoch, total and warmup steps. The plan is saved in `run.json`.
"""

from __future__ import annotations

import difflib
import math
import types
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from instillm.data.render import TRUNCATION_POLICIES
from instillm.errors import ConfigError

LR_SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16")
RESUME_MODES = ("auto", "never")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
PACKED_ATTENTIONS = ("auto", "segments", "mask")
CPU_BF16_MATMULS = ("auto", "fp32", "native")


# --------------------------------------------------------------------------------------------
# the config


class _Validated:
    """Direct construction (`TrainConfig(...)`) checks and normalises like the YAML path does."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        values = _check_values(type(self), self, "", problems)
        if problems or values is None:
            raise ConfigError(_format(problems))
        for name, value in values.items():  # e.g. a list given for a tuple field becomes a tuple
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class DatasetSpec(_Validated):
    """One canonical JSONL file; `task` overrides each example's task, `weight` scales its mixing rate."""

    path: str
    weight: float = 1.0
    task: str | None = None

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = []
        if not v["path"]:
            problems.append("path: must not be empty")
        if v["weight"] <= 0:
            problems.append(f"weight: must be > 0, got {v['weight']}")
        return problems


@dataclass(frozen=True)
class LoraSettings(_Validated):
    """LoRA adapter shape; `target_modules` ["all-linear"] means every linear layer but the head."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = []
        if v["r"] < 1:
            problems.append(f"r: must be >= 1, got {v['r']}")
        if v["alpha"] <= 0:
            problems.append(f"alpha: must be > 0, got {v['alpha']}")
        if not 0 <= v["dropout"] < 1:
            problems.append(f"dropout: must be in [0, 1), got {v['dropout']}")
        if not v["target_modules"]:
            problems.append("target_modules: must name at least one module (or 'all-linear')")
        return problems


@dataclass(frozen=True)
class MixingSettings(_Validated):
    """Multi-task mixing: rate ∝ weight·min(n, cap)^(1/temperature); `total` examples per epoch."""

    cap: int | None = None
    temperature: float = 1.0
    total: int | None = None
    cot_ratio: float | None = None  # fraction of chain-of-thought examples to keep, None = as is

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = []
        if v["cap"] is not None and v["cap"] < 1:
            problems.append(f"cap: must be >= 1 (or null for no cap), got {v['cap']}")
        if v["temperature"] <= 0:
            problems.append(f"temperature: must be > 0, got {v['temperature']}")
        if v["total"] is not None and v["total"] < 1:
            problems.append(f"total: must be >= 1 (or null), got {v['total']}")
        if v["cot_ratio"] is not None and not 0 <= v["cot_ratio"] <= 1:
            problems.append(f"cot_ratio: must be in [0, 1] (or null), got {v['cot_ratio']}")
        return problems


@dataclass(frozen=True)
class TrainConfig(_Validated):
    """Everything a training run needs; the YAML file maps onto these fields 1:1."""

    model: str
    datasets: tuple[DatasetSpec, ...]
    output_dir: str
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
    # kernel over whole rows with a block-diagonal mask. "auto": segments with sdpa, mask with eager
    # (the reference math); flash_attention_2 always uses its own varlen kernel.
    packed_attention: str = "auto"
    lora: LoraSettings | None = None
    # bookkeeping
    logging_interval: int = 10  # optimizer steps
    eval_interval: int = 0  # optimizer steps; 0 = only at the end
    save_interval: int = 0  # optimizer steps; 0 = no intermediate checkpoints
    save_total_limit: int = 0  # keep only the newest N checkpoints; 0 = keep all
    resume: str = "auto"

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = []
        if not v["model"]:
            problems.append("model: must name a model directory or hub id")
        if not v["datasets"]:
            problems.append("datasets: must list at least one canonical JSONL file")
        if not v["output_dir"]:
            problems.append("output_dir: must not be empty")
        _choice(problems, v, "truncation", TRUNCATION_POLICIES)
        _choice(problems, v, "lr_scheduler", LR_SCHEDULERS)
        _choice(problems, v, "precision", PRECISIONS)
        _choice(problems, v, "cpu_bf16_matmul", CPU_BF16_MATMULS)
        _choice(problems, v, "resume", RESUME_MODES)
        if v["attn_implementation"] is not None:
            _choice(problems, v, "attn_implementation", ATTN_IMPLEMENTATIONS)
        _choice(problems, v, "packed_attention", PACKED_ATTENTIONS)
        if v["attn_implementation"] == "flash_attention_2" and v["packed_attention"] != "auto":
            problems.append(f"packed_attention: {v['packed_attention']!r} does not apply to flash_attention_2, "
                            "which keeps packed examples apart with its varlen kernel; leave it at 'auto'")
        for name, low in (("max_length", 2), ("batch_size", 1), ("gradient_accumulation_steps", 1),
                          ("logging_interval", 1)):
            if v[name] < low:
                problems.append(f"{name}: must be >= {low}, got {v[name]}")
        for name in ("eval_interval", "save_interval", "save_total_limit", "seed"):
            if v[name] < 0:
                problems.append(f"{name}: must be >= 0, got {v[name]}")
        if v["learning_rate"] <= 0:
            problems.append(f"learning_rate: must be > 0, got {v['learning_rate']}")
        if not 0 <= v["warmup_ratio"] < 1:
            problems.append(f"warmup_ratio: must be in [0, 1), got {v['warmup_ratio']}")
        if v["warmup_steps"] is not None and v["warmup_steps"] < 0:
            problems.append(f"warmup_steps: must be >= 0, got {v['warmup_steps']}")
        if v["warmup_steps"] is not None and v["warmup_ratio"] > 0:
            problems.append("warmup_steps: set either warmup_steps or warmup_ratio, not both")
        if v["weight_decay"] < 0:
            problems.append(f"weight_decay: must be >= 0, got {v['weight_decay']}")
        if not all(0 <= b < 1 for b in v["adam_betas"]):
            problems.append(f"adam_betas: both must be in [0, 1), got {list(v['adam_betas'])}")
        if v["adam_eps"] <= 0:
            problems.append(f"adam_eps: must be > 0, got {v['adam_eps']}")
        if v["max_grad_norm"] < 0:
            problems.append(f"max_grad_norm: must be >= 0 (0 = no clipping), got {v['max_grad_norm']}")
        if v["epochs"] <= 0:
            problems.append(f"epochs: must be > 0, got {v['epochs']}")
        if v["max_steps"] is not None and v["max_steps"] < 1:
            problems.append(f"max_steps: must be >= 1 (or null to use epochs), got {v['max_steps']}")
        if not 0 <= v["eval_split"] < 1:
            problems.append(f"eval_split: must be in [0, 1), got {v['eval_split']}")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict (tuples as lists) that `config_from_dict` reads back."""
        return _plain(asdict(self))


def _choice(problems: list[str], v: Mapping[str, Any], name: str, choices: Sequence[str]) -> None:
    if v[name] not in choices:
        problems.append(f"{name}: {v[name]!r} is not one of {list(choices)}")


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------
# dict -> dataclass, collecting every problem


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """Check `data` against dataclass `cls`; append 'path: message' problems; the instance or None."""
    values = _check_values(cls, data, path, problems)
    return None if values is None else cls(**values)


def _check_values(cls: type, data: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    """Field values of `cls` coerced from `data` (a mapping or an instance), or None after problems."""
    if is_dataclass(data) and isinstance(data, cls):
        data = {f.name: getattr(data, f.name) for f in fields(cls)}
    if not isinstance(data, Mapping):
        problems.append(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
        return None
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    n_before = len(problems)
    for key in data:
        if key not in names:
            problems.append(f"{_join(path, str(key))}: unknown key{_suggest(str(key), names)}")
    values: dict[str, Any] = {}
    failed: set[str] = set()
    for f in fields(cls):
        sub, n = _join(path, f.name), len(problems)
        if f.name in data:
            values[f.name] = _coerce(hints[f.name], data[f.name], sub, problems)
        elif f.default is not MISSING:
            values[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            values[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            problems.append(f"{sub}: required")
        if len(problems) > n:  # check the other fields' values with this one at its default
            failed.add(f.name)
            values[f.name] = None if f.default is MISSING else f.default
    for p in cls.check(values):  # type: ignore[attr-defined]
        if p.split(":", 1)[0] not in failed:
            problems.append(f"{path}.{p}" if path else p)
    return None if len(problems) > n_before else values


# Names people bring from other trainers, mapped to ours (for "did you mean" hints).
_ALIASES = {
    "lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
    "model_name_or_path": "model", "bf16": "precision", "warmup": "warmup_ratio",
    "gradient_accumulation": "gradient_accumulation_steps", "max_seq_length": "max_length",
}


def _suggest(key: str, names: Sequence[str]) -> str:
    alias = _ALIASES.get(key)
    close = [alias] if alias in names else difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """`value` converted to type `tp` (YAML scalars, lists, nested mappings) or a problem noted."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, path, problems)
    if is_dataclass(tp):
        if tp is DatasetSpec and isinstance(value, str):
            value = {"path": value}  # `- data.jsonl` is shorthand for `- {path: data.jsonl}`
        if tp is LoraSettings and value is True:
            value = {}
        return _build(tp, value, path, problems)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {_describe(value)}")
            return None
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(args[0], x, _join(path, i), problems) for i, x in enumerate(value)]
        elif len(value) != len(args):
            problems.append(f"{path}: expected {len(args)} values, got {len(value)}")
            return None
        else:
            items = [_coerce(a, x, _join(path, i), problems) for i, (a, x) in enumerate(zip(args, value))]
        return tuple(items)
    return _scalar(tp, value, path, problems)


def _scalar(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `2e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
    else:  # pragma: no cover - a field type this module does not know
        raise TypeError(f"unsupported config field type {tp!r} at {path}")
    problems.append(f"{path}: expected {tp.__name__}, got {_describe(value)}")
    return None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 40 else text[:37] + '...'}"


def _format(problems: list[str]) -> str:
    return "invalid training config:\n" + "\n".join(f"  - {p}" for p in problems)


# --------------------------------------------------------------------------------------------
# loading


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A `TrainConfig` from a plain mapping; ConfigError lists every problem with its field path."""
    problems: list[str] = []
    config = _build(TrainConfig, data, "", problems)
    if problems:
        raise ConfigError(_format(problems))
    return config


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys (`lora.r=16`, `datasets.0.weight=2`) in a copy of `data`; values are YAML."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. learning_rate=1e-4 or lora.r=16)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from e
        _set_path(data, key.strip().split("."), value, item)
    return data


def _set_path(node: Any, keys: list[str], value: Any, item: str) -> None:
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"override {item!r}: {key!r} is not an index of a {len(node)}-item list")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(keys[:i])} is not a mapping")
        if last:
            node[key] = value
        else:
            if node.get(key) is None:  # e.g. `lora.r=16` when lora was off
                node[key] = {}
            node = node[key]


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; ConfigError naming the file when missing, invalid or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config (or start from {} when path is None) and apply KEY=VALUE overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


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
    "DatasetSpec", "LoraSettings", "MixingSettings", "TrainConfig", "Plan",
    "config_from_dict", "apply_overrides", "load_config", "read_yaml_mapping", "resolve",
]

