"""Specifications for loading.py: load and validate a candidate without any registry."""

from __future__ import annotations

import pytest

from ckptserve import CheckpointError, FileSource, RegistryOptions, ValidationError
from ckptserve._copies import PrivateCopies
from ckptserve.loading import LiveModel, load_candidate


def test_load_candidate_needs_no_registry(ckpt_path, checkpoint_bytes, tmp_path):
    """A fetched snapshot becomes a validated handle with its version, loaded from a private copy."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    copies = PrivateCopies(tmp_path / "copies")
    snapshot = FileSource(ckpt_path).fetch(copies)
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

    copies = PrivateCopies(tmp_path / "copies")  # held: collecting it removes its copies
    with pytest.raises(ValidationError):
        load_candidate(
            FileSource(ckpt_path).fetch(copies),
            device="cpu",
            options=RegistryOptions(validate=reject),
        )


def test_load_candidate_refuses_formats_not_allowed(ckpt_path, checkpoint_bytes, tmp_path):
    """allow_formats is enforced before anything is loaded."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    copies = PrivateCopies(tmp_path / "copies")
    with pytest.raises(CheckpointError, match="not allowed"):
        load_candidate(
            FileSource(ckpt_path).fetch(copies),
            device="cpu",
            options=RegistryOptions(allow_formats=["export"]),
        )
