"""A tiny-model server with a small request limit, shared by the hardening tests of `instillm serve`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

LIMIT = 2 * 1024 * 1024  # --max-request-bytes of the test servers
KEY = "sekret"


def _start(model_dir: Path, **options):
    from instillm.serve import create_app, start_in_thread

    app = create_app(model_dir, model_name="tiny", max_request_bytes=LIMIT, batch_wait_ms=5, **options)
    handle = start_in_thread(app)
    return handle, SimpleNamespace(url=handle.base_url, port=handle.port, app=app, stats=app.state.stats)


@pytest.fixture(scope="package")
def limited(tiny_model_dir: Path):
    """A keyless server: .url (the /v1 base), .port, .app, .stats (the engine's counters)."""
    handle, server = _start(tiny_model_dir)
    yield server
    handle.stop()


@pytest.fixture(scope="package")
def keyed_limited(tiny_model_dir: Path):
    """The same with api_key=KEY."""
    handle, server = _start(tiny_model_dir, api_key=KEY)
    yield server
    handle.stop()
