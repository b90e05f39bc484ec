"""cluster.yaml: valid for Ray's cluster launcher, and a fleet that keeps its promises.

Validated with Ray's own code, offline: ``validate_config`` (Ray's JSON schema,
ray/autoscaler/ray-schema.json, plus its node-type checks) on the file as
written, and again after ``prepare_config`` (the provider defaults merged in, the
setup commands merged per node kind), which is what ``ray up`` does before it
talks to the cloud. No network, no cloud account.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
ENV_FILE = "~/fleetlog.env"


def _raw() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return config


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return _raw()


@pytest.fixture(scope="module")
def prepared() -> dict[str, Any]:
    config = prepare_config(_raw())
    validate_config(config)
    return config


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _writes_env_file(command: str) -> bool:
    return "FLEETLOG_LOG=" in command and ENV_FILE in command


def _sources_env_file(command: str) -> bool:
    return command.lstrip().startswith(f". {ENV_FILE} &&")


# --- Ray's validator ---------------------------------------------------------------


def test_valid_for_ray_as_written(raw: dict[str, Any]) -> None:
    validate_config(raw)


def test_valid_for_ray_after_defaults_are_merged(prepared: dict[str, Any]) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("fleetlog_log",), "postgresql://x"),  # unknown top-level key
        (("max_workers",), "eight"),  # wrong type
        (("available_node_types", "worker", "min_workers"), 1.5),
        (("available_node_types", "worker", "instance_type"), "m5.large"),
        (("setup_commands",), "pip install fleetlog"),  # a string, not a list
    ],
)
def test_ray_validator_rejects_a_broken_config(
    raw: dict[str, Any], path: tuple[str, ...], value: Any
) -> None:
    broken = copy.deepcopy(raw)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


# --- what a fleetlog fleet needs -------------------------------------------------


def test_token_auth_is_never_disabled() -> None:
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"RAY_AUTH_MODE\W{0,3}disabled", text, re.IGNORECASE)
    assert "RAY_AUTH_MODE=token" in text


def test_no_secret_is_written_into_the_file(raw: dict[str, Any]) -> None:
    # The DSN and the Ray token come from a secret store on each node, at setup.
    values = _strings(raw)
    assert not [v for v in values if "postgresql://" in v or "postgres://" in v]
    assert not [v for v in values if re.search(r"RAY_AUTH_TOKEN=(?!%q)", v)]


def test_every_node_gets_the_log_and_the_token(prepared: dict[str, Any]) -> None:
    # prepare_config merged setup_commands into both lists, as `ray up` runs them.
    for kind in ("head_setup_commands", "worker_setup_commands"):
        writers = [c for c in prepared[kind] if _writes_env_file(c)]
        assert len(writers) == 1, kind
        assert "RAY_AUTH_TOKEN=" in writers[0]
        assert "RAY_AUTH_MODE=token" in writers[0]
    for name, node_type in prepared["available_node_types"].items():
        # a per-type list would replace the merged setup commands on that type
        assert "worker_setup_commands" not in node_type, name
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in prepared[kind] if "ray start" in c]
        assert len(starts) == 1, kind
        assert _sources_env_file(starts[0]), starts[0]


def test_fleetlog_is_installed_from_this_checkout_on_every_node(raw: dict[str, Any]) -> None:
    home = f"/home/{raw['auth']['ssh_user']}"
    checkout = [remote for remote, local in raw["file_mounts"].items() if local == "."]
    assert len(checkout) == 1
    mounted = checkout[0].replace(home, "~", 1)
    installs = [
        c
        for c in raw["setup_commands"]
        if "pip install" in c and mounted in shlex.split(c)  # setup_commands: every node
    ]
    assert installs, f"no setup command installs {mounted}"
    assert any("--python 3.11" in c for c in raw["setup_commands"])


def test_a_worker_group_that_autoscales(raw: dict[str, Any]) -> None:
    workers = {
        name: t for name, t in raw["available_node_types"].items() if name != raw["head_node_type"]
    }
    scaling = [t for t in workers.values() if t.get("max_workers", 0) > t.get("min_workers", 0)]
    assert scaling
    assert all(t["max_workers"] <= raw["max_workers"] for t in scaling)


def test_ray_start_commands(raw: dict[str, Any]) -> None:
    (head,) = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert "ray start --head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    (worker,) = [c for c in raw["worker_start_ray_commands"] if "ray start" in c]
    assert "--address=$RAY_HEAD_IP:6379" in worker


def test_the_env_file_command_quotes_secrets_and_fails_without_them(
    raw: dict[str, Any], tmp_path: Path
) -> None:
    """Run the real setup command against a stand-in secret store (a fake `aws`)."""
    (writer,) = [c for c in raw["setup_commands"] if _writes_env_file(c)]
    bin_dir = tmp_path / "fleetlog-venv" / "bin"
    bin_dir.mkdir(parents=True)
    aws = bin_dir / "aws"
    dsn = "postgresql://fleet:p a$s'w`o&rd;@db:5432/fleet?sslmode=require&x=1"
    aws.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *postgres-dsn*) printf "%s\\n" {shlex.quote(dsn)};;'
        " *ray-auth-token*) echo 0123abcd;; *) exit 2;; esac\n"
    )
    aws.chmod(0o755)
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    subprocess.run(["bash", "-c", writer], env=env, check=True)
    env_file = tmp_path / "fleetlog.env"
    assert env_file.stat().st_mode & 0o077 == 0
    shown = subprocess.run(
        [
            "bash",
            "-c",
            f'. {ENV_FILE} && printf "%s\\n" "$FLEETLOG_LOG" "$RAY_AUTH_TOKEN" "$RAY_AUTH_MODE"',
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert shown == [dsn, "0123abcd", "token"]

    env_file.unlink()
    aws.write_text("#!/bin/sh\necho AccessDenied >&2\nexit 255\n")
    failed = subprocess.run(["bash", "-c", writer], env=env, capture_output=True, check=False)
    assert failed.returncode != 0
    assert not env_file.exists()
