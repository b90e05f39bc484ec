"""Inside the sandbox: ``python -m fleetlog.actors._egress_relay SOCKET -- COMMAND...``.

Listens on the sandbox's own ``127.0.0.1:3128``, relays each connection to the
fleet's egress proxy (``egress.py``) through the Unix socket bound in, runs
COMMAND with ``HTTP(S)_PROXY`` pointing at itself, and exits with its code.
Standard input, output and error are the command's own.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading

from fleetlog.actors.egress import RELAY_PORT


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main(argv: list[str]) -> int:
    path, sep, *command = argv
    if sep != "--" or not command:
        print("usage: _egress_relay SOCKET -- COMMAND...", file=sys.stderr)
        return 2
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", RELAY_PORT))
    listener.listen(64)

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=_relay, args=(client, path), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    proxy = f"http://127.0.0.1:{RELAY_PORT}"
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env[name] = proxy
    env.pop("PYTHONPATH", None)  # the command's own Python, not fleetlog's
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
