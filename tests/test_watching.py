"""Specifications for _watching.py: the per-source state machine, and when a directory whose
followed path is missing is looked into again."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

import ckptserve._watching
from ckptserve import FileSource
from ckptserve._watching import (
    RESCAN_EVERY,
    UNSEEN,
    Action,
    DirectoryWatch,
    Outcome,
    Phase,
    SourceState,
    Timing,
    Watch,
    advance,
    next_action,
)
from ckptserve.naming import latest_in_directory


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories DirectoryWatch listed, in order."""
    listed: list[Path] = []

    def counting(directory: Path, name: str, **kw: bool) -> Path:
        listed.append(directory)
        return latest_in_directory(directory, name, **kw)

    monkeypatch.setattr(ckptserve._watching, "latest_in_directory", counting)
    return listed


def settle(directory: Path) -> None:
    """Date the directory's last change 10 s back, past any timestamp granularity."""
    then = time.time_ns() - 10_000_000_000
    os.utime(directory, ns=(then, then))


def test_an_unchanged_directory_is_listed_at_most_once_per_rescan_interval(tmp_path, listings):
    """While its entries stay the same, the directory is listed again only every RESCAN_EVERY s."""
    settle(tmp_path)
    watch = DirectoryWatch(tmp_path, "actor", signed_only=False)
    following = tmp_path / "actor_latest.json"
    for now in (0.0, 0.1, RESCAN_EVERY - 0.01):
        assert watch.find(now, following) is None
    assert len(listings) == 1
    assert watch.find(RESCAN_EVERY, following) is None
    assert len(listings) == 2


def test_a_checkpoint_copied_in_is_found_at_the_next_call(tmp_path, listings):
    """A new entry changes the directory's stat key: the next call lists it and finds the file."""
    settle(tmp_path)
    watch = DirectoryWatch(tmp_path, "actor", signed_only=False)
    following = tmp_path / "actor_latest.json"
    assert watch.find(0.0, following) is None
    (tmp_path / "actor_latest.pt").write_bytes(b"checkpoint")
    assert watch.find(0.01, following) == tmp_path / "actor_latest.pt"
    assert len(listings) == 2


def test_a_directory_changed_just_now_is_listed_on_every_call(tmp_path, listings):
    """A change within the last second may share its timestamp with the next: keep listing."""
    (tmp_path / "notes.txt").write_text("just now")
    watch = DirectoryWatch(tmp_path, "actor", signed_only=False)
    for now in (0.0, 0.1, 0.2):
        watch.find(now, tmp_path / "actor_latest.json")
    assert len(listings) == 3


def test_signed_only_follows_manifests_not_plain_checkpoints(tmp_path):
    """With require_signature a plain `*_latest.pt` is not followed; a manifest is."""
    watch = DirectoryWatch(tmp_path, "actor", signed_only=True)
    following = tmp_path / "actor_latest.json"
    (tmp_path / "critic_latest.pt").write_bytes(b"checkpoint")
    assert watch.find(0.0, following) is None
    (tmp_path / "critic_latest.json").write_text("{}")
    assert watch.find(0.1, following) == tmp_path / "critic_latest.json"


def test_a_missing_directory_is_not_listed_on_every_call(tmp_path, listings):
    """A directory that went away is looked for again every RESCAN_EVERY s, not per call."""
    gone = tmp_path / "gone"
    watch = DirectoryWatch(gone, "actor", signed_only=False)
    for now in (0.0, 0.1, 0.2):
        assert watch.find(now, gone / "actor_latest.json") is None
    assert len(listings) == 1


TIMING = Timing(retry_after=5.0, verify_every=2.0, rescan_every=0.5)


def moved(state: SourceState, outcome: Outcome, token: object = "t1", sha: str | None = "a" * 64,
          now: float = 100.0) -> SourceState:  # fmt: skip
    return advance(state, outcome, token=token, sha256=sha, now=now, timing=TIMING)


def test_a_new_source_state_has_decided_nothing(tmp_path):
    """A fresh watch has seen no token, so the first look at its source loads."""
    source = FileSource(tmp_path / "actor_latest.pt")
    watch = Watch(source, TIMING)
    assert watch.state == SourceState(Phase.NEW, UNSEEN, 0.0, None)
    assert watch.token == source.token
    assert next_action(watch.state, "any token", now=0.0) is Action.LOAD


def test_next_action_is_stateless_and_idempotent():
    """The same state, token and time always give the same action."""
    live = moved(SourceState(), Outcome.LOADED)
    for _ in range(3):
        assert next_action(live, "t1", 100.5) is Action.NONE
        assert next_action(live, "t2", 100.5) is Action.LOAD
        assert next_action(live, "t1", 102.0) is Action.VERIFY


def test_a_loaded_source_is_verified_every_verify_interval_and_never_without_one():
    """LIVE: the same token is looked at again after verify_every; 0 means never."""
    live = moved(SourceState(), Outcome.LOADED)
    assert (live.phase, live.token, live.due) == (Phase.LIVE, "t1", 102.0)
    plain = advance(SourceState(), Outcome.LOADED, token="t1", sha256=None, now=0.0,
                    timing=Timing(retry_after=5.0, verify_every=0.0))  # fmt: skip
    assert plain.due == math.inf
    assert moved(live, Outcome.VERIFIED, now=102.0).due == 104.0


def test_failed_content_is_retried_after_retry_after_or_when_its_token_changes():
    """FAILED: not loaded again unchanged until retry_after has passed."""
    failed = moved(SourceState(), Outcome.FAILED)
    assert failed.phase is Phase.FAILED and failed.sha256 == "a" * 64
    assert next_action(failed, "t1", 104.9) is Action.NONE
    assert next_action(failed, "t1", 105.0) is Action.LOAD
    assert next_action(failed, "t2", 100.1) is Action.LOAD


def test_a_superseded_load_is_looked_at_again_at_once():
    """SUPERSEDED: the source moved while it was read; the next look loads whatever is there."""
    state = moved(moved(SourceState(), Outcome.LOADED), Outcome.SUPERSEDED)
    assert state.phase is Phase.NEW
    assert next_action(state, "t1", 100.0) is Action.LOAD


def test_a_missing_source_is_recorded_once_and_looked_for_every_rescan_interval():
    """MISSING: a token of None is recorded once; then looked for again after rescan_every."""
    missing = moved(SourceState(), Outcome.MISSING, token=None, sha=None)
    assert (missing.phase, missing.token, missing.sha256) == (Phase.MISSING, None, None)
    assert next_action(SourceState(), None, 0.0) is Action.MISSING
    assert next_action(missing, None, 100.1) is Action.NONE
    assert next_action(missing, None, 100.5) is Action.MISSING
    assert next_action(missing, "back", 100.1) is Action.LOAD
