"""`instillm export --gguf`: a run (its final model, a LoRA adapter merged into its base first) or a
model folder as one GGUF file for llama.cpp / Ollama, with the template and stop ids it trained with."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from instillm.models.gguf import check_out_file, export_gguf
from instillm.train.loop import FINAL, export


def export_run_gguf(source: str | Path, out_file: str | Path, outtype: str = "f32") -> dict[str, Any]:
    """GGUF of `source`: a model folder as is; a run's final model or a LoRA adapter merged first."""
    src = Path(source)
    final = src / FINAL if (src / FINAL).is_dir() else src
    if (final / "config.json").is_file() and not (final / "adapter_config.json").is_file():
        return export_gguf(final, out_file, outtype)
    for read in (final, src):  # the real sources: the merged copy below is a temp dir
        check_out_file(read, Path(out_file))
    with tempfile.TemporaryDirectory(prefix="instillm-merge-") as tmp:
        merged = export(src, Path(tmp) / "merged", merge=True)
        return export_gguf(merged, out_file, outtype)
