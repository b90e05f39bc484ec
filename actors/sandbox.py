"""Confinement for what a tool runs: bubblewrap, an unprivileged uid, limits, no network.

Vetting (``safety.py``) decides from a command's text and cannot be complete;
whatever it lets through runs here (DESIGN.md, "Two lines of defence"):

* the whole system is mounted read-only; the session's workspace is the only
  writable path, plus a private tmpfs ``/tmp``; ``HOME`` is the workspace;
  ``/root``, ``/home``, ``/run`` and the fleet's own home (its log, outbox and
  other sessions' workspaces) are empty tmpfs mounts: absent, not unreadable;
* the command runs as a real unprivileged uid, even when fleetlog runs as root
  (``setpriv`` before ``bwrap``: bwrap's user namespace alone maps the inside
  uid back to the caller's, and root could still read ``/etc/shadow``);
* new user, PID, IPC, UTS, cgroup and network namespaces: no network at all
  (the namespace has only its own loopback), it dies with its parent, and
  killing it kills every process it started;
* limits on CPU time, address space, file size and (under root, where each
  session has a uid of its own) the number of processes.

Which uid: the workspace's owner when that is not root (a user's own checkout
runs as that user); otherwise, under root, a uid of the session's own
(``200000 + hash % 100000``), and the workspace is handed to it the first time.
Without root, the command runs as fleetlog's own uid, inside the namespaces.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "Sandbox", "SandboxUnavailable", "probe", "python_paths"]

#: Where the per-session uids of a root fleet start, and how many there are.
UID_BASE = 200_000
UID_SPAN = 100_000


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 120  # CPU seconds (the wall-clock timeout is the tool's own)
    address_space_bytes: int = 8 << 30
    file_bytes: int = 1 << 30
    processes: int = 512  # per session uid; only set where each session has its own uid


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/bin:/bin:/usr/sbin")


@dataclass(frozen=True)
class Sandbox:
    """Builds the command line that confines one call (``argv``), for one fleet home."""

    home: Path  # the fleet home: hidden inside, but for the session's workspace
    limits: Limits = Limits()
    bwrap: str = "bwrap"
    setpriv: str = "setpriv"
    prlimit: str = "prlimit"

    @classmethod
    def find(cls, home: Path, limits: Limits = Limits()) -> Sandbox:
        """A sandbox for ``home``; SandboxUnavailable (one line) if this machine cannot run one."""
        reason = probe()
        if reason:
            raise SandboxUnavailable(reason)
        tools = {name: _which(name) for name in ("bwrap", "setpriv", "prlimit")}
        return cls(
            home=home.resolve(),
            limits=limits,
            bwrap=tools["bwrap"] or "bwrap",
            setpriv=tools["setpriv"] or "setpriv",
            prlimit=tools["prlimit"] or "prlimit",
        )

    def uid_for(self, workspace: Path, session_id: str) -> int:
        """The unprivileged uid the session's commands run as (see the module docstring)."""
        if os.geteuid() != 0:
            return os.geteuid()
        owner = workspace.stat().st_uid
        if owner != 0:
            return owner
        digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
        uid = UID_BASE + int.from_bytes(digest, "big") % UID_SPAN
        _hand_over(workspace, uid)
        return uid

    def argv(
        self,
        command: Sequence[str],
        *,
        workspace: Path,
        uid: int,
        env: Mapping[str, str],
        read_only: Sequence[Path] = (),
    ) -> list[str]:
        """``command`` confined to ``workspace``, run as ``uid``, with exactly ``env``.

        Under root, bwrap mounts as root (so it can reach a workspace under a
        0700 directory) without a user namespace, and ``setpriv`` then becomes
        ``uid`` inside, with every capability and the bounding set dropped and
        no_new_privs (setuid programs cannot raise it back). Otherwise bwrap
        makes a user namespace and the command keeps the caller's own uid.
        """
        root = os.geteuid() == 0
        out = [self.bwrap]
        if root:
            out += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
            out += ["--unshare-cgroup-try"]
        else:
            out += ["--unshare-all"]
        out += [
            "--die-with-parent",
            "--new-session",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--perms", "1777", "--tmpfs", "/tmp",
        ]  # fmt: skip
        hidden = [Path("/tmp"), Path("/root"), Path("/home"), Path("/run")]
        for path in hidden[1:]:
            out += ["--tmpfs", str(path)]
        # /var/tmp becomes private scratch too, and the fleet home and the home of the
        # user running fleetlog (wherever they are) become empty.
        out += ["--perms", "1777", "--tmpfs", "/var/tmp"]
        hidden.append(Path("/var/tmp"))
        for private in (self.home, _user_home()):
            if private is not None and not any(_below(private, h) or private == h for h in hidden):
                out += ["--tmpfs", str(private)]
                hidden.append(private)
        # Paths keep their names; their parents inside an emptied directory are made
        # (traversable) so that absolute paths and HOME work in there too. Paths
        # given as read-only (a Python tool's interpreter and modules) come back so.
        made: set[Path] = set()
        for path, how in [*((p, "--ro-bind") for p in read_only), (workspace, "--bind")]:
            if how == "--ro-bind" and not any(_below(path, h) for h in hidden):
                continue  # visible as it is, read-only with the rest of the system
            for parent in reversed(path.parents):
                if parent not in made and any(_below(parent, h) for h in hidden):
                    out += ["--perms", "0755", "--dir", str(parent)]
                    made.add(parent)
            out += [how, str(path), str(path)]
            made.add(path)
        # Tools that look their user up by uid (whoami, ssh-keygen, git) find one.
        passwd, group = _identity_files(uid, workspace)
        out += ["--ro-bind", str(passwd), "/etc/passwd", "--ro-bind", str(group), "/etc/group"]
        ws = str(workspace)
        out += ["--chdir", ws, "--clearenv"]
        for key, value in env.items():
            out += ["--setenv", key, value]
        out.append("--")
        if root:
            out += [self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            out += ["--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"]
        limits = self.limits
        out += [
            self.prlimit,
            f"--cpu={limits.cpu_s}",
            f"--as={limits.address_space_bytes}",
            f"--fsize={limits.file_bytes}",
        ]
        if root:  # only a uid of its own makes a process count meaningful
            out.append(f"--nproc={limits.processes}")
        return [*out, "--", *command]


def _user_home() -> Path | None:
    """The home of the user running fleetlog, unless it is the root directory."""
    try:
        home = Path.home().resolve()
    except (KeyError, RuntimeError):
        return None
    return home if home != Path("/") else None


def _identity_files(uid: int, workspace: Path) -> tuple[Path, Path]:
    """/etc/passwd and /etc/group as the sandbox sees them: this system's, plus the
    sandbox's uid (named ``fleetlog``, its home the workspace) where the system has none.

    Written once per (uid, workspace) under the temp directory, atomically.
    """
    key = hashlib.blake2b(f"{uid}\0{workspace}".encode(), digest_size=8).hexdigest()
    root = Path(tempfile.gettempdir()) / "fleetlog-sandbox-etc"
    passwd, group = root / f"passwd-{key}", root / f"group-{key}"
    if passwd.exists() and group.exists():
        return passwd, group
    root.mkdir(mode=0o755, exist_ok=True)
    users = Path("/etc/passwd").read_text(errors="replace")
    groups = Path("/etc/group").read_text(errors="replace")
    if not any(line.split(":")[2:3] == [str(uid)] for line in users.splitlines()):
        users += f"fleetlog:x:{uid}:{uid}:fleetlog sandbox:{workspace}:/bin/sh\n"
    if not any(line.split(":")[2:3] == [str(uid)] for line in groups.splitlines()):
        groups += f"fleetlog:x:{uid}:\n"
    for path, text in ((passwd, users), (group, groups)):
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return passwd, group


def _below(path: Path, root: Path) -> bool:
    """``path`` is strictly inside ``root``."""
    return root in path.parents


def _hand_over(workspace: Path, uid: int) -> None:
    """Give a root-owned workspace to the session's uid (once: then it owns it)."""
    for root, dirs, files in os.walk(workspace):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, uid)
    os.chown(workspace, uid, uid)


