"""The package's shape: no import cycle between top-level subpackages, no reaching into another
subpackage's private names, and the public API pinned. Imports are read from the source (AST),
function-level (lazy) imports included, so a cycle hidden inside a function still fails."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import instillm

PACKAGE = Path(instillm.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every instillm import in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("instillm")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("instillm"):
            found += [(node.module or "", a.name, node.lineno) for a in node.names]
    return found


def _top(module: str) -> str:
    """The top-level unit: `instillm.data.render` -> `data`; `instillm.errors` -> `errors`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _all_imports() -> list[tuple[str, str, str, int]]:
    """(importing module, imported module, name, line) across the package."""
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rows += [(_module_name(path), mod, name, line) for mod, name, line in _imports(path)]
    return rows


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, mod, _, _ in _all_imports():
        a, b = _top(src), _top(mod)
        if a and b and a != b:
            graph[a].add(b)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_subpackages():
    graph = _graph()
    cycles = _cycles(graph)
    detail = [
        f"{' <-> '.join(c)}: " + "; ".join(f"{a}->{b}" for a in c for b in sorted(graph[a]) if b in c) for c in cycles
    ]
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(detail)


def test_no_import_of_another_subpackages_private_names():
    bad = []
    for src, mod, name, line in _all_imports():
        if _top(src) == _top(mod):
            continue
        private_module = any(p.startswith("_") and p != "__init__" for p in mod.split("."))
        if private_module or (name.startswith("_") and name != "__version__"):
            bad.append(f"{src}:{line} imports {mod}.{name}" if name else f"{src}:{line} imports {mod}")
    assert not bad, "private names used across subpackages:\n" + "\n".join(bad)


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


PUBLIC_API = [
    "BackendConfig",
    "ConfigError",
    "DataError",
    "Example",
    "GenerateOptions",
    "Generator",
    "InstillmError",
    "LLMRequest",
    "LocalModel",
    "Message",
    "ModelError",
    "RenderConfig",
    "Renderer",
    "RunConfig",
    "SamplingParams",
    "TrainConfig",
    "create_app",
    "export",
    "import_files",
    "init_model",
    "load_config",
    "load_local",
    "load_run_config",
    "make_backend",
    "read_examples",
    "reply_text",
    "run",
    "serve",
    "train",
    "write_examples",
    "__version__",
]


def test_public_api_is_pinned_and_every_name_resolves():
    assert instillm.__all__ == PUBLIC_API, "the public API changed: update PUBLIC_API (and the README) on purpose"
    for name in instillm.__all__:
        assert getattr(instillm, name) is not None, name


def test_import_instillm_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, instillm; instillm.Example; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
