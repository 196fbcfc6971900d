"""Specifications for background.py: the registry's one low-priority worker thread."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from ckptserve._worker import BackgroundWorker


def test_a_run_is_busy_until_it_finishes():
    """busy is True from submit() until the run returns; wait_idle() waits for that."""
    worker = BackgroundWorker("ckptserve-test")
    assert not worker.busy and worker.wait_idle(0)
    release = threading.Event()
    worker.submit(release.wait)
    assert worker.busy
    assert not worker.wait_idle(0.01)
    release.set()
    assert worker.wait_idle(5)
    assert not worker.busy
    worker.close()


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_runs_are_niced_and_named_for_the_model():
    """The worker thread runs at nice 10 (or lower priority) and is named after the model."""
    worker = BackgroundWorker("ckptserve-critic")
    seen: dict[str, object] = {}

    def run() -> None:
        seen["name"] = threading.current_thread().name
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker.submit(run)
    worker.close()
    assert str(seen["name"]).startswith("ckptserve-critic")
    assert isinstance(seen["nice"], int) and seen["nice"] >= 10


def test_close_waits_for_a_running_job_at_most_timeout() -> None:
    """close(timeout) cancels nothing that runs, but does not wait past the timeout for it."""
    worker = BackgroundWorker("test")
    release = threading.Event()
    worker.submit(release.wait)
    started = time.monotonic()
    worker.close(timeout=0.1)
    assert time.monotonic() - started < 5
    assert worker.busy
    release.set()
    assert worker.wait_idle(30)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_nice_zero_keeps_the_process_priority():
    """With nice=0 the worker runs at the priority of the process that started it."""
    worker = BackgroundWorker("ckptserve-actor", nice=0)
    seen: dict[str, int] = {}

    def run() -> None:
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker.submit(run)
    worker.close()
    assert seen["nice"] == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_run_submitted_after_close_never_starts() -> None:
    """A request that finds a stale model while the registry closes submits a check: after
    close() it is dropped, not raised (the executor would say it cannot schedule after shutdown)."""
    worker = BackgroundWorker("test")
    worker.submit(lambda: None)
    worker.close()
    ran = threading.Event()
    worker.submit(ran.set)
    assert not ran.wait(0.2) and not worker.busy
