"""The file layout of a model directory, in one place: every name `publish()` writes and readers look for.

For a model published under `name` (default `actor`):

    {name}_latest.json                  the manifest: the current checkpoint, its sha256, signature
    {name}_latest.pt | .safetensors     a symlink to the current checkpoint
    {name}_YYYYmmdd_HHMMSS[_N].pt       a timestamped checkpoint (`.safetensors` for safetensors);
                                        `_N` numbers a second publish within the same second
    {name}_YYYYmmdd_HHMMSS[_N].json     its signed record: a manifest of that one checkpoint

`model_name` is the one rule from a path to a model name: `actor` for `actor_latest.pt`,
`actor_latest.json` and `actor_20260412_143022.pt` (the registry's name in logs and status, the
server's prefix for `list_checkpoints`, the CLI's name for a `PATH` without `NAME=`). Nothing
here imports torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "DEFAULT_NAME",
    "FORMAT_NAMES",
    "MANIFEST_SUFFIX",
    "OBJECT_SCHEME",
    "STAMP_FORMAT",
    "SUFFIXES",
    "WEIGHTS_FORMATS",
    "Stamped",
    "checkpoint_name",
    "checkpoint_prefix",
    "is_object_url",
    "latest_in_directory",
    "latest_link",
    "latest_manifest",
    "latest_name",
    "list_checkpoints",
    "model_name",
    "name_in_directory",
    "parse_checkpoint_name",
    "record_for",
    "suffix_for",
]

#: The name publish() and a registry watching a directory use when none is given.
DEFAULT_NAME = "actor"

#: The checkpoint formats, by the names `publish(format=...)` and `allow_formats` use. Declared
#: here, without torch, so options and the CLI can name them without importing the loaders.
FORMAT_NAMES = ("export", "torchscript", "state_dict", "safetensors")
#: The formats that hold weights only and need a factory to build the module.
WEIGHTS_FORMATS = ("state_dict", "safetensors")

#: The suffix of a checkpoint file publish() writes, by format.
SUFFIXES = {
    "export": ".pt",
    "torchscript": ".pt",
    "state_dict": ".pt",
    "safetensors": ".safetensors",
}
#: Every checkpoint suffix, in the order a reader prefers a `{name}_latest` link.
CHECKPOINT_SUFFIXES = tuple(dict.fromkeys(SUFFIXES.values()))
#: The suffix of a manifest: `{name}_latest.json` and each checkpoint's record.
MANIFEST_SUFFIX = ".json"
#: How a path names object storage (objectstore.py): `s3://bucket/prefix/`.
OBJECT_SCHEME = "s3://"
#: `datetime.strftime` format of the timestamp in a checkpoint's name.
STAMP_FORMAT = "%Y%m%d_%H%M%S"

_LATEST = "_latest"
#: The suffixes of a `{name}_latest` file, in the order a reader prefers them.
_LATEST_SUFFIXES = (MANIFEST_SUFFIX, *CHECKPOINT_SUFFIXES)
_STAMP = r"(?P<stamp>\d{8}_\d{6})(?:_(?P<n>\d+))?"  # the one timestamp pattern
# `_latest` or a timestamp that ends the name, before any extensions.
_MARKER = re.compile(rf"_(?:latest|{_STAMP})(?=\.|$)")
_SUFFIX = "|".join(re.escape(s) for s in CHECKPOINT_SUFFIXES)
_CHECKPOINT = re.compile(rf"^(?P<name>.*?)_{_STAMP}(?P<suffix>{_SUFFIX})$")


def suffix_for(fmt: str) -> str:
    """The suffix of a checkpoint of format `fmt`: `.safetensors`, else `.pt`."""
    try:
        return SUFFIXES[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}: choose {', '.join(FORMAT_NAMES)}") from None


def latest_manifest(directory: Path, name: str) -> Path:
    """`{name}_latest.json` in `directory`: the manifest publish() rewrites each time."""
    return directory / f"{name}{_LATEST}{MANIFEST_SUFFIX}"


def is_object_url(path: object) -> bool:
    """Whether `path` names object storage (`s3://bucket/prefix/`), not a local path."""
    return isinstance(path, str) and path.startswith(OBJECT_SCHEME)


def latest_name(path: Path) -> str | None:
    """The `{name}` of a `{name}_latest.json` / `.pt` / `.safetensors` path, else None.

    Example:
        latest_name(Path("models/actor_latest.pt"))  # "actor"
    """
    for suffix in _LATEST_SUFFIXES:
        if path.name.endswith(_LATEST + suffix) and len(path.name) > len(_LATEST + suffix):
            return path.name[: -len(_LATEST + suffix)]
    return None


def latest_link(directory: Path, name: str, fmt: str) -> Path:
    """`{name}_latest.pt` (or `.safetensors`): the symlink to the newest checkpoint of `fmt`."""
    return directory / f"{name}{_LATEST}{suffix_for(fmt)}"


@dataclass(frozen=True, slots=True, order=True)
class Stamped:
    """A timestamped checkpoint's name taken apart; sorts in publish order."""

    stamp: str
    n: int
    name: str
    suffix: str

    def file_name(self) -> str:
        """The file name these parts make."""
        number = f"_{self.n}" if self.n else ""
        return f"{self.name}_{self.stamp}{number}{self.suffix}"


