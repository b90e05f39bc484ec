"""``fleetlog serve`` itself: the command a user types, as a real process on 127.0.0.1.

The API and the pages are tested in-process (test_console_api.py, test_console_browser.py);
here the command line: where the token and the address come from (flag, environment,
``[console]``), the refusal to serve a non-loopback address without a token, and a clean
stop on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from console_fixtures import build_home

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "FLEETLOG_"))}
ENV["RAY_AUTH_MODE"] = "disabled"


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleetlog.cli", *args],
        cwd=cwd,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def _serving(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``fleetlog serve --port 0 ARGS``; yields its URL, then stops it with SIGINT."""
    proc = _cli("serve", "--port", "0", *args, cwd=cwd, env=env)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the first line names the URL (or the error)
    match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
    try:
        assert match, line + (proc.stderr.read() if proc.poll() is not None else "")
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, rest = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("fleetlog serve did not stop on Ctrl-C")
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest and rest.strip().endswith("fleetlog console stopped")


def _get(url: str, token: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_home(tmp_path_factory.mktemp("serve"), config=False)


def test_serve_without_a_token_on_loopback(home: Path) -> None:
    with _serving("--home", str(home), cwd=home.parent) as url:
        status, overview = _get(url + "/api/overview")
        assert status == 200, overview
        assert isinstance(overview, dict) and overview["counts"]["completed"] == 1
        status, schema = _get(url + "/openapi.json")
        assert status == 200 and isinstance(schema, dict) and "/api/reviews" in schema["paths"]


def test_serve_takes_its_token_from_config_and_flag_over_env_over_config(home: Path) -> None:
    config = home.parent / "console.toml"
    config.write_text('[console]\ntoken = "from-config-3f9"\n')
    base = ("--home", str(home), "--config", str(config))
    with _serving(*base, cwd=home.parent) as url:
        assert _get(url + "/api/overview")[0] == 401
        assert _get(url + "/api/overview", "wrong")[0] == 401
        assert _get(url + "/api/overview", "from-config-3f9")[0] == 200
    env = dict(ENV, FLEETLOG_CONSOLE_TOKEN="from-env-81c")
    with _serving(*base, cwd=home.parent, env=env) as url:
        assert _get(url + "/api/overview", "from-config-3f9")[0] == 401
        assert _get(url + "/api/overview", "from-env-81c")[0] == 200
    with _serving(*base, "--token", "from-flag-a20", cwd=home.parent, env=env) as url:
        assert _get(url + "/api/overview", "from-env-81c")[0] == 401
        assert _get(url + "/api/overview", "from-flag-a20")[0] == 200


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (("--host", "0.0.0.0"), "", "refusing to serve on 0.0.0.0 without a token"),
        ((), '[console]\nhost = "0.0.0.0"\n', "refusing to serve on 0.0.0.0 without a token"),
        ((), "[console]\nport = 70000\n", "[console] port"),
        ((), "[console]\ntoken = 7\n", "[console] token"),
        ((), '[console]\nbind = "x"\n', "unknown key `bind`"),
    ],
)
def test_serve_refuses_in_one_line(
    home: Path, tmp_path: Path, args: tuple[str, ...], config: str, message: str
) -> None:
    path = tmp_path / "fleetlog.toml"
    path.write_text(config)
    started = time.monotonic()
    proc = _cli("serve", "--home", str(home), "--config", str(path), *args, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert out == "" and time.monotonic() - started < 30


def test_serve_without_a_fleet_home_says_so(tmp_path: Path) -> None:
    proc = _cli("serve", "--home", str(tmp_path / "nowhere"), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.startswith("fleetlog: no fleet home at"), err
