"""Specifications for loading.py: load and validate a candidate without any registry."""

from __future__ import annotations

import threading
import time

import pytest

import ckptserve
import ckptserve.registry
from ckptserve import CheckpointError, FileSource, RegistryOptions, ValidationError
from ckptserve.loading import LiveModel, PrivateCopies, load_candidate


def test_load_candidate_needs_no_registry(ckpt_path, checkpoint_bytes, tmp_path):
    """A fetched snapshot becomes a validated handle with its version, loaded from a private copy."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    copies = PrivateCopies(tmp_path / "copies")
    snapshot = FileSource(ckpt_path).fetch(copies.directory)
    candidate = load_candidate(snapshot, device="cpu", options=RegistryOptions())
    assert isinstance(candidate, LiveModel)
    assert candidate.version.sha256 == snapshot.sha256
    assert candidate.version.path == str(ckpt_path)
    assert candidate.version.format == "torchscript"
    assert candidate.expect.obs_dim is not None
    assert any(p.name.startswith(snapshot.sha256) for p in copies.directory.iterdir())
    copies.close()
    assert list(copies.directory.iterdir()) == []


def test_load_candidate_applies_the_options_validate(ckpt_path, checkpoint_bytes, tmp_path):
    """The user's validate rejects a candidate with a ValidationError, as in the registry."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))

    def reject(model: object) -> None:
        raise ValueError("not today")

    with pytest.raises(ValidationError):
        load_candidate(
            FileSource(ckpt_path).fetch(tmp_path / "copies"),
            device="cpu",
            options=RegistryOptions(validate=reject),
        )


def test_load_candidate_refuses_formats_not_allowed(ckpt_path, checkpoint_bytes, tmp_path):
    """allow_formats is enforced before anything is loaded."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    with pytest.raises(CheckpointError, match="not allowed"):
        load_candidate(
            FileSource(ckpt_path).fetch(tmp_path / "copies"),
            device="cpu",
            options=RegistryOptions(allow_formats=["export"]),
        )


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


def test_the_split_keeps_the_old_import_paths():
    """Names that moved out of registry.py are still importable from where they were."""
    from ckptserve.loading import LiveModel as loading_live
    from ckptserve.options import RegistryOptions as options_ro
    from ckptserve.options import SwapMode

    assert ckptserve.registry.LiveModel is ckptserve.LiveModel is loading_live
    assert ckptserve.registry.RegistryOptions is ckptserve.RegistryOptions is options_ro
    assert ckptserve.registry.SwapMode is SwapMode


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
