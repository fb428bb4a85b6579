"""Checkpoints that resume a run exactly: weights, optimizer, scheduler, RNG and data position.

Layout of `output_dir/checkpoints/step-N/` (N = optimizer steps done):

- `trainable.safetensors` — every trainable parameter by name (all weights for full fine-tuning,
  the LoRA adapter only for LoRA; frozen base weights come from the model path),
- `optimizer.pt`, `scheduler.pt` — their `state_dict()`s,
- `rng-rank{R}.pt` — python, numpy and torch (CPU and CUDA) RNG states of process R,
- `state.json` — step, epoch, step within the epoch, trained tokens, last loss, plan, data hash,
  and the settings a resume must keep (`loop.resume_settings`) with their sha256,
- `manifest.json` — written last: the size and sha256 of every other file.

The data position is the step: the batch order of an epoch is a pure function of seed and
epoch (`batching.epoch_micro_batches`), so a resumed run rebuilds it and skips the first
`step_in_epoch` steps.

Durability: a checkpoint is written into `.tmp-step-N`; every file is fsync'd, then the manifest
is written (and fsync'd) last, then the directory is fsync'd, renamed to `step-N`, and the parent
fsync'd. A checkpoint counts only when its manifest verifies (`verify_checkpoint`): resuming takes
the newest one that does (`newest_complete`), moves newer incomplete ones aside to
`.incomplete-step-N` and says so in the log. Checkpoints of instillm versions that wrote no
manifest are used, with a warning, when every file loads; else they count as incomplete.
Verifying reads the whole checkpoint once (to hash it); so does writing its manifest.

The output dir is held by one run at a time: `OutputLock`, an exclusive `flock` on
`output_dir/.instillm.lock` holding the owner's pid. The OS drops it when the process dies
(SIGKILL included), so no stale lock survives a crash.

Loading uses `torch.load(weights_only=True)`: everything saved here is tensors and plain
Python containers/scalars (numpy's RNG key is stored as a tensor for that reason).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
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

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
MANIFEST = "manifest.json"
TRAINABLE = "trainable.safetensors"
LOCK_FILE = ".instillm.lock"
_REQUIRED = (TRAINABLE, "optimizer.pt", "scheduler.pt", STATE_FILE)
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint after optimizer step `step` lives."""
    return Path(output_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Checkpoint directories (`step-N` with a state file or manifest) as (step, path), oldest first.

    Not verified: see `newest_complete` for the one to resume from."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and ((p / STATE_FILE).is_file() or (p / MANIFEST).is_file()):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint directory (not verified), or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def newest_complete(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies; newer incomplete ones are moved aside. Each step is logged."""
    skipped = False
    for _, path in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            if skipped:
                logger.warning("resuming from %s, the newest complete checkpoint", path.name)
            return path
        logger.warning(
            "checkpoint %s is incomplete (%s); moved aside to %s", path.name, problem, _move_aside(path).name
        )
        skipped = True
    if skipped:
        logger.warning("no complete checkpoint in %s: training starts from step 0", Path(output_dir) / CHECKPOINTS)
    return None


def _move_aside(path: Path) -> Path:
    """Rename an incomplete `step-N` to `.incomplete-step-N` (replacing an older one of that name)."""
    aside = path.with_name(f".incomplete-{path.name}")
    shutil.rmtree(aside, ignore_errors=True)
    path.rename(aside)
    return aside


# --------------------------------------------------------------------------------------------
# verification


def verify_checkpoint(path: str | Path) -> str | None:
    """None when checkpoint `path` is complete, else what is wrong with it (the first problem found)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return _legacy_problem(path)
    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
        missing = [name for name in _REQUIRED if name not in files]
        if missing:
            return f"{MANIFEST} does not list {', '.join(missing)}"
        for name, entry in sorted(files.items()):
            problem = _file_problem(path / name, entry)
            if problem is not None:
                return problem
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    return None


def _file_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """What differs between file `path` and its manifest entry ({bytes, sha256}), or None."""
    try:
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{path.name}: {size} bytes, the manifest says {entry['bytes']}"
        if sha256_file(path) != entry["sha256"]:
            return f"{path.name}: contents differ from the manifest (sha256)"
    except OSError as e:
        return f"{path.name}: {e.strerror or e}"
    return None


def _legacy_problem(path: Path) -> str | None:
    """A checkpoint without a manifest (older instillm): None, with a warning, when every file loads."""
    rng = sorted(p.name for p in path.glob("rng-rank*.pt"))
    for name in [STATE_FILE, TRAINABLE, "optimizer.pt", "scheduler.pt", *rng]:
        try:
            _load_any(path / name)
        except Exception as e:  # noqa: BLE001 - torch/safetensors raise many types for a torn file
            return f"no {MANIFEST}, and {name} does not load ({type(e).__name__})"
    logger.warning(
        "checkpoint %s has no manifest (written by an older instillm); every file loads, so it is used", path
    )
    return None


def _load_any(path: Path) -> None:
    """Load a checkpoint file by its kind, to see that it is whole."""
    if path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".safetensors":
        load_file(str(path))
    else:
        torch.load(path, map_location="cpu", weights_only=True)


def manifest_of(directory: Path) -> dict[str, Any]:
    """The manifest of the files in `directory` (but the manifest itself): size and sha256 of each."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    return {"format": 1, "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}}


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    np_state: Any = np.random.get_state()  # numpy's stubs say tuple | dict; the legacy tuple it is
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
    _durable(lambda p: torch.save(rng_state(), p), tmp / f"rng-rank{rank}.pt")
    _barrier(accelerator)
    if main:
        _write_files(tmp, model, optimizer, scheduler, state)
        _publish(tmp, final)
    _barrier(accelerator)
    return final


def _write_files(
    tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]
) -> None:
    """The main process's files, each fsync'd, then the manifest of them all (rng files too) last."""
    _durable(lambda p: save_file(trainable_state(model), str(p)), tmp / TRAINABLE)
    _durable(lambda p: torch.save(optimizer.state_dict(), p), tmp / "optimizer.pt")
    _durable(lambda p: torch.save(scheduler.state_dict(), p), tmp / "scheduler.pt")
    _durable(lambda p: p.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8"), tmp / STATE_FILE)
    _durable(lambda p: p.write_text(json.dumps(manifest_of(tmp), indent=1) + "\n", encoding="utf-8"), tmp / MANIFEST)


def _publish(tmp: Path, final: Path) -> None:
    """fsync the finished tmp dir, rename it to `final`, fsync the parents (checkpoints/, output dir)."""
    fsync_path(tmp)
    if final.exists():  # a stale copy of the same step (a resumed run redoing it)
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_path(final.parent)
    fsync_path(final.parent.parent)


def _durable(write: Any, path: Path) -> None:
    """`write(path)`, then fsync the file."""
    write(path)
    fsync_path(path)


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG; returns the saved state dict."""
    path = Path(path)
    load_trainable_state(model, load_file(str(path / TRAINABLE)))
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


# --------------------------------------------------------------------------------------------
# one run per output dir


class OutputLock:
    """An exclusive `flock` on `directory/.instillm.lock`, which holds the owner's pid.

    Released by `release()` or by the OS when the process dies; `acquire()` again is a no-op."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Take the lock now, or ConfigError naming the pid of the run that holds it."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"output_dir: {self.directory} is in use by another training run (pid {holder}, "
                f"lock {self.path}); wait for it to end, or use another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; it is only a lock)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
