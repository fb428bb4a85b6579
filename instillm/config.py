"""One validated base for every config dataclass: `Config`.

A config is a frozen dataclass that inherits from `Config`. However it is built (`Cls(...)`,
`Cls.from_dict(mapping)`, `Cls.load(yaml_path, overrides)`, or nested inside another config),
its values are checked and normalised the same way: every problem (unknown key, wrong type,
bad value) is collected and raised at once as one `ConfigError` whose `problems` name each by
its field path (`lora.r`, `datasets[1].weight`, `suites.judge.judge.model`).

- Types come from the field annotations: YAML scalars are coerced (`2e-5` as a float, a list
  for a tuple, a mapping for a nested config); unions try each member in turn.
- `check(values)` is the class's hook for value and cross-field rules; it returns problems as
  `field: message`, built with the shared helpers below (`check_min_int`, `check_min`,
  `check_range`, `check_choice`).
- `path_prefix` names the class when it is built on its own (`BackendConfig(model="")` reports
  `backend.model: ...`); nested, the path is the field path from the outermost config.
- The message: one problem is the message itself; several built in code are joined on one line
  (`a: ...; b: ...`), several from `from_dict`/`load` are listed under the class's `title`.
- A nested config is built once (`build`), and an instance given for a nested field is taken as
  it is: it was validated when it was built. Subclasses do not override `__post_init__`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, asdict, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from instillm.errors import ConfigError, check_min_int

C = TypeVar("C", bound="Config")
ONE_OR_MANY = "one_or_many"  # field metadata: a single value stands for a 1-tuple


class Config:
    """Base of every config dataclass: validated and normalised in `__post_init__`."""

    path_prefix: ClassVar[str] = ""  # the path of problems when built on its own
    title: ClassVar[str] = "invalid config"  # first line of `from_dict`'s multi-problem ConfigError

    def __post_init__(self) -> None:
        """Built in code: the problems on one line (`a: ...; b: ...`)."""
        problems: list[str] = []
        values = check_values(type(self), self, self.path_prefix, problems)
        if problems or values is None:
            raise ConfigError.of(problems)
        for name, value in values.items():  # e.g. a list given for a tuple field becomes a tuple
            object.__setattr__(self, name, value)

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        """Problems with the (type-checked) values `v`, each `field: message`."""
        return []

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        """The mapping a non-mapping value stands for (e.g. a path string for a dataset); as is by default."""
        return value

    @classmethod
    def unknown_key(cls, key: str, names: Sequence[str]) -> str:
        """The problem reported for key `key`, which is not a field."""
        return "unknown key" + _suggest(key, names)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict (tuples as lists) that `from_dict` reads back."""
        return _plain(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Any) -> C:
        """An instance from a plain mapping (YAML); ConfigError lists every problem with its field
        path, one a line under the class's `title`."""
        problems: list[str] = []
        config = build(cls, data, cls.path_prefix, problems)
        if problems or config is None:
            raise ConfigError.of(problems, cls.title)
        return config

    @classmethod
    def load(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
        """From a YAML file (or {} when `path` is None) plus dotted KEY=VALUE overrides."""
        data = read_yaml_mapping(path) if path is not None else {}
        return cls.from_dict(apply_overrides(data, overrides))


def one_or_many(default: tuple[Any, ...] = ()) -> Any:
    """A tuple field that also takes a single value (`stop: "\\n"` means `("\\n",)`)."""
    return field(default=default, metadata={ONE_OR_MANY: True})


def field_values(config: Any) -> dict[str, Any]:
    """The field values of a dataclass instance, not recursing into nested ones."""
    return {f.name: getattr(config, f.name) for f in fields(config)}


# --------------------------------------------------------------------------------------------
# shared checks: each appends `name: message` to `problems`; None values are skipped


def check_min(
    problems: list[str], name: str, value: float | None, low: float, *, strict: bool = False, note: str = ""
) -> None:
    """`name: must be >= low` (`> low` when `strict`) unless `value` is None or is."""
    if value is not None and (value <= low if strict else value < low):
        problems.append(f"{name}: must be {'>' if strict else '>='} {low}{note}, got {value!r}")


def check_range(
    problems: list[str], name: str, value: float | None, low: float, high: float, bounds: str = "[]", note: str = ""
) -> None:
    """`name: must be in [low, high]`; `bounds` "[)", "(]" or "()" leaves an end open."""
    if value is None:
        return
    above = value > low if bounds[0] == "(" else value >= low
    below = value < high if bounds[1] == ")" else value <= high
    if not (above and below):
        problems.append(f"{name}: must be in {bounds[0]}{low}, {high}{bounds[1]}{note}, got {value!r}")


def check_choice(problems: list[str], name: str, value: Any, choices: Sequence[Any]) -> None:
    """`name: 'x' is not one of [...]` unless `value` is one of `choices` (or None)."""
    if value is not None and value not in choices:
        problems.append(f"{name}: {value!r} is not one of {list(choices)}")


# --------------------------------------------------------------------------------------------
# mapping -> dataclass, collecting every problem


def build(cls: type[C], data: Any, path: str, problems: list[str]) -> C | None:
    """`cls` checked from `data` (a mapping or an instance) at field path `path`; problems appended
    as `path: message`; the instance, or None after problems. Nothing is validated twice."""
    values = check_values(cls, data, path, problems)
    if values is None:
        return None
    config = cls.__new__(cls)
    for name, value in values.items():
        object.__setattr__(config, name, value)
    return config


def check_values(cls: type[Config], data: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    """Field values of `cls` coerced from `data` and checked, or None after problems."""
    data = _as_mapping(cls, data, path, problems)
    if data is None:
        return None
    n_before = len(problems)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    problems += [f"{_join(path, str(k))}: {cls.unknown_key(str(k), names)}" for k in data if k not in names]
    values, failed = _field_values(cls, data, path, problems)
    problems += [_join(path, p) for p in cls.check(values) if not _about(p, failed)]
    return None if len(problems) > n_before else values


def _as_mapping(cls: type, data: Any, path: str, problems: list[str]) -> Mapping[str, Any] | None:
    if isinstance(data, Config):
        return field_values(data)
    if isinstance(data, Mapping):
        return data
    problems.append(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    return None


def _field_values(
    cls: type, data: Mapping[str, Any], path: str, problems: list[str]
) -> tuple[dict[str, Any], set[str]]:
    """(value per field, names of the fields that failed: left at their default, or None)."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    failed: set[str] = set()
    for f in fields(cls):
        n = len(problems)
        values[f.name] = _field_value(f, hints[f.name], data, _join(path, f.name), problems)
        if len(problems) > n:  # the class's check sees this one at its default
            failed.add(f.name)
            values[f.name] = _default(f)
    return values, failed


def _field_value(f: Field, tp: Any, data: Mapping[str, Any], path: str, problems: list[str]) -> Any:
    if f.name not in data:
        if f.default is MISSING and f.default_factory is MISSING:
            problems.append(f"{path}: required")
        return _default(f)
    value = data[f.name]
    if f.metadata.get(ONE_OR_MANY) and not isinstance(value, (list, tuple)):
        value = (value,)
    return _coerce(tp, value, path, problems)


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return None if f.default_factory is MISSING else f.default_factory()


def _about(problem: str, names: set[str]) -> bool:
    """Whether a check's problem (`field: ...`, `field.sub: ...`) is about one of the fields `names`."""
    return any(problem.startswith((f"{n}:", f"{n}.", f"{n}[")) for n in names)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# Names people bring from other trainers, mapped to ours (for "did you mean" hints).
_ALIASES = {
    "lr": "learning_rate",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "model_name_or_path": "model",
    "bf16": "precision",
    "warmup": "warmup_ratio",
    "gradient_accumulation": "gradient_accumulation_steps",
    "max_seq_length": "max_length",
}


def _suggest(key: str, names: Sequence[str]) -> str:
    alias = _ALIASES.get(key)
    close = [alias] if alias in names else difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------
# coercion of one value to a field type


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """`value` converted to type `tp` (YAML scalars, lists, nested mappings) or a problem noted."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _union(tp, value, path, problems)
    if isinstance(tp, type) and issubclass(tp, Config):
        return _nested(tp, value, path, problems)
    if origin is tuple:
        return _tuple(tp, value, path, problems)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return _mapping(tp, value, path, problems)
    if tp is Any:
        return value
    return _scalar(tp, value, path, problems)


def _union(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """The first member of union `tp` that `value` fits, else one problem."""
    members = [a for a in get_args(tp) if a is not type(None)]
    if value is None and len(members) < len(get_args(tp)):
        return None
    if len(members) == 1:
        return _coerce(members[0], value, path, problems)
    for member in members:
        trial: list[str] = []
        out = _coerce(member, value, path, trial)
        if not trial:
            return out
    problems.append(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    return None


def _nested(tp: type[Config], value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, tp):  # built, hence already valid
        return value
    return build(tp, {} if value is None else tp.shorthand(value), path, problems)


def _tuple(tp: Any, value: Any, path: str, problems: list[str]) -> tuple[Any, ...] | None:
    """A tuple of coerced items; a list of scalars that do not fit is one problem at `path`, items
    that are configs are reported at their own paths (`datasets[1].weight`)."""
    args = get_args(tp)
    if not isinstance(value, (list, tuple)):
        problems.append(f"{path}: expected a list, got {_describe(value)}")
        return None
    item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
    if len(value) != len(item_types):
        problems.append(f"{path}: expected {len(args)} values, got {len(value)}")
        return None
    trial: list[str] = []
    items = tuple(_coerce(t, x, _join(path, i), trial) for i, (t, x) in enumerate(zip(item_types, value)))
    if trial and all(t in _SCALARS for t in item_types):
        trial = [f"{path}: expected {_type_name(tp)}, got {_describe(value)}"]
    problems += trial
    return items


def _mapping(tp: Any, value: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        problems.append(f"{path}: expected a mapping, got {_describe(value)}")
        return None
    key_tp, value_tp = get_args(tp) or (str, Any)
    return {
        _coerce(key_tp, k, path, problems): _coerce(value_tp, v, _join(path, str(k)), problems)
        for k, v in value.items()
    }


def _scalar(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if tp not in _SCALARS:  # pragma: no cover - a field type this module does not know
        raise TypeError(f"unsupported config field type {tp!r} at {path}")
    out = _SCALARS[tp](value)
    if out is None:
        problems.append(f"{path}: expected {tp.__name__}, got {_describe(value)}")
    elif isinstance(out, float) and not math.isfinite(out):  # only _as_float (tp is float) returns floats
        problems.append(f"{path}: must be a finite number, got {value!r}")
    return out


def _as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, float) and value.is_integer() else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:  # PyYAML reads `2e-5` (no dot) as a string
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _as_str(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, Path)) else None


_SCALARS = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str}


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "").replace("NoneType", "None")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 40 else text[:37] + '...'}"


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------
# YAML files and KEY=VALUE overrides


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys (`lora.r=16`, `datasets.0.weight=2`) in a copy of `data`; values are YAML."""
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


__all__ = [
    "Config",
    "ConfigError",
    "build",
    "check_values",
    "field_values",
    "one_or_many",
    "check_min_int",
    "check_min",
    "check_range",
    "check_choice",
    "apply_overrides",
    "read_yaml_mapping",
]
