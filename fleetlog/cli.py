"""The ``fleetlog`` command line (SPEC §4).

Every error reaches the user as one line on stderr: exit 1 for a failure the
command reports, 2 for a usage error. Tracebacks are for bugs only, and even
those are reduced to one line unless ``FLEETLOG_DEBUG`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fleetlog.events.errors import FleetlogError
from fleetlog.events.verify import verify_log

__all__ = ["main"]


class UsageError(FleetlogError):
    """A command was called wrongly (exit 2)."""


def _home(args: argparse.Namespace) -> Path:
    if args.home:
        return Path(args.home)
    return Path(os.environ.get("FLEETLOG_HOME") or ".fleetlog")


def log_dir(home: Path) -> Path:
    return home / "log"


def cmd_verify(args: argparse.Namespace) -> int:
    home = _home(args)
    path = log_dir(home)
    if not (path / "segments").is_dir():
        raise FleetlogError(f"no event log under {home} (looked for {path}/segments)")
    report = verify_log(path)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "segments": report.segments,
                    "frames": report.frames,
                    "events": report.events,
                    "sessions": report.sessions,
                    "blobs_checked": report.blobs_checked,
                    "faults": [str(f) for f in report.faults],
                    "notes": report.notes,
                }
            )
        )
    else:
        for fault in report.faults:
            print(f"FAULT {fault}")
        for note in report.notes:
            print(f"note: {note}")
        verdict = "ok" if report.ok else f"{len(report.faults)} fault(s)"
        print(
            f"{path}: {verdict} — {report.events} events in {report.frames} frames, "
            f"{report.segments} segment(s), {report.sessions} session(s), "
            f"{report.blobs_checked} blob(s) checked"
        )
    return 0 if report.ok else 1


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="fleet home (default $FLEETLOG_HOME, else ./.fleetlog)")
    common.add_argument("--config", help="config file (default ./fleetlog.toml if present)")
    parser = argparse.ArgumentParser(
        prog="fleetlog", description="A production runtime for fleets of LLM agents."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="check the log end to end (checksums, contiguous sequence numbers); exit 1 on faults",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UsageError as e:
        print(f"fleetlog: {e}", file=sys.stderr)
        return 2
    except FleetlogError as e:
        print(f"fleetlog: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fleetlog: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleetlog: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("FLEETLOG_DEBUG"):
            raise
        print(f"fleetlog: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
