"""Specifications for attempts.py: what became of each load attempt, told once to logs and listeners."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from ckptserve import CheckpointError, ValidationError, VersionKey
from ckptserve._attempts import AttemptLog, as_checkpoint_error
from ckptserve.sources import Snapshot

SHA = "ab" * 32


def snapshot_of(name: str) -> Snapshot:
    resolved = Path("models") / name
    key = VersionKey(mtime_ns=1, size=2, ino=3, dev=4, ctime_ns=5)
    return Snapshot(key.as_tuple(), Path("spool") / SHA, 2, resolved, resolved, SHA, key)


def test_a_failure_is_the_last_error_until_a_model_is_swapped_in():
    """A failed attempt sets last_error; the same bytes again keep it; a swap clears it."""
    attempts: AttemptLog[object] = AttemptLog("actor", keep=5)
    error = CheckpointError("truncated")
    attempts.failed(None, error, None, Path("models/actor_latest.pt"), started=0.0, forced=False)
    assert attempts.last_exc is error
    assert attempts.last_error is not None
    assert {k: v for k, v in attempts.last_error.items() if k != "at"} == {
        "result": "failed",
        "reason": "truncated",
        "checkpoint": "actor_latest.pt",
        "sha256": None,
        "key": None,
    }
    attempts.loaded(None, snapshot_of("actor_1.pt"), started=0.0, forced=False, unchanged=True)
    assert attempts.last_exc is error
    attempts.loaded(None, snapshot_of("actor_2.pt"), started=0.0, forced=True, unchanged=False)
    assert attempts.last_error is None and attempts.last_exc is None
    assert [(a.result, a.checkpoint, a.forced) for a in attempts.history] == [
        ("failed", "actor_latest.pt", False),
        ("unchanged", "actor_1.pt", False),
        ("ok", "actor_2.pt", True),
    ]


def test_a_checkpoint_that_was_read_is_named_by_what_was_read():
    """Past the read, a failure names the resolved checkpoint, its sha256 and stat key."""
    attempts: AttemptLog[object] = AttemptLog("actor", keep=5)
    snapshot = snapshot_of("actor_20260412_143022.pt")
    attempts.failed(
        None, ValidationError("NaN"), snapshot, Path("actor_latest.pt"), started=0.0, forced=False
    )
    assert attempts.last_error is not None
    assert attempts.last_error["result"] == "rejected"
    assert attempts.last_error["checkpoint"] == "actor_20260412_143022.pt"
    assert attempts.last_error["sha256"] == SHA
    assert attempts.last_error["key"] == snapshot.key.to_dict()
    assert attempts.history[-1].sha256 == SHA


def test_history_is_bounded_and_count_is_not():
    """The history keeps the last `keep` attempts; count says how many there were in all."""
    attempts: AttemptLog[object] = AttemptLog("actor", keep=2)
    for i in range(3):
        attempts.loaded(None, snapshot_of(f"a{i}.pt"), started=0.0, forced=False, unchanged=False)
    assert [a.checkpoint for a in attempts.history] == ["a1.pt", "a2.pt"]
    assert attempts.count == 3


def test_listeners_get_the_owner_and_one_that_raises_is_logged(caplog):
    """Each listener is called as listener(owner, attempt); one that raises stops nothing."""
    attempts: AttemptLog[str] = AttemptLog("actor", keep=5)
    seen: list[tuple[str, str]] = []

    def broken(owner: str, attempt: object) -> None:
        raise RuntimeError("listener bug")

    attempts.listeners += [broken, lambda owner, attempt: seen.append((owner, attempt.result))]
    with caplog.at_level(logging.INFO, logger="ckptserve.registry"):
        attempts.loaded("reg", snapshot_of("a.pt"), started=0.0, forced=False, unchanged=False)
    assert seen == [("reg", "ok")]
    assert "load listener failed" in caplog.text


@pytest.mark.parametrize(("failed", "level"), [(False, logging.INFO), (True, logging.WARNING)])
def test_each_attempt_is_one_structured_log_line(caplog, failed, level):
    """One line per attempt on the registry's logger, its fields also as record attributes."""
    attempts: AttemptLog[None] = AttemptLog("critic", keep=5)
    with caplog.at_level(logging.INFO, logger="ckptserve.registry"):
        if failed:
            attempts.failed(
                None, CheckpointError("bad"), None, Path("c.pt"), started=time.perf_counter(),
                forced=False,
            )  # fmt: skip
        else:
            attempts.loaded(
                None, snapshot_of("c.pt"), started=time.perf_counter(), forced=False,
                unchanged=False,
            )  # fmt: skip
    (record,) = caplog.records
    assert record.levelno == level
    assert (record.model, record.checkpoint, record.result) == (  # type: ignore[attr-defined]
        "critic",
        "c.pt",
        "failed" if failed else "ok",
    )
    assert record.getMessage().startswith(f"load {record.result}: c.pt")  # type: ignore[attr-defined]


def test_any_exception_becomes_a_checkpoint_error_caused_by_it():
    """A loader bug is recorded as a CheckpointError whose __cause__ is the original."""
    original = KeyError("weights")
    error = as_checkpoint_error(original)
    assert isinstance(error, CheckpointError)
    assert error.__cause__ is original
    assert str(error) == "load failed: KeyError: 'weights'"
