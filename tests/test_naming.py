"""Specifications for naming.py: the file layout of a model directory, and model names."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from ckptserve.naming import (
    DEFAULT_NAME,
    checkpoint_name,
    checkpoint_prefix,
    latest_in_directory,
    latest_link,
    list_checkpoints,
    model_name,
    name_in_directory,
    parse_checkpoint_name,
    record_for,
    suffix_for,
)


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


# ---- the file layout: suffixes, timestamps, listing, the latest files -------------------------


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [("export", ".pt"), ("torchscript", ".pt"), ("state_dict", ".pt"), ("safetensors", ".safetensors")],
)  # fmt: skip
def test_each_format_has_its_suffix(fmt, suffix):
    """safetensors files are `.safetensors`; the PyTorch archives are `.pt`."""
    assert suffix_for(fmt) == suffix
    assert latest_link(Path("m"), "actor", fmt) == Path("m") / f"actor_latest{suffix}"
    when = datetime(2026, 4, 12, 14, 30, 22)
    assert checkpoint_name("actor", when, fmt) == f"actor_20260412_143022{suffix}"
    assert checkpoint_name("actor", when, fmt, 2) == f"actor_20260412_143022_2{suffix}"
    with pytest.raises(ValueError, match="unknown format"):
        suffix_for("onnx")


@pytest.mark.parametrize(
    "file_name",
    ["actor_20260412_143022.pt", "policy_v2_20260412_143022_3.safetensors", "_20260412_143022.pt",
     "a_20260101_000000_20260101_000000.pt"],
)  # fmt: skip
def test_a_checkpoint_name_parses_back_into_its_parts(file_name):
    """`parse_checkpoint_name` inverts `Stamped.file_name`, and its name is `checkpoint_prefix`."""
    parts = parse_checkpoint_name(file_name)
    assert parts is not None and parts.file_name() == file_name
    assert parts.name == checkpoint_prefix(Path(file_name))


@pytest.mark.parametrize(
    "file_name",
    ["actor_latest.pt", "actor_notes.pt", "actor_20260412_143022.json", "actor_20260412_1430.pt",
     "actor_20260412_143022.pt.bak", "actor_20260412_143022.onnx"],
)  # fmt: skip
def test_other_names_are_not_checkpoints(file_name):
    """Latest links, records, other suffixes and malformed stamps are not timestamped checkpoints."""
    assert parse_checkpoint_name(file_name) is None


def test_list_checkpoints_orders_both_suffixes_by_publish_order(tmp_path):
    """`.pt` and `.safetensors` checkpoints of one name are listed together, newest first;
    records, links and other names are left out."""
    names = ["actor_20260101_000000.pt", "actor_20260101_000000_1.safetensors",
             "actor_20260102_000000.safetensors", "critic_20260103_000000.pt",
             "actor_20260101_000000.json", ".tmp-abc.pt"]  # fmt: skip
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "actor_latest.safetensors").symlink_to("actor_20260102_000000.safetensors")
    (tmp_path / "actor_20260109_000000.pt").symlink_to("actor_20260101_000000.pt")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "actor_20260102_000000.safetensors",
        "actor_20260101_000000_1.safetensors",
        "actor_20260101_000000.pt",
    ]
    assert [p.name for p in list_checkpoints(tmp_path, "critic")] == ["critic_20260103_000000.pt"]


def test_record_for_names_the_manifest_beside_a_checkpoint(tmp_path):
    """A timestamped checkpoint's record is its stem plus `.json`; a latest link has none."""
    assert record_for(tmp_path / "actor_20260412_143022_1.safetensors") == (
        tmp_path / "actor_20260412_143022_1.json"
    )
    assert record_for("actor_20260412_143022.pt") == Path("actor_20260412_143022.json")
    with pytest.raises(ValueError, match="not a timestamped checkpoint"):
        record_for(tmp_path / "actor_latest.pt")


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (["actor_latest.json", "actor_latest.pt"], "actor_latest.json"),
        (["actor_latest.pt"], "actor_latest.pt"),
        (["actor_latest.safetensors"], "actor_latest.safetensors"),
        (["critic_latest.safetensors"], "critic_latest.safetensors"),
        (["critic_latest.pt", "policy_latest.pt"], "actor_latest.json"),
        ([], "actor_latest.json"),
    ],
    ids=["manifest-first", "pt", "safetensors", "the-single-other-name", "two-names", "empty"],
)
def test_latest_in_directory_finds_what_publish_wrote(tmp_path, present, expected):
    """The manifest, else the latest link of either suffix; else the single one of another
    name; else the manifest path publish() will write first."""
    for n in present:
        (tmp_path / n).write_bytes(b"x")
    assert latest_in_directory(tmp_path, "actor") == tmp_path / expected


def test_signed_only_looks_at_manifests(tmp_path):
    """With signatures required, a latest link is never what is followed."""
    (tmp_path / "actor_latest.pt").write_bytes(b"x")
    assert latest_in_directory(tmp_path, "actor", signed_only=True) == (
        tmp_path / "actor_latest.json"
    )
