"""Load models and tokenizers: thin wrappers over `AutoModelForCausalLM` / `AutoTokenizer`.

What they add: safetensors only and never remote code, a clear ModelError (with the command that
makes a model) for a path that does not exist, a fast tokenizer guaranteed (instillm's label
masks need character offsets), and a pad token always set.

`load_local(path, template, device)` is the one way every command that runs a local model (eval,
run, serve, the local teacher backend, IFD scoring, the lm-eval adapter) gets it: model (a LoRA
adapter folder is applied to its base, found by `adapter_base`), tokenizer and the renderer of the
saved chat template, on the device `resolve_device` picks ("auto": CUDA when available).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from instillm.errors import ConfigError, ModelError, check_min_int

logger = logging.getLogger(__name__)

# A Hugging Face hub id "org/name" (letters, digits, - _ .); anything else is a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
ADAPTER_CONFIG = "adapter_config.json"
RUN_FILE = "run.json"  # a training run's manifest (instillm.train.loop), beside the run's final/ adapter


def _resolve(path_or_id: str | Path) -> str:
    """The local directory as a string, or a hub id; ModelError for a missing local path."""
    s = str(path_or_id)
    if not s:
        raise ModelError("model path is empty; create one with `instillm model init --preset tiny -o DIR`")
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"model path {s} is not a directory (expected a saved model directory)")
        return str(p)
    # "org/name" is a hub id unless `org` is a local directory (then it is a mistyped path).
    if isinstance(path_or_id, Path) or not _HUB_ID.match(s) or p.parent.is_dir():
        raise ModelError(f"model path {s} does not exist; create one with `instillm model init --preset tiny -o {s}`")
    return s  # a hub id: transformers fetches it (or fails with its own message offline)


def _hint(src: str) -> str:
    if Path(src).is_dir():
        return ""
    return (
        f" ({src} is not a local directory, so it was looked up on the Hugging Face hub; to use a "
        f"local model create one with `instillm model init --preset tiny -o {src}`)"
    )


def load_tokenizer(path_or_id: str | Path):
    """A fast tokenizer from a directory or hub id, with a pad token (EOS if it had none)."""
    from transformers import AutoTokenizer

    src = _resolve(path_or_id)
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {src}: {e}{_hint(src)}") from e
    if not getattr(tok, "is_fast", False):
        raise ModelError(
            f"the tokenizer of {src} is not a fast (Rust) tokenizer ({type(tok).__name__}); instillm needs "
            "one for character offsets; save it with a tokenizer.json"
        )
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"the tokenizer of {src} has neither a pad nor an EOS token; set pad_token")
        tok.pad_token = tok.eos_token
        logger.info("tokenizer of %s has no pad token; using its EOS token %r as pad", src, tok.eos_token)
    return tok


def load_model(
    path_or_id: str | Path,
    dtype: torch.dtype | None = None,
    device: str | None = None,
    attn_implementation: str | None = None,
):
    """A causal LM from a directory or hub id (safetensors only, no remote code), in eval mode.

    `dtype` None keeps the checkpoint's saved dtype; `device` None leaves it on the CPU.
    """
    from transformers import AutoModelForCausalLM

    src = _resolve(path_or_id)
    kwargs: dict = {
        "use_safetensors": True,
        "trust_remote_code": False,
        "dtype": dtype if dtype is not None else "auto",
    }
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        # Typed as a Module: transformers' `@wraps(nn.Module.to)` hides `PreTrainedModel.to`'s self from mypy.
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a model from {src}: {e}{_hint(src)}") from e
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, each shared tensor (tied embeddings) counted once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already de-duplicates shared tensors
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads for torch's operators (None: leave torch's default, one per core)."""
    if threads is None:
        return
    problems: list[str] = []
    check_min_int(problems, "threads", threads)
    if problems:
        raise ConfigError.of(problems)
    torch.set_num_threads(threads)


