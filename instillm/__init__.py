"""instillm: instruction fine-tuning of language models, end to end.

The public API is this module's `__all__` (pinned by tests/test_structure.py). Names load lazily,
so `import instillm` stays cheap (no torch until a model-facing name is used).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "Example": "instillm.data.schema",
    "Message": "instillm.data.schema",
    "import_files": "instillm.data.importer",
    "read_examples": "instillm.data.importer",
    "write_examples": "instillm.data.importer",
    "RenderConfig": "instillm.data.render",
    "Renderer": "instillm.data.render",
    # models
    "init_model": "instillm.models.factory",
    "load_local": "instillm.models.loading",
    "LocalModel": "instillm.models.loading",
    # talking to models
    "BackendConfig": "instillm.llm.backend",
    "LLMRequest": "instillm.llm.backend",
    "SamplingParams": "instillm.llm.backend",
    "make_backend": "instillm.llm.backend",
    "reply_text": "instillm.llm.backend",
    "GenerateOptions": "instillm.llm.generation",
    "Generator": "instillm.llm.generation",
    # training and the loop
    "TrainConfig": "instillm.train.config",
    "load_config": "instillm.train.config",
    "train": "instillm.train.loop",
    "export": "instillm.train.loop",
    "RunConfig": "instillm.run",
    "load_run_config": "instillm.run",
    "run": "instillm.run",
    # serving
    "create_app": "instillm.serve.app",
    "serve": "instillm.serve.run",
    # errors
    "InstillmError": "instillm.errors",
    "ConfigError": "instillm.errors",
    "DataError": "instillm.errors",
    "ModelError": "instillm.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'instillm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
