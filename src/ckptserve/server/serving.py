"""Running the server under uvicorn, with the limits a load balancer expects: a deadline for a
request's headers (connection.py), the open-file limit raised at start, a connection limit below
it, and with `--workers N` the time a worker needs to start and a log line saying why one is
replaced.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import resource
import secrets
import shutil
import signal
import tempfile
from dataclasses import replace
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from .connection import http_protocol
from .settings import ENV_PREFIX, Settings

__all__ = [
    "RESERVED_FILES",
    "connection_limit",
    "exit_reason",
    "raise_open_file_limit",
    "run",
]

log = logging.getLogger("ckptserve.server")

#: Descriptors kept free for what is not a connection: checkpoints, private copies, lock and
#: metrics files, logs, the listening sockets.
RESERVED_FILES = 128


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); return the soft
    limit now in force. Logged when it changed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIM_INFINITY
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
            return soft
        log.info("raised the open-file limit from %d to %d", soft, hard)
        return hard
    return soft


def connection_limit(given: int | None, open_files: int) -> int | None:
    """uvicorn's `limit_concurrency` (None: no limit): `given` (0: no limit), or by default the
    open-file limit less RESERVED_FILES, so that past it requests get 503 at once while loads
    can still open files."""
    if given is not None:
        return given or None
    if open_files == resource.RLIM_INFINITY:
        return None
    return max(1, open_files - RESERVED_FILES)


def exit_reason(exitcode: int | None, *, answered: bool, healthcheck: float) -> str:
    """Why a worker process ended, for the log: `answered` is False when it was running but
    did not answer uvicorn's health check (uvicorn then kills it)."""
    if not answered:
        return (
            f"did not answer the health check within {healthcheck:g} s "
            "(--timeout-worker-healthcheck) and was killed"
        )
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends it too)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {exitcode}"


class _Worker(Process):
    """A uvicorn worker process that starts with SIGHUP ignored (the disposition survives the
    spawn's exec): until its lifespan installs the handler that makes SIGHUP "look at the sources
    again", a SIGHUP would end it, and a worker still starting reads its sources anyway."""

    def start(self) -> None:
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGHUP, previous)


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor (its keep-alive loop, as in uvicorn 0.52+), which also logs
    why it replaces a worker: uvicorn says only "Child process died", and starts every worker
    with SIGHUP ignored until it can handle it (`_Worker`)."""

    def _started(self) -> Process:
        process = _Worker(self.config, self.sockets)
        process.start()
        return process

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            self.processes.append(self._started())

    def handle_ttin(self) -> None:
        log.info("SIGTTIN: one more worker")
        self.processes_num += 1
        self.processes.append(self._started())

    def handle_hup(self) -> None:
        """SIGHUP means what it means to one worker, "look at the sources again now", in every
        worker (uvicorn would restart them all)."""
        log.info("SIGHUP: passed to %d workers", len(self.processes))
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            # Ended by itself (or by a signal) before the health check gave up on it, or hung:
            # told apart before uvicorn's own kill, which would make every exit a SIGKILL.
            answered = not process.process.is_alive()
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker [%s] failed to start: stopping the server", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            reason = exit_reason(process.exitcode, answered=answered,
                                 healthcheck=self.config.timeout_worker_healthcheck)  # fmt: skip
            log.warning("worker [%s] %s: replaced by a new worker", process.pid, reason)
            self.processes[idx] = self._started()


def run(settings: Settings) -> None:
    """Serve `settings` under uvicorn until it is stopped: one process, or `settings.workers`
    worker processes under a supervisor."""
    from .app import SETTINGS_ENV, app_from_env, create_app
    from .logs import log_config
    from .metrics import MULTIPROC_ENV

    logging_config = log_config(settings.log_format, settings.log_level)
    logging.config.dictConfig(logging_config)  # now, so that what follows is logged too
    open_files = raise_open_file_limit()
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": logging_config,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        "http": http_protocol(settings.timeout_headers),
        "limit_concurrency": connection_limit(settings.limit_concurrency, open_files),
        "timeout_keep_alive": settings.timeout_keep_alive,
        "timeout_worker_healthcheck": settings.timeout_worker_healthcheck,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    own_dir = own_state = None
    if not settings.prometheus_multiproc_dir:
        own_dir = tempfile.mkdtemp(prefix="ckptserve-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir  # prometheus-client reads it in each worker
    if settings.registry.state_dir is None:
        # The workers share their pins through a state directory: without --state-dir, one of
        # the server's own, gone with it (a pin then outlives no restart).
        own_state = tempfile.mkdtemp(prefix="ckptserve-state-")
        registry = replace(settings.registry, state_dir=own_state)
        settings = settings.model_copy(update={"registry": registry})
    secret = settings.feedback_secret
    if secret is None or not secret.get_secret_value():
        # One random key for every worker (they read it from the environment): a request id
        # one worker issued is then good for feedback at any of them.
        os.environ[f"{ENV_PREFIX}FEEDBACK_SECRET"] = secrets.token_hex(32)
    os.environ[SETTINGS_ENV] = settings.to_env()
    target = f"{app_from_env.__module__}:{app_from_env.__name__}"
    config = uvicorn.Config(target, factory=True, workers=settings.workers, **common)
    try:
        _Supervisor(config, sockets=[config.bind_socket()]).run()
    except KeyboardInterrupt:
        pass
    finally:
        for scratch in (own_dir, own_state):
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
