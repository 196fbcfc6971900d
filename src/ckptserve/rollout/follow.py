"""Follow the best, not only the newest: which published checkpoint to serve.

    --follow latest       the newest (the default)
    --follow max:<key>    the highest numeric `metadata[key]`, e.g. max:eval_return
    --follow min:<key>    the lowest, e.g. min:loss

A checkpoint without a finite number under the key (missing, a string, a bool, NaN) is no
candidate. Between equal values the newer checkpoint wins. The server moves when a better one is
published (`better`), and retention must never prune the current best (`protected`).

`published(directory, name)` reads what was published: each timestamped checkpoint with the
metadata and sha256 of its record (`naming.record_for`); a checkpoint whose record is missing
or unreadable carries none (so it is no candidate).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import CheckpointError
from ..manifest import MAX_MANIFEST_BYTES, parse_manifest
from ..naming import list_checkpoints, record_for
from ..options import parse_follow

__all__ = ["FollowRule", "Published", "published"]

Mode = Literal["latest", "max", "min"]


@dataclass(frozen=True, slots=True)
class Published:
    """One published checkpoint: its file name, its metadata and (from its record) sha256."""

    checkpoint: str
    metadata: Mapping[str, Any]
    sha256: str | None = field(default=None, compare=False)


def published(directory: str | os.PathLike[str], name: str) -> list[Published]:
    """The timestamped checkpoints of `name` in `directory`, newest first, each with what its
    record says (nothing when the record is missing, oversized or garbled). Reads no checkpoint.

    Raises:
        OSError: the directory cannot be listed.
    """
    out = []
    for path in list_checkpoints(directory, name):
        metadata: Mapping[str, Any] = {}
        sha256 = None
        try:
            with open(record_for(path), "rb") as f:
                record = parse_manifest(f.read(MAX_MANIFEST_BYTES + 1))
            if isinstance(record.get("metadata"), dict):
                metadata = record["metadata"]
            sha256 = str(record["sha256"])
        except (OSError, CheckpointError):
            pass
        out.append(Published(path.name, metadata, sha256))
    return out


@dataclass(frozen=True, slots=True)
class FollowRule:
    """Which checkpoint to serve among those published.

    Example:
        rule = FollowRule.parse("max:eval_return")
        best = rule.best(published)  # newest first, as list_checkpoints gives them
    """

    mode: Mode = "latest"
    key: str | None = None

    @classmethod
    def parse(cls, text: str) -> FollowRule:
        """`latest`, `max:<key>` or `min:<key>`.

        Raises:
            ValueError: anything else, saying what is accepted.
        """
        mode, key = parse_follow(text)
        return cls(mode, key)

    def __post_init__(self) -> None:
        if (self.mode == "latest") != (self.key is None) or self.mode not in (
            "latest",
            "max",
            "min",
        ):
            raise ValueError(f"a follow rule needs a key exactly for max and min: {self!r}")

    def __str__(self) -> str:
        return self.mode if self.key is None else f"{self.mode}:{self.key}"

    def value(self, metadata: Mapping[str, Any]) -> float | None:
        """The checkpoint's value under the rule's key; None when it has no finite number."""
        if self.key is None:
            return None
        v = metadata.get(self.key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return float(v)

    def best(self, published: Sequence[Published]) -> Published | None:
        """The checkpoint to serve among `published` (newest first); None when none qualifies."""
        if self.mode == "latest":
            return published[0] if published else None
        sign = 1.0 if self.mode == "max" else -1.0
        best: tuple[float, Published] | None = None
        for p in published:  # newest first: a later one replaces the best only when better
            v = self.value(p.metadata)
            if v is not None and (best is None or sign * v > best[0]):
                best = (sign * v, p)
        return best[1] if best is not None else None

    def better(self, candidate: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
        """Whether a newly published checkpoint should replace the live one (metadata of each):
        always for `latest`; for max/min when its value is strictly better, or the live one
        has none."""
        if self.mode == "latest":
            return True
        new = self.value(candidate)
        if new is None:
            return False
        old = None if live is None else self.value(live)
        if old is None:
            return True
        return new > old if self.mode == "max" else new < old

    def protected(self, published: Sequence[Published]) -> set[str]:
        """The checkpoints retention must keep: the current best."""
        best = self.best(published)
        return {best.checkpoint} if best is not None else set()
