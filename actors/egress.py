"""Network for a sandbox, to the allowed hosts only: an HTTP proxy on a Unix socket.

A sandboxed call has its own network namespace with nothing in it but a
loopback. When its agent's config grants hosts (``[agents.*] network =
["pypi.org", "*.github.com:443"]``), fleetlog starts, for that call, an
:class:`EgressProxy` listening on a Unix socket that is bound into the sandbox;
inside, ``_egress_relay`` listens on ``127.0.0.1:3128`` (the sandbox's own
loopback), relays to that socket and sets ``HTTP(S)_PROXY`` for the command.
The proxy accepts ``CONNECT host:port`` (HTTPS and any TCP through a proxy) and
absolute-form HTTP requests (``GET http://host/path``), and only to a host and
port the allow-list names: anything else gets ``403``. So there is no DNS, no
direct connection and no other host; a tool that ignores the proxy variables
reaches nothing at all.

An entry is ``host`` (ports 80 and 443), ``host:port``, or ``*.domain[:port]``
(any name under the domain, not the domain itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["EgressProxy", "allowed", "check_entry", "RELAY_PORT"]

#: Where the relay listens inside the sandbox (its own loopback).
RELAY_PORT = 3128

_ENTRY = re.compile(r"(\*\.)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?")
_MAX_HEAD = 16 * 1024


def check_entry(entry: str) -> str | None:
    """Why ``entry`` is not a valid allow-list entry, or None."""
    m = _ENTRY.fullmatch(entry)
    if m is None:
        return f"must be host, host:port or *.domain[:port], got {entry!r}"
    if m[3] is not None and not 0 < int(m[3]) < 65536:
        return f"port out of range in {entry!r}"
    return None


def allowed(entries: Sequence[str], host: str, port: int) -> bool:
    """Whether ``host:port`` is named by the allow-list (hosts compared without case)."""
    host = host.lower().rstrip(".")
    for entry in entries:
        m = _ENTRY.fullmatch(entry)
        if m is None:
            continue
        wildcard, name, entry_port = bool(m[1]), m[2].lower(), m[3]
        ports = {int(entry_port)} if entry_port else {80, 443}
        if port not in ports:
            continue
        if (wildcard and host.endswith("." + name)) or (not wildcard and host == name):
            return True
    return False


class EgressProxy:
    """One call's proxy: ``async with EgressProxy(hosts) as proxy:`` then bind ``proxy.dir``."""

    def __init__(self, hosts: Sequence[str], *, connect_timeout_s: float = 10.0) -> None:
        self.hosts = list(hosts)
        self.connect_timeout_s = connect_timeout_s
        self.denied: list[str] = []  # host:port asked for and refused, for the record
        self._tmp = tempfile.TemporaryDirectory(prefix="fleetlog-egress-")
        self.dir = Path(self._tmp.name)
        self.socket = self.dir / "egress.sock"
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> EgressProxy:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket))
        # The sandbox's uid must reach the socket: the directory is only traversable.
        os.chmod(self.dir, 0o711)
        os.chmod(self.socket, 0o666)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tmp.cleanup()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD:
            return await _refuse(writer, 431, "request head too large")
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target, _, version = rest.partition(" ")
        if method == "CONNECT":
            host, port = _split_hostport(target, default=443)
            forward = b""
        else:
            m = re.fullmatch(r"http://([^/?#]+)([^ ]*)", target)
            if m is None:
                return await _refuse(writer, 400, "only CONNECT and absolute http:// requests")
            host, port = _split_hostport(m[1], default=80)
            path = m[2] or "/"
            kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith("proxy-")]
            forward = (f"{method} {path} {version}\r\n" + "\r\n".join(kept) + "\r\n\r\n").encode(
                "latin-1"
            )
        if not allowed(self.hosts, host, port):
            self.denied.append(f"{host}:{port}")
            return await _refuse(writer, 403, f"{host}:{port} is not in this agent's network")
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as e:
            return await _refuse(writer, 502, f"cannot reach {host}:{port}: {e}")
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            up_writer.write(forward)
            await up_writer.drain()
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            with contextlib.suppress(Exception):
                up_writer.close()


def _split_hostport(text: str, *, default: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return text, default


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _refuse(writer: asyncio.StreamWriter, status: int, why: str) -> None:
    body = (why + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} Refused\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(Exception):
        await writer.drain()
