"""The poll thread behind network sources: the last token read, kept through failures, never
overwritten by a read that began before a fresher token was handed in."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Hashable

from ckptserve._polling import PENDING, Poll


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def test_a_read_that_began_before_an_offer_does_not_overwrite_it() -> None:
    """A fetch that read the source hands its token in while a slow poll is under way: the
    poll's older answer is dropped; the next poll's answer is taken."""
    entered, release = threading.Event(), threading.Event()
    answers = iter(["old", "newest"])

    def read() -> Hashable:
        entered.set()
        release.wait(20)
        return next(answers)

    poll = Poll(read, 3600, name="test-poll")
    try:
        assert poll.value is PENDING
        assert entered.wait(20)
        poll.offer("fresh")
        release.set()
        wait_until(lambda: poll.polls == 1, "the slow poll to end")
        assert poll.value == "fresh"
        poll.poll_once()
        assert poll.value == "newest"
    finally:
        release.set()
        poll.close()


def test_a_failing_read_keeps_the_last_token_and_says_why() -> None:
    outcomes: list[object] = ["t1", OSError("connection refused"), "t2"]

    def read() -> Hashable:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    poll = Poll(read, 3600, name="test-poll")
    try:
        wait_until(lambda: poll.polls == 1, "the first poll")
        poll.poll_once()
        assert poll.value == "t1"
        health = poll.health()
        assert health["error"] == "OSError: connection refused" and health["error_at"], health
        poll.poll_once()
        assert poll.value == "t2" and poll.health()["error"] is None
    finally:
        poll.close()


def test_the_thread_ends_when_its_poll_is_collected() -> None:
    """The thread holds its poll weakly: dropping the source that owns it stops the polling."""

    def started() -> threading.Thread:
        poll = Poll(lambda: "t", 3600, name="test-poll-collected")
        wait_until(lambda: poll.polls == 1, "the first poll")
        return poll._thread

    thread = started()
    gc.collect()
    thread.join(20)
    assert not thread.is_alive()
