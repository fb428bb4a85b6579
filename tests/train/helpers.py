"""Small procedurally generated instruction data that a tiny model learns in a few dozen steps."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from instillm.data.schema import Example, from_prompt_completion

TASKS = {
    "reverse": ("Reverse the word {w}", lambda w: w[::-1]),
    "upper": ("Uppercase the word {w}", lambda w: w.upper()),
    "double": ("Repeat the word {w} twice", lambda w: f"{w} {w}"),
}


def make_examples(n: int, task: str = "reverse", seed: int = 0) -> list[Example]:
    """`n` examples like "Reverse the word abc" → "cba" (task-labelled, distinct ids)."""
    rng = random.Random(f"{task}-{seed}")
    prompt, answer = TASKS[task]
    out = []
    for i in range(n):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        out.append(from_prompt_completion(prompt.format(w=w), answer(w), id=f"{task}-{seed}-{i}", task=task))
    return out


def write_jsonl(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(ex.to_json() + "\n" for ex in examples), encoding="utf-8")
    return path


def base_config(model_dir: Path, data: Path | list, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A small fast config dict (fp32, no eval, no checkpoints unless overridden)."""
    datasets = [{"path": str(p)} for p in data] if isinstance(data, list) else [{"path": str(data)}]
    cfg: dict[str, Any] = {
        "model": str(model_dir),
        "datasets": datasets,
        "output_dir": str(output_dir),
        "max_length": 64,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler": "constant",
        "max_steps": 6,
        "logging_interval": 1,
        "seed": 0,
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