def checkpoint_name(name: str, when: datetime, fmt: str, n: int = 0) -> str:
    """`{name}_YYYYmmdd_HHMMSS[_n]{suffix}`: the n-th checkpoint published in that second."""
    return Stamped(when.strftime(STAMP_FORMAT), n, name, suffix_for(fmt)).file_name()


def parse_checkpoint_name(file_name: str) -> Stamped | None:
    """The parts of a timestamped checkpoint's file name; None for any other name."""
    m = _CHECKPOINT.match(file_name)
    if m is None:
        return None
    return Stamped(m["stamp"], int(m["n"] or 0), m["name"], m["suffix"])


def list_checkpoints(directory: str | os.PathLike[str], name: str = DEFAULT_NAME) -> list[Path]:
    """The timestamped checkpoints of `name` in `directory`, newest first.

    They are the regular files (not symlinks) named `{name}_YYYYmmdd_HHMMSS[_N]` with a
    checkpoint suffix (`.pt`, `.safetensors`), in publish order: by timestamp, then `_N`.

    Example:
        list_checkpoints("models/")[0]  # models/actor_20260412_143022.pt
    """
    found: list[tuple[Stamped, Path]] = []
    for entry in os.scandir(directory):
        parts = parse_checkpoint_name(entry.name)
        if parts is not None and parts.name == name and entry.is_file(follow_symlinks=False):
            found.append((parts, Path(entry.path)))
    return [path for _, path in sorted(found, reverse=True)]


def record_for(checkpoint: str | os.PathLike[str]) -> Path:
    """The signed record of a timestamped checkpoint: `{stem}.json` beside it.

    It is a manifest of that one checkpoint (same fields and signature as `{name}_latest.json`),
    so a pin or a fallback to it is checked like the latest one. ValueError for a path that is
    not a timestamped checkpoint (`actor_latest.pt` has no record: its manifest is the latest).
    """
    path = Path(checkpoint)
    parts = parse_checkpoint_name(path.name)
    if parts is None:
        raise ValueError(f"{path.name} is not a timestamped checkpoint name")
    return path.with_name(path.name[: -len(parts.suffix)] + MANIFEST_SUFFIX)


def checkpoint_prefix(path: Path) -> str:
    """The name a checkpoint or manifest was published under; "" when nothing precedes the marker.

    Example:
        checkpoint_prefix(Path("policy_v2_20260412_143022.pt"))  # "policy_v2"
    """
    marker = _MARKER.search(path.name)
    return path.name[: marker.start()] if marker else path.stem


def model_name(path: Path) -> str:
    """`checkpoint_prefix(path)`, or "model" when that is empty (`_latest.pt`)."""
    return checkpoint_prefix(path) or "model"


def name_in_directory(directory: Path) -> str:
    """The one name published in `directory` (its `*_latest.*` files), else `DEFAULT_NAME`."""
    found = {checkpoint_prefix(p) for p in directory.glob(f"*{_LATEST}.*")}
    return found.pop() if len(found) == 1 else DEFAULT_NAME


def latest_in_directory(directory: Path, name: str, *, signed_only: bool = False) -> Path:
    """The `*_latest` file a reader follows in `directory`.

    `{name}_latest.json` if it exists, else `{name}_latest.pt`, else `{name}_latest.safetensors`
    (a dangling link counts: it is what the trainer points at); with no file of that name, the
    single `*_latest.json`, `*_latest.pt` or `*_latest.safetensors` there. `signed_only` looks at
    manifests only (a plain checkpoint carries no signature). With nothing published yet (or an
    unreadable directory), the manifest path publish() will write first.
    """
    suffixes = (MANIFEST_SUFFIX,) if signed_only else _LATEST_SUFFIXES
    for suffix in suffixes:
        candidate = directory / f"{name}{_LATEST}{suffix}"
        if os.path.lexists(candidate):
            return candidate
    for suffix in suffixes:
        found = sorted(directory.glob(f"*{_LATEST}{suffix}"))  # glob ignores unreadable directories
        if len(found) == 1:
            return found[0]
    return latest_manifest(directory, name)
