"""Specifications for naming.py: one rule from checkpoint paths to model names."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptserve.naming import DEFAULT_NAME, checkpoint_prefix, model_name, name_in_directory


@pytest.mark.parametrize(
    ("file_name", "name"),
    [
        ("actor_latest.pt", "actor"),
        ("actor_latest.json", "actor"),
        ("actor_latest", "actor"),
        ("actor_20260412_143022.pt", "actor"),
        ("actor_20260412_143022_3.pt", "actor"),
        ("policy_v2_20260412_143022.pt", "policy_v2"),
        ("policy_v2_20260412_143022_1.pt", "policy_v2"),
        ("policy_v2_latest.json", "policy_v2"),
        ("critic.pt", "critic"),
        ("my_model.safetensors", "my_model"),
    ],
)
def test_the_published_name_is_what_precedes_latest_or_the_timestamp(file_name, name):
    """`{name}_latest.*` and `{name}_YYYYmmdd_HHMMSS[_N].*` both give `name`, underscores kept."""
    assert checkpoint_prefix(Path("models") / file_name) == name
    assert model_name(Path("models") / file_name) == name


def test_latest_inside_a_name_is_not_a_marker():
    """Only a `_latest` that ends the name (before its extensions) is cut off."""
    assert model_name(Path("actor_latest_backup.pt")) == "actor_latest_backup"
    assert model_name(Path("actor_latest.pt.bak")) == "actor"


def test_a_name_that_is_only_a_marker_is_model():
    """`_latest.pt` has no prefix: list_checkpoints gets "", logs and status get "model"."""
    assert checkpoint_prefix(Path("_latest.pt")) == ""
    assert model_name(Path("_latest.pt")) == "model"


def test_a_directory_is_named_by_the_one_name_published_in_it(tmp_path):
    """The `{name}` of the `*_latest.*` files in a directory, if they share one."""
    (tmp_path / "critic_latest.pt").write_bytes(b"")
    (tmp_path / "critic_latest.json").write_bytes(b"")
    assert name_in_directory(tmp_path) == "critic"


@pytest.mark.parametrize("published", [[], ["actor_latest.pt", "critic_latest.pt"]])
def test_a_directory_without_exactly_one_name_gets_the_default(tmp_path, published):
    """An empty directory, or one with several names, is named `DEFAULT_NAME` (actor)."""
    for file_name in published:
        (tmp_path / file_name).write_bytes(b"")
    assert name_in_directory(tmp_path) == DEFAULT_NAME == "actor"
    assert name_in_directory(tmp_path / "not-created-yet") == DEFAULT_NAME
