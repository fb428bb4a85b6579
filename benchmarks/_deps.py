"""Optional dependencies of the benchmarks: a missing one stops a benchmark with one line that
names the extra to install, before any work starts (never a ModuleNotFoundError traceback)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# module -> (pip distribution, extra of instillm that installs it)
OPTIONAL = {"trl": ("trl", "bench"), "rouge_score": ("rouge-score", "bench")}


def require(*modules: str) -> None:
    """Exit with status 2 and one line on stderr when one of `modules` cannot be imported."""
    missing = [m for m in modules if _absent(m)]
    if not missing:
        return
    names = ", ".join(OPTIONAL.get(m, (m, "bench"))[0] for m in missing)
    extras = ",".join(sorted({OPTIONAL.get(m, (m, "bench"))[1] for m in missing}))
    script = Path(sys.argv[0]).name or "this benchmark"
    print(f'{script} needs {names}, which is not installed: pip install -e ".[{extras}]"', file=sys.stderr)
    raise SystemExit(2)


def _absent(module: str) -> bool:
    if sys.modules.get(module, False) is None:  # blocked (as tests do to simulate a missing package)
        return True
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True
