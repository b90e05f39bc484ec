"""The operator's commands without traps (issue 15): whole ids, task ids and prefixes,
options before or after the command, a home that is not there, JSON one row per line,
a closed pipe. Real files and real processes; no Ray here (see test_cli_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetlog import cli
from fleetlog.actors.fleet import SETTLED
from fleetlog.events.filelog import FileLog
from fleetlog.events.partitions import open_readers
from fleetlog.events.schema import (
    CancelRequested,
    Event,
    ReviewRequested,
    SessionClaimed,
    SessionCreated,
    ToolCallCompleted,
    ToolCallProposed,
    ToolCallStarted,
    ToolCallVetted,
)

# Call ids as the Messages API makes them: long, sharing a long prefix.
LOGIN_CALL = "toolu_01jl5w1KleAyAiq0aXb7Qm3Z"
LOGIN_DONE = "toolu_01jl5w1KleAyAiq0aZZZZZZZ"
LOGOUT_CALLS = ("toolu_01Tw4RKIn5bxlKclzFydZSez", "toolu_01Tw4RKIn5bxlKclzFydAAAA")
LONG_INPUT = json.dumps({"to": "ops@example.com", "subject": "notes", "body": "x" * 400})


def fleetlog(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLOG_")}
    return subprocess.run(
        [sys.executable, "-m", "fleetlog.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        cwd=cwd,
    )


def _awaiting(call_id: str, step: int) -> list[Event]:
    return [
        ToolCallProposed(step=step, call_id=call_id, tool="send_email", input=LONG_INPUT),
        ToolCallVetted(call_id=call_id, verdict="ask", risk="external", rule="send_email"),
        ReviewRequested(call_id=call_id, reason="policy rule 'send_email' requires review"),
    ]


def _write_session(log: FileLog, sid: str, task_id: str, events: list[Event]) -> None:
    created = SessionCreated(task_id=task_id, prompt="mail the notes", agent_type="coder")
    claimed = SessionClaimed(owner="h0", epoch=1)
    log.append(sid, [created], 0, 0)
    log.append(sid, [claimed, *events], 1, 1)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """Three sessions: two await review (one with two calls), one has a long timeline."""
    home = tmp_path / "home"
    with FileLog.open(home / "log" / "p0") as log:
        done = [
            ToolCallProposed(step=1, call_id=LOGIN_DONE, tool="list_dir", input="{}"),
            ToolCallVetted(call_id=LOGIN_DONE, verdict="allow", risk="read"),
            ToolCallStarted(call_id=LOGIN_DONE, idempotency_key="k"),
            ToolCallCompleted(call_id=LOGIN_DONE, output="notes.md"),
        ]
        _write_session(log, "s-fix-login", "fix-login", [*done, *_awaiting(LOGIN_CALL, 2)])
        _write_session(
            log,
            "s-fix-logout",
            "fix-logout",
            [*_awaiting(LOGOUT_CALLS[0], 1), *_awaiting(LOGOUT_CALLS[1], 1)],
        )
        # Far more than a pipe holds (64 KiB), so `| head` closes it mid-write.
        notes = [CancelRequested(note=f"note {i} " + "y" * 80) for i in range(3000)]
        _write_session(log, "s-big", "big", notes)
    return home


def _kinds(home: Path, sid: str) -> list[Event]:
    for reader in open_readers(home / "log"):
        try:
            stream = reader.read_stream(sid, resolve_blobs=False)
        finally:
            reader.close()
        if stream:
            return [e.event for e in stream]
    return []


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


# --- 1. whole ids, prefixes, the run's summary -----------------------------------------------


@pytest.mark.parametrize("columns", ["40", "200"])
def test_reviews_print_every_id_whole_at_any_width(home: Path, columns: str) -> None:
    proc = fleetlog("reviews", "--home", str(home), env={"COLUMNS": columns})
    assert proc.returncode == 0, proc.stderr
    # Whole: not cut ("toolu_01jl5w1KleAyAiq0a…"), not folded over two lines.
    for value in ("s-fix-login", "s-fix-logout", LOGIN_CALL, *LOGOUT_CALLS):
        assert value in proc.stdout, value
    assert "3 calls awaiting review" in proc.stdout


def test_approve_and_deny_take_task_ids_and_unambiguous_prefixes(home: Path) -> None:
    # The task id and a prefix of the call id; of the two calls sharing the prefix, the
    # one awaiting review is meant.
    proc = fleetlog("approve", "fix-login", "toolu_01jl5w", "--home", str(home))
    assert proc.returncode == 0, proc.stderr
    assert "recorded; s-fix-login picks it up" in proc.stdout
    decided = _kinds(home, "s-fix-login")[-1]
    assert type(decided).__name__ == "ReviewDecided"
    assert decided.call_id == LOGIN_CALL and decided.approved  # type: ignore[attr-defined]
    # Two calls awaiting review share this prefix: refused, naming how many.
    error = _one_line(fleetlog("deny", "s-fix-logout", "toolu_01Tw4", "--home", str(home)))
    assert "ambiguous" in error and "2 calls match" in error
    # A prefix of the session id and a longer call prefix are enough.
    proc = fleetlog("deny", "s-fix-logo", LOGOUT_CALLS[1][:-2], "--end", "--home", str(home))
    assert proc.returncode == 0, proc.stderr
    decided = _kinds(home, "s-fix-logout")[-2]
    assert decided.call_id == LOGOUT_CALLS[1] and not decided.approved  # type: ignore[attr-defined]
    # A prefix two sessions share is ambiguous (one line, the count), as in git.
    error = _one_line(fleetlog("cancel", "fix-log", "--home", str(home)))
    assert "ambiguous: 2 sessions match" in error


def test_a_task_id_works_wherever_a_session_id_does(home: Path) -> None:
    show = fleetlog("show", "fix-login", "--home", str(home))
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith("session s-fix-login  task fix-login")
    assert fleetlog("cancel", "big", "--home", str(home)).returncode == 0
    assert type(_kinds(home, "s-big")[-1]).__name__ == "CancelRequested"
    # Not found: a hint with the closest session, in one line.
    error = _one_line(fleetlog("show", "fix-lgin", "--home", str(home)))
    assert "no session 'fix-lgin'" in error and "did you mean s-fix-login?" in error


def test_the_run_summary_lists_reviews_up_to_a_limit_and_counts_failures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def row(i: int, status: str, reviews: int = 0) -> dict[str, object]:
        calls = [
            {"call_id": f"toolu_{i:02d}_{j}", "tool": "send_email", "reason": "asks"}
            for j in range(reviews)
        ]
        error = "MAX_STEPS_EXCEEDED: 3 steps" if status == "failed" else ""
        return {
            "id": f"s-{i:02d}",
            "status": status,
            "step_count": 1,
            "token_count": 10,
            "cost_usd": 0.001,
            "error": error,
            "reviews": calls,
        }

    status = cli._summary([row(0, "completed")], 0.5, settled=SETTLED)
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("1 session in 0.5s: 1 completed") for line in out), out
    assert "failed" not in out[-1] and status == 0
    rows = [row(i, "awaiting_review", 1) for i in range(12)] + [row(12, "failed")]
    status = cli._summary(rows, 1.0, settled=SETTLED)
    out = capsys.readouterr().out.splitlines()
    assert "reviews pending: 12 (fleetlog reviews; fleetlog approve SESSION CALL_ID)" in out
    listed = [line for line in out if line.startswith("  s-")]
    assert len(listed) == 10 and listed[0].startswith("  s-00 toolu_00_0 send_email")
    assert "  …and 2 more (fleetlog reviews)" in out
    assert out[-1].startswith("1 of 13 sessions failed") and status == 1


# --- 2. and 7. the tasks file against the config, before any cluster -------------------------


def test_an_undefined_agent_is_one_line_before_any_cluster_starts(tmp_path: Path) -> None:
    config = tmp_path / "fleetlog.toml"
    config.write_text('[agents.coder]\ntools = ["read_file"]\n\n[agents.writer]\n')
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": "a", "agent": "coder"}\n{"prompt": "b", "agent": "codr"}\n')
    started = time.monotonic()
    error = _one_line(
        fleetlog("run", str(tasks), "--config", str(config), "--home", str(tmp_path / "h"))
    )
    # No Ray was started (that alone takes ~10 s here), nothing was created.
    assert time.monotonic() - started < 5
    assert f"{tasks}:2: agent `codr` is not defined in {config}" in error
    assert "(did you mean `coder`?)" in error and "it defines coder, writer" in error
    assert not (tmp_path / "h").exists()


def test_submit_checks_its_agent_before_looking_for_a_fleet(tmp_path: Path) -> None:
    config = tmp_path / "fleetlog.toml"
    config.write_text("[agents.coder]\n")
    args = ("submit", "x", "--agent", "codr", "--config", str(config), "--home", str(tmp_path))
    error = _one_line(fleetlog(*args))
    assert "agent `codr` is not defined" in error and "did you mean `coder`?" in error


def test_an_absolute_workspace_outside_the_roots_is_one_line(tmp_path: Path) -> None:
    roots = tmp_path / "repos"
    (roots / "app").mkdir(parents=True)
    (roots / "escape").symlink_to(tmp_path)
    config = tmp_path / "fleetlog.toml"
    config.write_text(f'[fleet]\nworkspace_roots = ["{roots}"]\n')
    for line, workspace, words in (
        (2, str(tmp_path / "elsewhere"), "is not under [fleet] workspace_roots"),
        (2, f"{roots}/../elsewhere", "is not under [fleet] workspace_roots"),
        (2, str(roots / "escape" / "x"), f"resolves to '{tmp_path / 'x'}'"),
    ):
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text(
            json.dumps({"prompt": "ok", "workspace": str(roots / "app")})
            + "\n"
            + json.dumps({"prompt": "no", "workspace": workspace})
            + "\n"
        )
        error = _one_line(
            fleetlog("run", str(tasks), "--config", str(config), "--home", str(tmp_path / "h"))
        )
        assert f"{tasks}:{line}: `workspace`" in error and words in error, error


# --- 5. options before or after the command --------------------------------------------------


def test_global_options_work_before_or_after_the_command(home: Path, tmp_path: Path) -> None:
    after = fleetlog("sessions", "--json", "--home", str(home))
    before = fleetlog("--home", str(home), "sessions", "--json")
    assert after.returncode == 0 and before.returncode == 0, before.stderr
    assert after.stdout == before.stdout and len(json.loads(before.stdout)) == 3
    # After the command wins over before it, as a later option does.
    both = fleetlog("--home", str(tmp_path / "nowhere"), "sessions", "--json", "--home", str(home))
    assert both.stdout == after.stdout
    config = tmp_path / "pg.toml"
    config.write_text('[fleet]\nlog = "postgresql://u:pw@127.0.0.1:1/x"\n')
    error = _one_line(fleetlog("--config", str(config), "--home", str(home), "show", "big"))
    assert "127.0.0.1:1" in error


# --- 8. the rest ----------------------------------------------------------------------------


def test_read_commands_honour_the_config_and_the_environment(home: Path, tmp_path: Path) -> None:
    """The config's [fleet] log (or FLEETLOG_LOG) is where the read commands look, not
    whatever file log happens to be in the home."""
    config = tmp_path / "pg.toml"
    config.write_text('[fleet]\nlog = "postgresql://u:pw@127.0.0.1:1/x"\n')
    for args in (("sessions",), ("reviews",), ("show", "big"), ("verify",)):
        error = _one_line(fleetlog(*args, "--home", str(home), "--config", str(config)))
        assert "127.0.0.1:1" in error and "pw" not in error, (args, error)
    env = {"FLEETLOG_LOG": "postgresql://u:pw@127.0.0.1:1/x"}
    error = _one_line(fleetlog("sessions", "--home", str(home), env=env))
    assert "127.0.0.1:1" in error


def test_a_home_that_does_not_exist_is_one_line(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (
        ("sessions",),
        ("show", "fix-login"),
        ("reviews",),
        ("approve", "s-x", "toolu_1"),
        ("cancel", "s-x"),
        ("sql", "SELECT 1"),
        ("metrics",),
        ("project",),
        ("verify",),
    ):
        # A home relative to the directory it was made in, used from another one.
        error = _one_line(fleetlog(*args, "--home", "home", cwd=elsewhere))
        assert error == f"fleetlog: no fleet home at {elsewhere / 'home'} (from --home)\n", args
    error = _one_line(fleetlog("sessions", cwd=elsewhere))
    assert f"no fleet home at {elsewhere / '.fleetlog'} (the default" in error
    assert fleetlog("sessions", "--home", "home", cwd=home.parent).returncode == 0


def test_json_is_one_array_with_one_row_per_line(home: Path) -> None:
    for args in (("sessions", "--json"), ("reviews", "--json"), ("show", "fix-login", "--json")):
        proc = fleetlog(*args, "--home", str(home))
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        lines = proc.stdout.splitlines()
        assert lines[0] == "[" and lines[-1] == "]" and len(lines) == len(rows) + 2, args
        for line, row in zip(lines[1:-1], rows, strict=True):
            assert json.loads(line.removesuffix(",")) == row


def test_a_closed_pipe_stops_the_output_quietly(home: Path) -> None:
    for command in ("show s-big", "show big --json", "sessions"):
        proc = subprocess.run(
            f"{sys.executable} -m fleetlog.cli {command} --home {home} | head -n 2",
            shell=True,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.stdout.count("\n") == 2
        assert proc.stderr == "", (command, proc.stderr)


def test_one_session_is_one_session(home: Path, tmp_path: Path) -> None:
    proc = fleetlog("sessions", "--status", "awaiting_review", "--home", str(home))
    assert "(2 sessions: 2 awaiting_review)" in proc.stdout
    proc = fleetlog("sessions", "--status", "pending", "--home", str(home))
    assert proc.stdout.startswith("no pending sessions in")
    single = tmp_path / "single"
    with FileLog.open(single / "log" / "p0") as log:
        _write_session(log, "s-one", "one", [])
    proc = fleetlog("sessions", "--home", str(single))
    assert "(1 session: 1 running)" in proc.stdout, proc.stdout
