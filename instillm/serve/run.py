"""Run an app: `serve` (uvicorn in the foreground) and `start_in_thread` (tests, benchmarks)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instillm.errors import ConfigError, InstillmError

logger = logging.getLogger(__name__)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a network interface


def check_bind(host: str, api_key: str | None, allow_remote_without_key: bool = False) -> str | None:
    """The warning to show for an open network bind (None: loopback, or a key is required).

    Raises ConfigError for a non-loopback `host` without a key unless `allow_remote_without_key`.
    """
    if api_key or is_loopback(host):
        return None
    if not allow_remote_without_key:
        raise ConfigError(
            f"--host {host} would expose the server to the network without an API key: set --api-key "
            "(or INSTILLM_API_KEY), or pass --allow-remote-without-key (allow_remote_without_key=True) "
            "to serve it open anyway"
        )
    return (
        f"WARNING: serving on {host} without an API key: anyone who can reach this machine can use the model "
        "(and its compute). Set --api-key or INSTILLM_API_KEY to require a key."
    )


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    log_level: str = "info",
    announce: Callable[[str], None] | None = None,
    allow_remote_without_key: bool = False,
    warn: Callable[[str], None] | None = None,
    threads: int | None = None,
    **app_options: Any,
) -> None:
    """Serve `model` with uvicorn until interrupted; `app_options` go to `create_app`; `threads`: torch's
    CPU threads (`set_threads`), set before the model loads.

    A non-loopback `host` without `api_key` is refused (ConfigError, before anything is loaded)
    unless `allow_remote_without_key`; then `warn(message)` (default: logging) says so.
    `announce(base_url)` is called once the model is loaded, just before the server starts.
    """
    warning = check_bind(host, api_key, allow_remote_without_key)
    if threads is not None:
        from instillm.models.loading import set_threads

        set_threads(threads)
    if warning is not None:
        (warn or logger.warning)(warning)
    import uvicorn

    from instillm.serve.app import create_app

    app = create_app(model, api_key=api_key, **app_options)
    if announce is not None:
        announce(f"http://{_url_host(host)}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@dataclass
class ServerHandle:
    """A server running in a daemon thread; `stop()` shuts it down (engine included)."""

    server: Any  # uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://{_url_host(self.host)}:{self.port}/v1"

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0, log_level: str = "warning"
) -> ServerHandle:
    """Start uvicorn serving `app` in a daemon thread and return once it accepts connections.

    `port` 0 picks a free port (the socket is bound here, so the port is known before start).
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="instillm-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise InstillmError(f"the server on {host}:{sock.getsockname()[1]} exited during startup (see the log)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise InstillmError(f"the server on {host}:{sock.getsockname()[1]} did not start within {timeout:.0f} s")
        time.sleep(0.01)
    return ServerHandle(server, thread, host, sock.getsockname()[1])
