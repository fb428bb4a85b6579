"""Checkpoints that resume a run exactly: weights, optimizer, scheduler, RNG and data position.

Layout of `output_dir/checkpoints/step-N/` (N = optimizer steps done):

- `trainable.safetensors` — every trainable parameter by name (all weights for full fine-tuning,
  the LoRA adapter only for LoRA; frozen base weights come from the model path),
- `optimizer.pt`, `scheduler.pt` — their `state_dict()`s,
- `rng-rank{R}.pt` — python, numpy and torch (CPU and CUDA) RNG states of process R,
- `state.json` — step, epoch, step within the epoch, trained tokens, last loss, plan.

The data position is the step: the batch order of an epoch is a pure function of seed and
epoch (`batching.epoch_micro_batches`), so a resumed run rebuilds it and skips the first
`step_in_epoch` steps. A checkpoint is written into `.tmp-step-N` and renamed when complete,
so a `step-N` directory is always whole; a run killed mid-save leaves only a tmp dir, ignored.

Loading uses `torch.load(weights_only=True)`: everything saved here is tensors and plain
Python containers/scalars (numpy's RNG key is stored as a tensor for that reason).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from instillm.errors import ConfigError

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint after optimizer step `step` lives."""
    return Path(output_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a state file) as (step, path), oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


# --------------------------------------------------------------------------------------------
# pieces


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, on the CPU (shared tensors appear once)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters into `model` in place; ConfigError when names differ."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = set(params) - set(state), set(state) - set(params)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint does not match the model (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}); was it written with another model or lora setting? "
            "Use a new output_dir or resume: never"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(p.device, p.dtype))


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and every CUDA device)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(_tuples(state["python"]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """random.setstate wants tuples; a round trip may give lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    accelerator: Any = None,
) -> Path:
    """Write `checkpoints/step-{step}` atomically (all processes call this; RNG is per process)."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    main = accelerator is None or accelerator.is_main_process
    rank = 0 if accelerator is None else accelerator.process_index
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(accelerator)
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    _barrier(accelerator)
    if main:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # a stale copy of the same step (a resumed run redoing it)
            shutil.rmtree(final)
        tmp.rename(final)
    _barrier(accelerator)
    return final


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG; returns the saved state dict."""
    path = Path(path)
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise ConfigError(f"{path} has no RNG state for process {rank}: it was written with fewer processes")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep 0 = keep all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _barrier(accelerator: Any) -> None:
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
