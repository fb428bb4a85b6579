"""Benchmarks whose optional dependency is missing stop with one line naming the extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUN_WITHOUT = """
import runpy, sys
sys.modules[{module!r}] = None  # as if the package were not installed
sys.argv = [{script!r}, "--quick"]
sys.path.insert(0, {bench!r})
runpy.run_path({path!r}, run_name="__main__")
"""


@pytest.mark.parametrize("script,module", [("train_throughput.py", "trl"), ("rouge_filter.py", "rouge_score")])
def test_missing_optional_dependency_is_one_line_naming_the_extra(script: str, module: str) -> None:
    path = REPO / "benchmarks" / script
    code = RUN_WITHOUT.format(module=module, script=script, bench=str(path.parent), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"{script} needs ") and 'pip install -e ".[bench]"' in lines[0]
