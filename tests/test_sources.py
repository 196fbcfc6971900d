"""DETECT: sources give a cheap token and read a checkpoint once; names stay inside their directory."""

from __future__ import annotations

import hashlib
import os

import pytest

from ckptserve import (
    FileSource,
    IntegrityError,
    ManifestSource,
    PathNotAllowed,
    VersionKey,
    confine,
    publish,
)
from ckptserve.sources import make_source
from policies import seeded_actor


def test_file_token_is_none_while_missing_and_the_stat_key_otherwise(tmp_path):
    """A missing file has no token; an existing one has its full stat key, even with mtime 0."""
    path = tmp_path / "actor_latest.pt"
    source = FileSource(path)
    assert source.token() is None
    path.write_bytes(b"abc")
    os.utime(path, ns=(0, 0))
    assert source.token() == VersionKey.from_stat(os.stat(path)).as_tuple()
    assert source.token()[0] == 0


def test_file_fetch_reads_the_bytes_once_with_their_hash(tmp_path):
    """fetch() copies the bytes once into the spool as <sha256>, with the resolved path and key."""
    target = tmp_path / "actor_1.pt"
    target.write_bytes(b"checkpoint bytes")
    link = tmp_path / "actor_latest.pt"
    link.symlink_to(target.name)
    spool = tmp_path / "spool"
    snapshot = FileSource(link).fetch(spool)
    assert snapshot.file.read_bytes() == b"checkpoint bytes"
    assert snapshot.size == len(b"checkpoint bytes")
    assert snapshot.sha256 == hashlib.sha256(b"checkpoint bytes").hexdigest()
    assert [p.name for p in spool.iterdir()] == [snapshot.sha256]
    assert snapshot.resolved == target.resolve()
    assert snapshot.key == VersionKey.from_stat(os.stat(target))
    with pytest.raises(FileNotFoundError):
        FileSource(tmp_path / "missing.pt").fetch(spool)


def test_manifest_fetch_verifies_sha256_and_size(tmp_path):
    """A manifest source reads the named checkpoint and checks it against the manifest."""
    checkpoint = publish(seeded_actor(0), tmp_path, format="state_dict", metadata={"step": 1})
    source = ManifestSource(tmp_path / "actor_latest.json")
    spool = tmp_path / "spool"
    snapshot = source.fetch(spool)
    assert snapshot.path == checkpoint and snapshot.metadata["step"] == 1
    assert source.digest() == snapshot.sha256

    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="sha256"):
        source.fetch(spool)
    assert [p.name for p in spool.iterdir()] == [snapshot.sha256]  # the refused copy is gone


def test_make_source_picks_manifest_file_or_directory_entry(tmp_path):
    """A .json path is a manifest; a directory prefers its manifest, then `*_latest.pt`."""
    assert make_source(tmp_path / "x_latest.json").kind == "manifest"
    assert make_source(tmp_path / "x_latest.pt").kind == "file"
    assert make_source(tmp_path).path == tmp_path / "actor_latest.json"  # nothing published yet

    (tmp_path / "policy_latest.pt").write_bytes(b"x")
    assert make_source(tmp_path).path == tmp_path / "policy_latest.pt"
    (tmp_path / "policy_latest.json").write_text("{}")
    assert make_source(tmp_path).path == tmp_path / "policy_latest.json"
    assert make_source(tmp_path, name="policy").kind == "manifest"


def test_confine_accepts_names_inside_the_directory(tmp_path):
    """A plain file name resolves inside the directory."""
    assert (
        confine(tmp_path, "actor_20260101_000000.pt")
        == tmp_path.resolve() / "actor_20260101_000000.pt"
    )


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "", "a\x00b", "sub/../../x"])
def test_confine_refuses_names_that_leave_the_directory(tmp_path, name):
    """`..`, absolute paths, empty names and NUL bytes are refused before any file is opened."""
    with pytest.raises(PathNotAllowed):
        confine(tmp_path, name)


def test_confine_refuses_a_symlink_pointing_out(tmp_path):
    """A link inside the directory that points outside it is refused, even if its target is missing."""
    inside = tmp_path / "models"
    inside.mkdir()
    (inside / "escape.pt").symlink_to(tmp_path / "elsewhere" / "secret.pt")
    with pytest.raises(PathNotAllowed):
        confine(inside, "escape.pt")


def test_fetching_the_same_bytes_again_keeps_the_existing_copy(tmp_path):
    """The copy a live model may still map is not replaced by a new file of the same bytes."""
    ckpt = tmp_path / "actor_latest.pt"
    ckpt.write_bytes(b"same bytes" * 100)
    spool = tmp_path / "copies"
    first = FileSource(ckpt).fetch(spool)
    inode = first.file.stat().st_ino
    again = FileSource(ckpt).fetch(spool)
    assert again.file == first.file and again.file.stat().st_ino == inode
    assert sorted(p.name for p in spool.iterdir()) == [first.sha256]
