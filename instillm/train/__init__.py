"""Training engine: config → data mixture → batches → loss → loop, with checkpoints and resume.

Public API: `load_config(path, overrides)`, `TrainConfig`, `resolve(config, n, world_size) -> Plan`,
`train(config) -> TrainResult`, `export(run_dir, out_dir, merge=True)`. Names are imported lazily
so `python -m instillm.train.loop` does not import the loop module twice.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainConfig": "instillm.train.config",
    "TrainSettings": "instillm.train.config",
    "DatasetSpec": "instillm.train.config",
    "LoraSettings": "instillm.train.config",
    "MixingSettings": "instillm.train.config",
    "Plan": "instillm.train.config",
    "load_config": "instillm.train.config",
    "config_from_dict": "instillm.train.config",
    "resolve": "instillm.train.config",
    "train": "instillm.train.loop",
    "export": "instillm.train.loop",
    "TrainResult": "instillm.train.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'instillm.train' has no attribute {name!r}")
