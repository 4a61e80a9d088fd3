"""Append-only spool files: where an answered prediction waits for the database.

A request appends one line (its rows, JSON) to its process's current *segment* file
before the prediction is answered; a writer thread of the same process reads the
segments in order and inserts what it finds in one transaction per group (the insert
skips rows already stored, so a line read twice is stored once), then deletes a segment
that is complete. The line is in the kernel's page cache when the answer leaves, so it
survives the death of the process (SIGKILL, the OOM killer, gunicorn's timeout); with
``fsync`` it also survives the node, at the price of a disk flush per request.

Each process holds an exclusive ``flock`` on the segments it writes. The kernel releases
it when the process dies, so a segment that another process can lock is an orphan: the
writer of any live process using the same directory (a new worker, the restarted pod)
takes it and drains it. The window in which an answered prediction can be lost is
therefore the life of a segment on a lost disk: ``docs/monitoring.md``.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 << 20  # a new segment after this many bytes (old ones are then deleted)
READ_BYTES = 1 << 20  # at most this much of a segment per transaction
SUFFIX = ".jsonl"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Segment:
    """One spool file: its path, a descriptor to append (own) or read, how far it is
    written to the database (``done``, bytes) and the lock that says its owner lives."""

    def __init__(self, path: str, fd: int, own: bool) -> None:
        self.path, self.fd, self.own = path, fd, own
        self.size = os.fstat(fd).st_size if not own else 0
        self.done = 0
        self.lines = 0  # own: lines appended

    def unread(self) -> bytes:
        """The complete lines not yet written to the database (up to :data:`READ_BYTES`)."""
        size = self.size if self.own else os.fstat(self.fd).st_size
        data = os.pread(self.fd, min(size - self.done, READ_BYTES), self.done)
        end = data.rfind(b"\n")
        # A dead owner's last line may be cut short: that request was never answered.
        return data[:end + 1] if end >= 0 else b""

    def close(self, delete: bool) -> None:
        """Delete (when complete) and close; closing releases the lock."""
        if delete:
            try:
                os.unlink(self.path)
            except FileNotFoundError:  # pragma: no cover - deleted by hand
                pass
        os.close(self.fd)
        self.fd = -1


class Spool:
    """The spool of one process in ``directory``: appends and the segments to drain.

    Args:
        directory: created if missing; shared by the processes of one database only.
        fsync: flush each append to the disk (survives the node, costs a disk write).
    """

    def __init__(self, directory: str, fsync: bool = False) -> None:
        self.directory, self.fsync = directory, fsync
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.own: list[Segment] = []  # oldest first; the last is appended to
        self.appended = 0  # lines appended by this process

    def append(self, line: list[Any]) -> None:
        """Write one request's line; it is durable (page cache, or disk with ``fsync``)
        when this returns. Raises OSError when the disk refuses it."""
        data = (_encode(line) + "\n").encode()
        with self.lock:
            current = self.own[-1] if self.own else None
            if current is None or current.size >= SEGMENT_BYTES:
                current = self._new_segment()
            written = os.write(current.fd, data)
            if written != len(data):  # pragma: no cover - a full disk mid-line
                raise OSError("short write to the prediction spool")
            if self.fsync:
                os.fdatasync(current.fd)
            current.size += written
            current.lines += 1
            self.appended += 1

    def _new_segment(self) -> Segment:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX)
        segment = Segment(path, fd, own=True)
        self.own.append(segment)
        return segment

    def orphans(self) -> list[Segment]:
        """Segments of dead processes, locked by this one now, oldest first."""
        found = []
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(SUFFIX))
        except FileNotFoundError:
            return []
        mine = {s.path for s in self.own}
        for name in names:
            path = os.path.join(self.directory, name)
            if path in mine:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # drained by another process meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its owner lives (or another process drains it)
                os.close(fd)
                continue
            if os.fstat(fd).st_nlink == 0:  # deleted between listdir and lock
                os.close(fd)
                continue
            found.append(Segment(path, fd, own=False))
        return found


def decode_lines(data: bytes) -> list[list[Any]]:
    """The lines of a spool read, decoded; a line that is not JSON is logged and skipped
    (it can only be a torn write of a process that died before answering)."""
    out = []
    for raw in data.splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            log.warning("unreadable prediction spool line skipped", extra={"bytes": len(raw)})
    return out


def drain(segment: Segment, write: Callable[[list[list[Any]]], None]) -> int:
    """Write a segment's complete unread lines with ``write`` (one call per read), in
    order; returns the lines written. ``write`` raising leaves ``done`` where it was."""
    count = 0
    while True:
        data = segment.unread()
        if not data:
            return count
        lines = decode_lines(data)
        if lines:
            write(lines)
        segment.done += len(data)
        count += data.count(b"\n")


class Drainer:
    """The daemon thread that writes a process's spool (and orphans) to the database.

    It wakes when a line is appended (after at most ``flush_seconds``, to group lines
    into one transaction), when :meth:`flush` asks, and every :data:`SCAN_SECONDS` to
    look for orphans. A failed write is retried after ``retry_seconds``, from the same
    line: rows wait in the spool, in order, for as long as the database is away.

    Args:
        spool: this process's spool.
        write: inserts decoded lines in one transaction (raises on failure).
        flush_seconds: longest wait between an append and its write.
        retry_seconds: pause after a failed write.
    """

    SCAN_SECONDS = 2.0
    IDLE_SECONDS = 60.0  # an idle thread ends; the next append starts another

    def __init__(self, spool: Spool, write: Callable[[list[list[Any]]], None],
                 flush_seconds: float, retry_seconds: float) -> None:
        self.spool, self.write = spool, write
        self.flush_seconds, self.retry_seconds = flush_seconds, retry_seconds
        self.cond = threading.Condition(threading.Lock())
        self.committed = 0  # own lines written to the database
        self.failing: str | None = None  # the last write's error, None once one succeeds
        self.hurry = False
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread if it does not run (drains orphans even without requests)."""
        with self.cond:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="prediction-store-writer")
                self.thread.start()

    def backlog(self) -> int:
        """Own lines appended and not yet written."""
        return self.spool.appended - self.committed

    def flush(self, timeout: float) -> bool:
        """Wait until every line this process appended so far is written; False when
        ``timeout`` ran out first (they stay in the spool)."""
        target = self.spool.appended
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.committed < target:
                if self.thread is None:
                    self.start()
                self.hurry = True
                self.cond.notify()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 0.05))
        return True

    def _run(self) -> None:
        _lower_priority()
        idle_since = time.monotonic()
        next_scan = 0.0
        while True:
            with self.cond:
                if not self.hurry and self.failing is None:
                    self.cond.wait(self.flush_seconds)
                self.hurry = False
            orphans: list[Segment] = []
            if time.monotonic() >= next_scan:
                orphans, next_scan = self.spool.orphans(), time.monotonic() + self.SCAN_SECONDS
            if self._drain_all(orphans):
                idle_since = time.monotonic()
            elif self.failing is not None:
                time.sleep(self.retry_seconds)
            with self.cond:
                if (self.failing is None and self.backlog() == 0
                        and time.monotonic() - idle_since > self.IDLE_SECONDS):
                    self.thread = None
                    return

    def _drain_all(self, orphans: list[Segment]) -> int:
        """Orphans first (they are older), then own segments; returns lines written."""
        written = 0
        try:
            for segment in orphans:
                written += drain(segment, self.write)
                segment.close(delete=True)
                log.info("orphaned prediction spool drained",
                         extra={"segment": os.path.basename(segment.path)})
            for segment in list(self.spool.own):
                count = drain(segment, self.write)
                written += count
                if count and self.failing is not None:
                    log.info("prediction store back; the spool is drained")
                    self.failing = None
                with self.cond:
                    self.committed += count
                    self.cond.notify_all()
                self._retire(segment)
        except Exception as exc:  # the database is away: retry later, from the same line
            if self.failing is None:
                log.warning("prediction store unavailable; predictions wait in the spool",
                            extra={"reason": f"{type(exc).__name__}: {str(exc)[:200]}",
                                   "spooled": self.backlog()})
            self.failing = f"{type(exc).__name__}"
            for segment in orphans:
                if segment.fd >= 0:
                    segment.close(delete=False)
            return written
        if self.failing is not None:
            log.info("prediction store back; the spool is drained")
        self.failing = None
        return written

    def _retire(self, segment: Segment) -> None:
        """Delete an own segment that is complete and no longer appended to."""
        with self.spool.lock:
            own = self.spool.own
            if (segment in own and segment is not own[-1]
                    and segment.done >= segment.size):
                self.spool.own.remove(segment)
                segment.close(delete=True)

    def close(self) -> None:
        """At exit, after a flush: delete the current segment if it is complete."""
        with self.spool.lock:
            for segment in list(self.spool.own):
                if segment.done >= segment.size:
                    self.spool.own.remove(segment)
                    segment.close(delete=True)


# The writer thread's nice value (Linux: per thread): its group inserts yield the CPU to
# the request threads, which cuts the tail of /predict latency (docs/design.md).
WRITER_NICE = 10


def _lower_priority() -> None:
    """Give the calling thread (the writer) :data:`WRITER_NICE` on Linux, where each thread
    has its own nice value; elsewhere, or if refused, it keeps its priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid),
                                                 WRITER_NICE))
    except (AttributeError, OSError):  # pragma: no cover - not Linux, or not allowed
        pass