def python_paths() -> tuple[str, list[Path]]:
    """This interpreter's module path (for ``PYTHONPATH``) and what a sandbox must bind
    read-only for it to run there: it may live under an emptied directory (/root, /tmp)."""
    # "" on sys.path is the current directory: a tools module found there must be too.
    paths = [os.path.abspath(p or ".") for p in sys.path if os.path.isdir(p or ".")]
    interpreter = Path(os.path.realpath(sys.executable))
    read_only = {Path(p).resolve() for p in [*paths, sys.prefix, sys.base_prefix]}
    read_only.add(interpreter.parent)
    return os.pathsep.join(paths), sorted(read_only)


@functools.cache
def probe() -> str:
    """Why no sandbox can start here (one line), or "" when one can: checked once per process."""
    missing = [name for name in ("bwrap", "prlimit") if _which(name) is None]
    if os.geteuid() == 0 and _which("setpriv") is None:
        missing.append("setpriv")
    if missing:
        return (
            f"{' and '.join(missing)} not found: install bubblewrap and util-linux "
            '(scripts/setup does), or set [tools] sandbox = "off"'
        )
    with tempfile.TemporaryDirectory(prefix="fleetlog-probe-") as tmp:
        home = Path(tmp)
        workspace = home / "ws"
        workspace.mkdir()
        box = Sandbox(
            home=home,
            bwrap=_which("bwrap") or "bwrap",
            setpriv=_which("setpriv") or "setpriv",
            prlimit=_which("prlimit") or "prlimit",
        )
        uid = box.uid_for(workspace, "probe")
        argv = box.argv(
            ["/bin/sh", "-c", "echo ok > probe && cat probe"],
            workspace=workspace,
            uid=uid,
            env={"PATH": "/usr/bin:/bin"},
        )
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"bubblewrap cannot start: {e}"
        if done.returncode != 0 or done.stdout.strip() != "ok":
            detail = (
                " ".join((done.stderr or done.stdout).split())[:200] or f"exit {done.returncode}"
            )
            return f"bubblewrap cannot create a sandbox here: {detail}"
    return ""
