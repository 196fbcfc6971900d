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
from ckptserve._copies import PrivateCopies
from ckptserve.errors import CheckpointError
from ckptserve.manifest import MAX_MANIFEST_BYTES
from ckptserve.naming import latest_in_directory, record_for
from ckptserve.sources import checkpoint_source, make_source
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
    copies = PrivateCopies(spool)  # held: collecting it removes its copies
    snapshot = FileSource(link).fetch(copies)
    assert snapshot.file.read_bytes() == b"checkpoint bytes"
    assert snapshot.size == len(b"checkpoint bytes")
    assert snapshot.sha256 == hashlib.sha256(b"checkpoint bytes").hexdigest()
    assert [p.name for p in spool.iterdir()] == [snapshot.sha256]
    assert snapshot.resolved == target.resolve()
    assert snapshot.key == VersionKey.from_stat(os.stat(target))
    with pytest.raises(FileNotFoundError):
        FileSource(tmp_path / "missing.pt").fetch(copies)


def test_manifest_fetch_verifies_sha256_and_size(tmp_path):
    """A manifest source reads the named checkpoint and checks it against the manifest."""
    checkpoint = publish(seeded_actor(0), tmp_path, format="state_dict", metadata={"step": 1})
    source = ManifestSource(tmp_path / "actor_latest.json")
    spool = tmp_path / "spool"
    copies = PrivateCopies(spool)
    snapshot = source.fetch(copies)
    assert snapshot.path == checkpoint and snapshot.metadata["step"] == 1
    assert source.digest() == snapshot.sha256

    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="size"):
        source.fetch(copies)
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
    copies = PrivateCopies(spool)
    first = FileSource(ckpt).fetch(copies)
    inode = first.file.stat().st_ino
    again = FileSource(ckpt).fetch(copies)
    assert again.file == first.file and again.file.stat().st_ino == inode
    assert sorted(p.name for p in spool.iterdir()) == [first.sha256]


# ---- what a hostile directory can put where a checkpoint or manifest should be -----------------


def test_a_fifo_as_the_checkpoint_is_refused_without_blocking(tmp_path):
    """Opening a FIFO for reading would wait for a writer forever: it is refused at once."""
    fifo = tmp_path / "actor_latest.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="FIFO, not a regular file"):
        FileSource(fifo).fetch(PrivateCopies(tmp_path / "copies"))


def test_a_link_to_dev_zero_is_refused_before_anything_is_copied(tmp_path):
    """A character device never ends: nothing of it reaches the copy directory."""
    link = tmp_path / "actor_latest.pt"
    link.symlink_to("/dev/zero")
    copies = PrivateCopies(tmp_path / "copies")
    with pytest.raises(CheckpointError, match="character device"):
        FileSource(link).fetch(copies)
    assert list(copies.directory.iterdir()) == []


def test_a_checkpoint_over_the_byte_limit_is_refused_and_says_which_limit(tmp_path):
    """max_checkpoint_bytes bounds what is read, whatever the file claims."""
    path = tmp_path / "actor_latest.pt"
    path.write_bytes(b"x" * 1000)
    copies = PrivateCopies(tmp_path / "copies")
    with pytest.raises(CheckpointError, match="max-checkpoint-bytes"):
        FileSource(path).fetch(copies, limit=999)
    assert FileSource(path).fetch(copies, limit=1000).size == 1000


def test_a_manifest_source_reads_no_more_than_the_manifest_says(tmp_path):
    """In manifest mode the checkpoint is read up to the size the manifest states, plus one."""
    checkpoint = publish(seeded_actor(0), tmp_path, format="state_dict")
    with open(checkpoint, "ab") as f:
        f.write(b"\0" * (1 << 20))  # grown after publishing
    with pytest.raises(CheckpointError, match="the size the manifest states"):
        ManifestSource(tmp_path / "actor_latest.json").fetch(PrivateCopies(tmp_path / "copies"))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"checkpoint": "a.pt", "sha256": "'
        + b"0" * 64
        + b'", "size": 1, "signature": "\xc3\xa9"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"checkpoint": "a.pt", "sha256": "' + b"0" * 64 + b'", "size": ' + b"9" * 5000 + b"}",
        b"\xff\xfe not utf-8",
        b"{" + b" " * MAX_MANIFEST_BYTES + b"}",
    ],
    ids=["non-ascii-signature", "nested-100k", "5000-digit-int", "not-utf8", "over-64KiB"],
)
def test_a_malformed_manifest_is_an_integrity_error_with_one_line(tmp_path, raw):
    """Whatever the manifest holds, reading it raises IntegrityError with a one-line reason."""
    manifest = tmp_path / "actor_latest.json"
    manifest.write_bytes(raw)
    source = ManifestSource(manifest, signing_key="key", require_signature=True)
    with pytest.raises(IntegrityError) as caught:
        source.fetch(PrivateCopies(tmp_path / "copies"))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200
    assert source.digest() is None


def test_dev_zero_as_the_manifest_reads_at_most_the_manifest_limit(tmp_path):
    """/dev/zero as the manifest is refused as not a regular file, not read until memory runs out."""
    manifest = tmp_path / "actor_latest.json"
    manifest.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="not a regular file"):
        ManifestSource(manifest).fetch(PrivateCopies(tmp_path / "copies"))


def test_a_target_outside_the_directory_is_marked_so_its_details_are_withheld(tmp_path):
    """A symlink out of the model's directory is followed, but the snapshot says it left."""
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"bytes")
    models = tmp_path / "models"
    models.mkdir()
    (models / "actor_latest.pt").symlink_to(outside)
    (models / "inside.pt").write_bytes(b"bytes")
    copies = PrivateCopies(tmp_path / "copies")
    assert not FileSource(models / "actor_latest.pt").fetch(copies).inside
    assert FileSource(models / "inside.pt").fetch(copies).inside


def test_signed_only_directories_are_followed_through_manifests_alone(tmp_path):
    """With a key, a plain `*_latest.pt` is never chosen over (or instead of) a manifest."""
    (tmp_path / "actor_latest.pt").write_bytes(b"x")
    assert latest_in_directory(tmp_path, "actor", signed_only=True).name == "actor_latest.json"
    assert latest_in_directory(tmp_path, "actor").name == "actor_latest.pt"


def test_an_earlier_checkpoint_beside_a_manifest_is_checked_by_its_record_or_a_known_digest(
    tmp_path,
):
    """A pin or a fallback beside a manifest is read through the checkpoint's own record, or by
    a digest a manifest vouched for; with neither it cannot be checked, so it is refused."""
    publish(seeded_actor(0), tmp_path, format="state_dict")
    watched = ManifestSource(tmp_path / "actor_latest.json")
    old = next(tmp_path.glob("actor_2*.pt"))
    copies = PrivateCopies(tmp_path / "copies")
    recorded = checkpoint_source(old, watched=watched, signing_key=None, signed=False)
    assert recorded.kind == "manifest" and recorded.fetch(copies).path == old

    record_for(old).unlink()
    with pytest.raises(CheckpointError, match="no manifest record"):
        checkpoint_source(old, watched=watched, signing_key=None, signed=False)
    sha = hashlib.sha256(old.read_bytes()).hexdigest()
    source = checkpoint_source(old, watched=watched, signing_key=None, signed=False,
                               verified_sha256=sha)  # fmt: skip
    assert source.fetch(copies).sha256 == sha
    old.write_bytes(b"an intruder")
    with pytest.raises(IntegrityError, match="not the checkpoint that was verified"):
        source.fetch(copies)
