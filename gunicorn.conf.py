"""gunicorn settings for the credit-risk API: ``gunicorn -c gunicorn.conf.py 'app:create_app()'``.

Read by the gunicorn master before it imports the app, which is why the environment is
set up first: BLAS/OpenMP thread pools must be sized before numpy is imported, and
prometheus_client picks its multiprocess mode when it is first imported.

Environment: PORT (8080), WEB_CONCURRENCY (2 workers), GUNICORN_THREADS (4 per worker),
GUNICORN_TIMEOUT (30 s),
LOG_LEVEL (INFO), PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory if unset).
"""
import os
import sys

# One BLAS/OpenMP thread per worker: the workers are the parallelism, and oversubscribed
# thread pools only add latency. Must happen before numpy is imported (preload does).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Prometheus multiprocess mode: each process writes its samples under this directory and
# /metrics sums them. Stale files from an earlier run would be summed too, so they are
# removed at start (but not on a config reload of the same master, whose workers live on).
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="credit-api-metrics-")
_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]
if os.environ.get("_CREDIT_API_MASTER_PID") != str(os.getpid()):
    os.environ["_CREDIT_API_MASTER_PID"] = str(os.getpid())
    os.makedirs(_METRICS_DIR, exist_ok=True)
    for _name in os.listdir(_METRICS_DIR):
        if _name.endswith(".db"):
            os.remove(os.path.join(_METRICS_DIR, _name))

# The app package sits beside this file; make it importable however gunicorn was started.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from gunicorn.glogging import Logger  # noqa: E402

from app.logs import configure_logging  # noqa: E402 - after the environment set-up above

bind = [f"0.0.0.0:{int(os.environ.get('PORT', '8080'))}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads, so that a slow client (a body sent a byte a second) holds one thread of a
# worker, not the worker, and a database call waiting for its deadline holds one thread
# too; requests are CPU-bound and short, so a few threads per worker suffice
# (tests/test_durability.py, docs/design.md).
# gunicorn's gthread worker, changed to answer what is queued when it stops (app/worker.py).
worker_class = "app.worker.DrainingThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# Load the model once in the master; forked workers share its memory pages.
preload_app = True
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# How long the master waits for its workers on SIGTERM before it kills them: the drain
# (what was sent before the stop) and the store's spool flush both fit in it.
graceful_timeout = 30
keepalive = 2
# Heartbeat files on tmpfs: a disk-backed /tmp can stall workers into false timeouts.
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
# gunicorn >= 25 opens a control socket under ~/.gunicorn by default; a container with
# a random UID and a read-only home has no use for it.
control_socket_disable = True


class JsonLogger(Logger):
    """gunicorn's logger, its records sent through the app's JSON handler on stdout."""

    def setup(self, cfg):
        """Set up as usual, then hand gunicorn's loggers to the root JSON handler."""
        super().setup(cfg)
        configure_logging(cfg.loglevel.upper())
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True


# Logs: everything as JSON lines on stdout. The per-request access line is written by
# the app (app/logs.py), which knows the request id, route, model version and decision;
# gunicorn's own access log would only add a second, poorer line per request (and its
# cost), so it stays off.
logger_class = JsonLogger
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()
accesslog = None


def post_worker_init(worker):
    """A worker is ready: start its prediction-store writer, which at once drains the
    spool files that dead workers left (ml/monitoring/spool.py)."""
    from ml.monitoring.store import start_all

    start_all()


def worker_exit(server, worker):
    """A worker is stopping (graceful stop, restart): write the predictions it has spooled.

    What the database does not take in time stays in the spool file, which the next
    worker drains; this only makes a graceful stop leave no spool behind. After a SIGTERM
    the flush may take what is left of ``graceful_timeout`` (when the master kills the
    worker) less a second; on other exits (a restart after max_requests) half of it.
    """
    import time

    from ml.monitoring.store import flush_all

    budget = graceful_timeout / 2
    started = getattr(worker, "stop_started", None)
    if started is not None:
        budget = max(1.0, graceful_timeout - (time.monotonic() - started) - 1.0)
    if not flush_all(timeout=budget):
        server.log.warning("predictions still spooled at worker exit; the next worker "
                           "writes them", extra={"worker_pid": worker.pid})


def child_exit(server, worker):
    """A worker ended: drop its live gauges so /metrics sums only live processes."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """The master is stopping: remove the metrics directory if this file created it."""
    if _OWN_METRICS_DIR:
        import shutil

        shutil.rmtree(_METRICS_DIR, ignore_errors=True)


def pre_fork(server, worker):
    """Before forking a worker: move everything the master has loaded (the model, the
    modules) out of the garbage collector's reach. The workers' collections then skip
    those objects, and do not write to their pages, which stay shared (copy-on-write)."""
    import gc

    gc.collect()
    gc.freeze()
