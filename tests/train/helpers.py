"""Small procedurally generated instruction data that a tiny model learns in a few dozen steps."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

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


def varlen_stand_in(new_signature: bool, calls: list):
    """A CPU stand-in for torch.nn.attention.varlen.varlen_attn, recording how it was called."""

    def attend(query, key, value, starts, longest, causal, scale, gqa):
        assert starts.dtype == torch.int32 and int(starts[-1]) == query.shape[0]
        sizes = starts.diff().tolist()
        assert longest == max(sizes)
        if key.shape[1] != query.shape[1]:
            assert gqa, "grouped heads passed without enable_gqa"
        pieces = [
            F.scaled_dot_product_attention(
                a.transpose(0, 1).double(), b.transpose(0, 1).double(), c.transpose(0, 1).double(),
                is_causal=causal, scale=scale, enable_gqa=gqa,
            ).transpose(0, 1).to(query.dtype)
            for a, b, c in zip(query.split(sizes), key.split(sizes), value.split(sizes))
        ]  # fmt: skip
        return torch.cat(pieces)

    if new_signature:

        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                        window_size=(-1, -1), enable_gqa=False):  # fmt: skip
            calls.append({"window_size": window_size, "enable_gqa": enable_gqa, "scale": scale})
            assert torch.equal(cu_seq_q, cu_seq_k) and max_q == max_k
            return attend(query, key, value, cu_seq_q, max_q, window_size == (-1, 0), scale, enable_gqa)

        return varlen_attn

    def varlen_attn_old(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append({"is_causal": is_causal, "heads": (query.shape[1], key.shape[1])})
        return attend(query, key, value, cu_seq_q, max_q, is_causal, None, False)

    return varlen_attn_old
