"""Child process for the crash tests: append forever, print every acknowledgement.

    python crash_writer.py LOG_DIR MODE SEGMENT_BYTES

MODE is ``async`` (8 asyncio writers on one loop), ``threads`` (4 OS threads)
or ``mixed`` (both at once). Each writer owns one session and continues it from
whatever the log holds, so the parent can kill and restart this process on the
same log again and again. Every event's content is a pure function of
(session, seq), so the parent can check each one after a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import threading

from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import ToolCallCompleted

_print_lock = threading.Lock()


def payload(session_id: str, seq: int) -> str:
    digest = hashlib.sha256(f"{session_id}/{seq}".encode()).hexdigest()
    if seq % 37 == 0:
        return digest * 2200  # ~140 KiB: goes to the blob store
    return digest * (1 + seq % 5)


def event(session_id: str, seq: int) -> ToolCallCompleted:
    return ToolCallCompleted(call_id=f"{session_id}:{seq}", output=payload(session_id, seq))


def batch_size(session_id: str, seq: int) -> int:
    return 1 + int(hashlib.sha256(f"{session_id}#{seq}".encode()).hexdigest(), 16) % 6


def ack(session_id: str, last_seq: int, last_position: int) -> None:
    with _print_lock:
        sys.stdout.write(f"ack {session_id} {last_seq} {last_position}\n")
        sys.stdout.flush()


def thread_writer(log: FileLog, session_id: str) -> None:
    seq = log.last_seq(session_id)
    while True:
        n = batch_size(session_id, seq)
        events = [event(session_id, seq + 1 + i) for i in range(n)]
        result = log.append(session_id, events, seq)
        seq = result.last_seq
        ack(session_id, seq, result.last_position)


async def async_writer(log: FileLog, session_id: str) -> None:
    seq = log.last_seq(session_id)
    while True:
        n = batch_size(session_id, seq)
        events = [event(session_id, seq + 1 + i) for i in range(n)]
        result = await log.append_async(session_id, events, seq)
        seq = result.last_seq
        ack(session_id, seq, result.last_position)


def main() -> None:
    path, mode, segment_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = FileLog.open(path, segment_bytes=segment_bytes)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if mode in ("threads", "mixed"):
        for i in range(4):
            threading.Thread(target=thread_writer, args=(log, f"t{i}"), daemon=True).start()
    if mode in ("async", "mixed"):

        async def run() -> None:
            await asyncio.gather(*(async_writer(log, f"a{i}") for i in range(8)))

        asyncio.run(run())
    else:
        threading.Event().wait()


if __name__ == "__main__":
    main()
