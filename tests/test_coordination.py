"""Specifications for _coordination.py: load slots shared by the processes of one user."""

from __future__ import annotations

import os

import pytest

from ckptserve._coordination import LoadSlots


def test_a_lock_directory_is_created_private(tmp_path):
    """A new lock directory is 0700: nobody else can take or block the slots."""
    root = tmp_path / "locks"
    LoadSlots("k", 1, directory=str(root))
    assert oct(root.stat().st_mode & 0o777) == oct(0o700)


def test_an_existing_lock_directory_others_can_write_is_refused(tmp_path):
    """A lock directory that someone else could have pre-created (or can write) is not used."""
    root = tmp_path / "locks"
    root.mkdir(mode=0o777)
    os.chmod(root, 0o777)
    with pytest.raises(PermissionError, match="mode 0700"):
        LoadSlots("k", 1, directory=str(root))


def test_a_symlinked_lock_directory_is_refused(tmp_path):
    """The lock directory may not be a symlink to somewhere else."""
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "locks").symlink_to(tmp_path / "real")
    with pytest.raises(PermissionError, match="not a directory"):
        LoadSlots("k", 1, directory=str(tmp_path / "locks"))


def test_a_symlinked_lock_file_is_never_followed(tmp_path):
    """Lock files are opened with O_NOFOLLOW: a planted link makes the slot unusable, not a
    write through to its target."""
    root = tmp_path / "locks"
    slots = LoadSlots("k", 1, directory=str(root))
    target = tmp_path / "target"
    target.write_text("untouched")
    slots.paths[0].symlink_to(target)
    with pytest.raises(OSError):
        slots.busy()
    assert target.read_text() == "untouched"
