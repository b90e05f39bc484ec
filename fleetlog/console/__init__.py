"""``fleetlog serve``: the web console and its HTTP API (SPEC §4).

``serve(args)`` is the command (``args``: ``home``, ``config``, ``address``,
``host``, ``port``, optionally ``token``); ``create_app`` builds the ASGI app
for tests and embedding. The token comes from ``--token``,
``FLEETLOG_CONSOLE_TOKEN`` or ``[console] token``; without one the console binds to
loopback only.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fleetlog.events.errors import FleetlogError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["DEFAULT_PORT", "TOKEN_ENV", "create_app", "serve", "is_loopback", "bind"]

DEFAULT_PORT = 8700
TOKEN_ENV = "FLEETLOG_CONSOLE_TOKEN"


def create_app(
    home: Path, config_path: str | None, token: str | None, address: str | None = None
) -> FastAPI:
    """The console's app over the fleet home ``home`` (see ``fleetlog.console.app``)."""
    from .app import create_app as _create

    return _create(home, config_path, token, address)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``: the addresses served without a token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; an OSError (one line) if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError as e:
        sock.close()
        raise FleetlogError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(args: argparse.Namespace) -> int:
    """Run the console until interrupted. Raises FleetlogError (one line) if it cannot start."""
    import uvicorn

    from fleetlog import cli

    home = cli._home(args).resolve()
    settings = cli._config(args).console  # --host/--port/--token, then env, then [console]
    host = getattr(args, "host", None) or settings.host
    port = getattr(args, "port", None)
    port = settings.port if port is None else int(port)
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or settings.token
    if token is None and not is_loopback(host):
        raise FleetlogError(
            f"refusing to serve on {host} without a token: set {TOKEN_ENV}, --token or "
            "[console] token, or serve on 127.0.0.1"
        )
    for reader in cli._open_logs(args):  # no log here: the CLI's one line, now
        reader.close()
    cli._ray_auth(home)  # before the bridge to a running fleet starts: it inherits the env
    app = create_app(home, getattr(args, "config", None), token, getattr(args, "address", None))
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    actual = sock.getsockname()[1]
    sys.stderr.write(
        f"fleetlog console on http://{shown}:{actual}/ for {home} "
        f"({'bearer token required' if token else 'loopback only, no token'}); Ctrl-C stops it\n"
    )
    sys.stderr.flush()
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn shut down cleanly, then passed Ctrl-C on: stopping is what was asked
    finally:
        sock.close()
    sys.stderr.write("fleetlog console stopped\n")
    return 0
