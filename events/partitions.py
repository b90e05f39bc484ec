"""A fleet's log: one FileLog partition per host, under ``HOME/log/p<k>/``.

Each SessionHost owns the partitions ``p`` with ``p % hosts == index`` and
appends to them in-process: no round trip per append, one group commit per
host. A session's stream lives in exactly one partition for life (where it was
created), so a fleet can be restarted with a different number of hosts: every
existing partition is still owned by exactly one host. Readers (CLI, ledger,
projections) open every partition read-only.

Why partitions and not one LogWriter actor: a Ray actor call costs ~1.7 ms on
the 2-core reference machine, and a step makes two durable appends, so routing
appends through one writer would cost more per step than the whole budget
(README, "Why partitions").
"""

from __future__ import annotations

from pathlib import Path

from .filelog import FileLog

__all__ = ["indexed_partitions", "partition_dirs", "partition_path", "open_readers"]


def partition_path(log_root: Path, index: int) -> Path:
    return log_root / f"p{index}"


def indexed_partitions(log_root: Path) -> list[tuple[int, Path]]:
    """``(index, path)`` of every partition under ``log_root``, in index order.

    A plain FileLog at ``log_root`` counts as partition 0.
    """
    if (log_root / "segments").is_dir():
        return [(0, log_root)]
    found = []
    for path in log_root.glob("p*"):
        if path.is_dir() and path.name[1:].isdigit() and (path / "segments").is_dir():
            found.append((int(path.name[1:]), path))
    return sorted(found)


def partition_dirs(log_root: Path) -> list[Path]:
    """Every partition under ``log_root``, in index order (a plain FileLog counts as one)."""
    return [path for _index, path in indexed_partitions(log_root)]


def open_readers(log_root: Path) -> list[FileLog]:
    return [FileLog.open(p, readonly=True) for p in partition_dirs(log_root)]