def resolve_device(device: str | None = "auto") -> str:
    """ "auto" (or None) → "cuda" when a CUDA device is available, else "cpu"; other names unchanged."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ModelError(f"device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r}: no CUDA device is available here; use --device cpu or auto")
    return device


@dataclass
class LocalModel:
    """A loaded model with its tokenizer and the renderer of its chat template (for inference)."""

    model: Any
    tokenizer: Any
    renderer: Any
    path: str
    template: str = "auto"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fresh_tokenizer(self) -> tuple[Any, Any]:
        """A second (tokenizer, renderer) from the same files: tokenizers are not shared across threads."""
        tok = load_tokenizer(self.path)
        return tok, inference_renderer(tok, self.template)


def inference_renderer(tokenizer: Any, template: str = "auto") -> Any:
    """The renderer inference uses: the training template, no length limit (generation caps length)."""
    from instillm.data.render import RenderConfig, Renderer

    return Renderer(tokenizer, RenderConfig(template=template, max_length=1 << 30))


def load_local(
    path: str | Path, template: str = "auto", device: str | None = "auto", dtype: torch.dtype | None = None
) -> LocalModel:
    """Model + tokenizer + renderer from a model directory, a LoRA adapter directory or a hub id."""
    target = resolve_device(device)
    tok = load_tokenizer(path)
    model = _load_any(path, dtype, target)
    return LocalModel(model, tok, inference_renderer(tok, template), str(path), template)


def _load_any(path: str | Path, dtype: torch.dtype | None, device: str) -> Any:
    """A full model, or a LoRA adapter applied to its base (peft), in eval mode on `device`."""
    adapter = Path(path)
    if not (adapter / ADAPTER_CONFIG).is_file():
        return load_model(path, dtype=dtype, device=device)
    from peft import PeftModel

    base = load_model(adapter_base(adapter), dtype=dtype, device=device)
    try:
        model = PeftModel.from_pretrained(base, str(adapter))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the LoRA adapter in {adapter}: {e}") from e
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# the base model of a LoRA adapter


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model of the LoRA adapter in `adapter_dir`: a local directory or a hub id.

    Named by the run's run.json (config.model), else by adapter_config.json; an absolute path is
    taken first, a relative one is looked up against the run dir, then the current directory."""
    adapter = Path(adapter_dir)
    run_dir, names = _base_names(adapter)
    for candidate in _base_paths(names, run_dir):
        if (candidate / "config.json").is_file():
            return str(candidate)
    hub = [n for n in names if _HUB_ID.match(n) and not Path(n).expanduser().is_absolute()]
    if hub:
        return hub[0]
    raise ModelError(
        f"the base model of the LoRA adapter in {adapter} ({', '.join(names) or 'not recorded'}) is not found; "
        f"set base_model_name_or_path in {adapter / ADAPTER_CONFIG} to its directory"
    )


def _base_names(adapter: Path) -> tuple[Path, list[str]]:
    """(the run dir, the base model names recorded for `adapter`: run.json's first, then peft's)."""
    adapter = adapter.resolve()
    run_dir = adapter.parent if adapter.name == "final" else adapter  # a run's adapter is its final/
    names = [
        _json_at(run_dir / RUN_FILE, "config", "model"),
        _json_at(adapter / ADAPTER_CONFIG, "base_model_name_or_path"),
    ]
    return run_dir, list(dict.fromkeys(n for n in names if n))


def _base_paths(names: list[str], run_dir: Path) -> list[Path]:
    """Where the named base may be: absolute paths first, then relative ones under `run_dir`, then the cwd."""
    paths = [Path(n).expanduser() for n in names]
    absolute = [p for p in paths if p.is_absolute()]
    relative = [p for p in paths if not p.is_absolute()]
    return absolute + [run_dir / p for p in relative] + [Path.cwd() / p for p in relative]


def _json_at(path: Path, *keys: str) -> str | None:
    """The string at `keys` in JSON file `path`, or None when the file or the value is missing."""
    try:
        value: Any = json.loads(path.read_text(encoding="utf-8"))
        for key in keys:
            value = value[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None
