"""Raw HTTP/1.1 over a socket: send headers (and maybe body chunks), read the status line.

httpx sends a whole body before it reads the answer; these helpers show what a server answers
before the body is read, and stop sending once an answer arrives.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable

JSON = "application/json"


def head(path: str, headers: dict[str, str]) -> bytes:
    """The request line and headers of a POST."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(data: Iterable[bytes]) -> Iterable[bytes]:
    """`data` in chunked transfer encoding, with the last (empty) chunk."""
    for piece in data:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def _answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _send(sock: socket.socket, chunks: Iterable[bytes]) -> None:
    """Send `chunks` until the server answers (or closes)."""
    for chunk in chunks:
        if _answered(sock):
            return
        try:
            sock.sendall(chunk)
        except OSError:
            return


def _status_line(sock: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        try:
            piece = sock.recv(4096)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def status(port: int, request_head: bytes, body: Iterable[bytes] = (), timeout: float = 5.0) -> str:
    """The status line the server answers (socket.timeout when it does not within `timeout` s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request_head)
        _send(sock, body)
        return _status_line(sock)
