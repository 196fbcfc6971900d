"""Marks: versions found bad are remembered in a state directory, across restarts."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest

from ckptserve.rollout.marks import BadMarks


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def test_a_mark_survives_a_restart(tmp_path):
    """A new BadMarks on the same state dir (a restarted server) knows the version is bad."""
    state = tmp_path / "state"
    BadMarks(state, "actor").mark(sha("a"), checkpoint="actor_a.pt", reason="NaN on live traffic")
    again = BadMarks(state, "actor")
    assert again.is_bad(sha("a")) and not again.is_bad(sha("b"))
    mark = again.get(sha("a"))
    assert mark is not None and (mark.checkpoint, mark.reason) == (
        "actor_a.pt",
        "NaN on live traffic",
    )
    assert not BadMarks(state, "critic").is_bad(sha("a"))  # marks are per model


def test_a_mark_by_another_worker_is_seen_and_kept(tmp_path):
    """Two workers sharing the state dir: each sees the other's marks, neither loses one."""
    one, two = BadMarks(tmp_path, "actor"), BadMarks(tmp_path, "actor")
    one.mark(sha("a"), checkpoint="a", reason="r1")
    two.mark(sha("b"), checkpoint="b", reason="r2")
    assert one.is_bad(sha("b")) and two.is_bad(sha("a"))
    assert [m.checkpoint for m in BadMarks(tmp_path, "actor").marks()] == ["a", "b"]


def test_the_state_dir_may_not_be_the_model_directory(tmp_path):
    """The server only reads the model directory: state inside it is refused."""
    models = tmp_path / "models"
    models.mkdir()
    for inside in (models, models / "state"):
        with pytest.raises(ValueError, match="inside the model directory"):
            BadMarks(inside, "actor", model_dir=models)
    assert BadMarks(tmp_path / "state", "actor", model_dir=models).marks() == []


def test_an_unmark_clears_it_and_only_the_newest_marks_are_kept(tmp_path):
    """An admin can clear a mark; at most `keep` marks stay, the oldest go first."""
    marks = BadMarks(tmp_path, "actor", keep=2)
    for name in "abc":
        marks.mark(sha(name), checkpoint=name, reason="bad")
    assert [m.checkpoint for m in marks.marks()] == ["b", "c"]
    assert marks.unmark(sha("c")) and not marks.unmark(sha("c"))
    assert [m.checkpoint for m in BadMarks(tmp_path, "actor").marks()] == ["b"]


def test_an_unreadable_marks_file_starts_empty_with_a_warning(tmp_path, caplog):
    """A corrupt file does not stop the server; the next mark writes a good one."""
    (tmp_path / "actor.marks.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="ckptserve.rollout"):
        marks = BadMarks(tmp_path, "actor")
    assert marks.marks() == [] and "unreadable" in caplog.text
    marks.mark(sha("a"), checkpoint="a", reason="bad")
    assert json.loads((tmp_path / "actor.marks.json").read_text())["marks"][0]["checkpoint"] == "a"


def test_only_a_sha256_can_be_marked(tmp_path):
    """A mark names a version by its full sha256."""
    with pytest.raises(ValueError, match="not a sha256"):
        BadMarks(tmp_path, "actor").mark("abc", checkpoint="a", reason="bad")


def test_a_marks_file_that_is_not_a_regular_file_is_not_read(tmp_path, caplog):
    """A FIFO in place of the file reads as no marks, without blocking."""
    os.mkfifo(tmp_path / "actor.marks.json")
    with caplog.at_level(logging.WARNING, logger="ckptserve.rollout"):
        assert BadMarks(tmp_path, "actor").marks() == []
    assert "not a regular file" in caplog.text
