"""Helpers for the status page tests: a corrupt checkpoint published the way a broken trainer
would (a manifest naming bytes that are no checkpoint), and the `/statusz` entry of a model."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

CORRUPT_BYTES = b"these bytes were meant to be a checkpoint"


def publish_corrupt(directory: Path, stamp: str = "29991231_235959", name: str = "actor") -> Path:
    """Write `{name}_{stamp}.pt` holding no checkpoint and point the manifest at it."""
    path = directory / f"{name}_{stamp}.pt"
    path.write_bytes(CORRUPT_BYTES)
    manifest = {
        "checkpoint": path.name,
        "sha256": hashlib.sha256(CORRUPT_BYTES).hexdigest(),
        "size": len(CORRUPT_BYTES),
        "format": "torchscript",
        "metadata": {"step": 999},
        "created_at": time.time(),
    }
    tmp = directory / f".{name}_manifest.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, directory / f"{name}_latest.json")
    return path


def model_entry(doc: dict[str, Any], name: str = "actor") -> dict[str, Any]:
    """The entry for `name` in a `/statusz` document."""
    found = [m for m in doc["models"] if m["name"] == name]
    assert len(found) == 1, f"{name!r} is not in {[m['name'] for m in doc['models']]}"
    return found[0]
