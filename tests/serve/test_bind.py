"""`instillm serve` refuses a network bind without an API key unless told to, and reads INSTILLM_API_KEY."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from instillm.cli import app

pytestmark = pytest.mark.timeout(30)
MISSING = "/nonexistent/model"


@pytest.fixture
def served(monkeypatch) -> list[dict]:
    """`serve` runs for real but loads and binds nothing: create_app and uvicorn.run record their arguments."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr("instillm.serve.app.create_app", lambda model, **kw: calls.append({"model": model, **kw}))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls[-1].update(kw))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5"])
def test_a_network_bind_without_a_key_is_refused(monkeypatch, host):
    monkeypatch.delenv("INSTILLM_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["serve", MISSING, "--host", host])
    assert res.exit_code == 1, res.output
    assert "--allow-remote-without-key" in res.output and "--api-key" in res.output
    assert "nonexistent" not in res.output  # refused before loading anything


def test_the_refusal_holds_for_the_library_call_too(monkeypatch):
    from instillm.errors import ConfigError
    from instillm.serve.run import serve

    with pytest.raises(ConfigError, match="allow_remote_without_key"):
        serve(MISSING, host="0.0.0.0")


def test_allow_remote_without_key_warns_loudly(monkeypatch, served):
    monkeypatch.delenv("INSTILLM_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["serve", MISSING, "--host", "0.0.0.0", "--allow-remote-without-key"])
    assert res.exit_code == 0, res.output
    assert "WARNING" in res.output and "0.0.0.0" in res.output and "without an API key" in res.output
    assert served[0]["host"] == "0.0.0.0" and served[0]["api_key"] is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_no_key(monkeypatch, served, host):
    monkeypatch.delenv("INSTILLM_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["serve", MISSING, "--host", host])
    assert res.exit_code == 0 and "WARNING" not in res.output, res.output
    assert served[0]["api_key"] is None


def test_the_key_comes_from_instillm_api_key(monkeypatch, served):
    monkeypatch.setenv("INSTILLM_API_KEY", "from-env")
    res = CliRunner().invoke(app, ["serve", MISSING, "--host", "0.0.0.0"])
    assert res.exit_code == 0 and "WARNING" not in res.output, res.output
    assert served[0]["api_key"] == "from-env"
    res = CliRunner().invoke(app, ["serve", MISSING, "--api-key", "flag"])
    assert served[1]["api_key"] == "flag"  # --api-key wins


def test_limits_reach_the_server(monkeypatch, served):
    monkeypatch.delenv("INSTILLM_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["serve", MISSING, "--max-request-bytes", "1000", "--max-rows", "7"])
    assert res.exit_code == 0, res.output
    assert served[0]["max_request_bytes"] == 1000 and served[0]["max_rows"] == 7


def test_threads_are_set_before_the_model_loads_and_checked(served):
    import threading

    import torch

    before = torch.get_num_threads()
    seen: list[int] = []
    try:
        res = CliRunner().invoke(app, ["serve", MISSING, "--threads", "1"])
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 1 and served[0]["model"] == MISSING
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # the engine's decode thread
        worker.start()
        worker.join()
        assert seen == [1]
    finally:
        torch.set_num_threads(before)
    bad = CliRunner().invoke(app, ["serve", MISSING, "--threads", "0"])
    assert bad.exit_code == 1 and "threads: must be an integer >= 1" in bad.output
    assert len(served) == 1  # refused before loading anything
