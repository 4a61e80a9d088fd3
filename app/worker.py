"""gunicorn's threaded worker, changed so that a graceful stop answers what is queued.

``gunicorn.conf.py`` sets ``worker_class = "app.worker.DrainingThreadWorker"``. Two things
of gunicorn's ``gthread`` worker (27.x) lose requests that a client has already sent
(benchmarks/bench_graceful.py, docs/design.md "A graceful stop answers what is queued"):

* On SIGTERM it stops accepting but keeps its listening sockets open until it exits.
  Connections the kernel completed meanwhile (the listen backlog) are never accepted, and
  are reset when the last process closes the socket.
* It closes a "Connection: close" answer with ``util.close_graceful`` on its event-loop
  thread, which waits up to 2 s for the client to close its end. While it waits, the
  worker accepts nothing and finishes nothing; during a stop, every answer closes its
  connection, so a client that reads its answers in turn stalls the stop past
  ``graceful_timeout`` and the queued rest is reset.

The subclass drains the backlog and then closes its listeners (new connections are then
refused, which a client can safely retry), and lingers on closing connections in the
event loop instead of blocking it. It relies on these ``ThreadWorker`` internals:
``set_accept_enabled`` (called with False when the run loop ends), ``enqueue_req``,
``finish_request`` (run on the event loop with the handler's future), ``murder_keepalived``
(called on every loop turn, with ``force=True`` at exit), ``nr_conns`` (the stop waits
while it is above zero), ``poller`` and ``TConn``.
"""
from __future__ import annotations

import selectors
import socket
import time
from collections import deque
from functools import partial

from gunicorn.workers.gthread import ThreadWorker, TConn

# As gunicorn's close_graceful: how long a closing connection may take to be closed by
# the client, and how much of its unread input is read meanwhile (RFC 9112 section 9.6:
# closing with unread input would reset the connection and could cut the answer short).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 65536


class DrainingThreadWorker(ThreadWorker):
    """A ``gthread`` worker whose graceful stop answers every connection already queued."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lingering: deque[TConn] = deque()
        self.stop_started: float | None = None

    def handle_exit(self, sig, frame):
        """SIGTERM: note when, so ``worker_exit`` knows how long the master still waits."""
        if self.stop_started is None:
            self.stop_started = time.monotonic()
        super().handle_exit(sig, frame)

    def set_accept_enabled(self, enabled: bool) -> None:
        """When the stop disables accepting: accept what the kernel has queued, then close
        the listening sockets so that later connections are refused, not reset."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                self._accept_queued(listener)
                listener.close()

    def _accept_queued(self, listener: socket.socket) -> None:
        """Accept every connection in ``listener``'s backlog and queue it for a thread."""
        if listener.fileno() == -1:  # drained and closed on an earlier call
            return
        listener.setblocking(False)
        address = listener.getsockname()
        while True:
            try:
                client, peer = listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            self.nr_conns += 1
            client.setblocking(True)
            self.enqueue_req(TConn(self.cfg, client, peer, address))

    def finish_request(self, conn: TConn, fs) -> None:
        """As gunicorn's, except that a connection to close lingers in the event loop."""
        if fs.cancelled() or fs.exception() is not None or fs.result():
            super().finish_request(conn, fs)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # the answer is complete: send FIN
            conn.sock.setblocking(False)
        except OSError:
            self._closed(conn)
            return
        conn.timeout = time.monotonic() + LINGER_SECONDS
        conn.drained = 0
        self.lingering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._linger, conn))

    def _linger(self, conn: TConn, sock: socket.socket) -> None:
        """A closing connection is readable: discard its input; close it at EOF or cap."""
        try:
            data = sock.recv(LINGER_MAX_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_MAX_BYTES:
            self.lingering.remove(conn)
            self._closed(conn)

    def _closed(self, conn: TConn) -> None:
        """Close a connection for good and stop counting it."""
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass  # never registered, or already gone
        conn.close()
        self.nr_conns -= 1

    def murder_keepalived(self, force: bool = False) -> None:
        """Gunicorn's keep-alive expiry, plus closing connections that lingered too long."""
        super().murder_keepalived(force)
        now = time.monotonic()
        while self.lingering and (force or self.lingering[0].timeout <= now):
            self._closed(self.lingering.popleft())
