"""Model names from checkpoint paths: `actor` for `actor_latest.pt`, `actor_latest.json` and
`actor_20260412_143022.pt`, the name `publish(name=...)` wrote them under.

One rule for the registry (its name in logs and status), the server (the prefix `list_checkpoints`
needs) and the CLI (the name of a `PATH` argument without `NAME=`).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "DEFAULT_NAME",
    "FORMAT_NAMES",
    "WEIGHTS_FORMATS",
    "checkpoint_prefix",
    "model_name",
    "name_in_directory",
]

#: The name publish() and a registry watching a directory use when none is given.
DEFAULT_NAME = "actor"

#: The checkpoint formats, by the names `publish(format=...)` and `allow_formats` use. Declared
#: here, without torch, so options and the CLI can name them without importing the loaders.
FORMAT_NAMES = ("export", "torchscript", "state_dict", "safetensors")
#: The formats that hold weights only and need a factory to build the module.
WEIGHTS_FORMATS = ("state_dict", "safetensors")

# `_latest` or a timestamp `_YYYYmmdd_HHMMSS[_N]` that ends the name, before any extensions.
_MARKER = re.compile(r"_(?:latest|\d{8}_\d{6}(?:_\d+)?)(?=\.|$)")


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
    found = {checkpoint_prefix(p) for p in directory.glob("*_latest.*")}
    return found.pop() if len(found) == 1 else DEFAULT_NAME
