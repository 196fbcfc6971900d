"""Specifications for watching.py: per-source decision state, and when an empty directory is
looked into again."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

import ckptserve.watching
from ckptserve import FileSource
from ckptserve.sources import latest_in_directory
from ckptserve.watching import RESCAN_EVERY, UNSEEN, DirectoryWatch, SourceState


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories DirectoryWatch listed, in order."""
    listed: list[Path] = []

    def counting(directory: Path, name: str) -> Path:
        listed.append(directory)
        return latest_in_directory(directory, name)

    monkeypatch.setattr(ckptserve.watching, "latest_in_directory", counting)
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


def test_a_new_source_state_has_decided_nothing(tmp_path):
    """A fresh state has seen no token, so the first look at its source decides."""
    source = FileSource(tmp_path / "actor_latest.pt")
    state = SourceState(source)
    assert (state.seen, state.recheck_at, state.failed_sha, state.missing) == (
        UNSEEN,
        0.0,
        None,
        False,
    )
    assert state.token == source.token


def test_a_missing_source_is_not_looked_at_until_its_token_comes_back(tmp_path):
    """mark_missing() makes the hot path's `token() == seen` hold while the token is None."""
    state = SourceState(FileSource(tmp_path / "actor_latest.pt"))
    state.mark_missing()
    assert state.missing
    assert state.token() == state.seen and state.recheck_at == math.inf
