"""Specifications for _copies.py: the private copies checkpoints are loaded from."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from ckptserve._copies import PrivateCopies, remove_stale_caches


def test_private_copies_prune_keeps_one_sha_and_never_touches_other_files(tmp_path):
    """Only files named by a sha256 are ours; prune keeps the live one's."""
    keep, drop = "a" * 64, "b" * 64
    copies = PrivateCopies(tmp_path)
    for name in (f"{keep}.pt", f"{drop}.pt", drop, ".spool-left-by-a-crash", "unrelated.txt"):
        (tmp_path / name).write_text("x")
    copies.prune(keep=keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{keep}.pt", "unrelated.txt"]
    copies.close()
    assert [p.name for p in tmp_path.iterdir()] == ["unrelated.txt"]


def test_an_owned_temp_dir_is_removed_on_close():
    """Without a directory PrivateCopies makes a temp dir and removes it on close()."""
    copies = PrivateCopies()
    assert copies.directory.is_dir()
    copies.close()
    assert not copies.directory.exists()


def test_a_copy_stays_while_its_model_lives_and_is_removed_after(tmp_path):
    """A copy an old model may still map survives prune; it goes once that model is gone."""
    old, new = "a" * 64, "b" * 64
    copies = PrivateCopies(tmp_path)
    for name in (old, new):
        (tmp_path / name).write_text("x")

    class Model:
        pass

    model = Model()
    copies.keep_while(old, model)
    copies.prune(keep=new)
    assert sorted(p.name for p in tmp_path.iterdir()) == [old, new]
    del model
    deadline = time.monotonic() + 10
    while (tmp_path / old).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p.name for p in tmp_path.iterdir()] == [new]
    copies.close()
    assert list(tmp_path.iterdir()) == []


def _gone(path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not path.exists()


class _Model:
    pass


def test_a_copy_is_not_discarded_while_a_model_maps_it(tmp_path):
    """discard() (a failed candidate of the same bytes) leaves a copy that a live model holds."""
    sha = "c" * 64
    copies = PrivateCopies(tmp_path)
    (tmp_path / sha).write_text("x")
    model = _Model()
    copies.keep_while(sha, model)
    copies.discard(sha)
    assert (tmp_path / sha).exists()
    del model
    assert _gone(tmp_path / sha)
    copies.close()


def test_copies_released_during_a_load_are_removed_when_it_ends(tmp_path):
    """A load may be about to open a copy of the same bytes (a rollback): removal waits for it."""
    old, new = "d" * 64, "e" * 64
    copies = PrivateCopies(tmp_path)
    for name in (old, new):
        (tmp_path / name).write_text("x")
    model = _Model()
    copies.keep_while(old, model)
    copies.prune(keep=new)
    with copies.loading():
        del model
        time.sleep(0.3)  # the reaper has seen the release by now
        assert (tmp_path / old).exists()
    assert not (tmp_path / old).exists()
    copies.close()


def test_a_closed_cache_keeps_nothing_and_starts_no_thread(tmp_path):
    """keep_while() after close() does not hold the copy or start the reaper again."""
    copies = PrivateCopies(tmp_path / "copies")
    copies.close()
    before = threading.active_count()
    copies.keep_while("f" * 64, _Model())
    assert threading.active_count() == before


def test_a_spooled_file_is_named_by_its_sha256_and_an_existing_copy_is_kept(tmp_path):
    """adopt() names a finished spool file; the same bytes already there keep their file."""
    copies = PrivateCopies(tmp_path)
    sha = "0" * 64
    fd, tmp = copies.spool_file()
    os.write(fd, b"bytes")
    os.close(fd)
    first = copies.adopt(tmp, sha, 5)
    assert first == copies.path_for(sha) and first.read_bytes() == b"bytes"
    inode = first.stat().st_ino
    fd, tmp = copies.spool_file()
    os.write(fd, b"bytes")
    os.close(fd)
    assert copies.adopt(tmp, sha, 5).stat().st_ino == inode
    assert not tmp.exists()
    copies.close()


def test_the_cache_of_a_process_killed_with_sigkill_is_removed_by_the_next_one(tmp_path):
    """kill -9 leaves a cache directory behind; the next PrivateCopies removes it, and never one
    whose process still runs."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = "import os, sys; from ckptserve._copies import PrivateCopies; c = PrivateCopies(); " \
           "(c.directory / ('a' * 64)).write_text('x'); print(c.directory, flush=True); " \
           "os.kill(os.getpid(), 9)"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    left = tmp_path / os.path.basename(done.stdout.strip())
    assert done.returncode == -9 and left.is_dir(), done
    mine = tmp_path / f"ckptserve-copies-{os.getpid()}-alive"
    mine.mkdir()
    assert remove_stale_caches(tmp_path) == 1
    assert not left.exists()
    assert mine.is_dir()
