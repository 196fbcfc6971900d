"""Ordered versions: a checkpoint's place in its training run, from its `step` and `run_id`.

A trainer publishes `step` (how far training got) and `run_id` (which run it belongs to) in each
checkpoint's metadata. Within one run, steps only go forward: a candidate whose step is lower than
the live one's is a regression (a trainer restarted from scratch that republishes step 0 under the
same run) and is refused. A different `run_id` starts a new sequence, which is allowed and logged.
Checkpoints without a `run_id` count as one run of their own; without a `step` nothing is ordered.

`run_id_for` is the publishing side: a directory keeps the run id its manifest carries, so a
restarted trainer stays in the same run unless it asks for a new one.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, ValidationError
from ..manifest import parse_manifest

__all__ = [
    "Position",
    "check_order",
    "current_run_id",
    "new_run_id",
    "run_id_for",
    "versions_behind",
]

#: A manifest is a few hundred bytes; one larger than this is not read for its run id.
_MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Position:
    """Where a checkpoint stands: its run, its step in that run, and when it was published
    (seconds since the epoch); each None when the metadata does not say."""

    run_id: str | None
    step: int | None
    created_at: float | None

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> Position:
        """Read `run_id`, `step` and `created_at` from a checkpoint's metadata.

        A step is a whole number (a bool or a fraction is no step); a run id is a non-empty
        string or an integer; `created_at` is an ISO 8601 time or a number of seconds.
        """
        return cls(_run_id(metadata.get("run_id")), _step(metadata.get("step")),
                   _created_at(metadata.get("created_at")))  # fmt: skip

    def is_newer_than(self, other: Position) -> bool:
        """Whether this checkpoint comes after `other`: a higher step in the same run, else (a
        different run, or no steps) a later publication time."""
        if self.run_id == other.run_id and self.step is not None and other.step is not None:
            return self.step > other.step
        if self.created_at is not None and other.created_at is not None:
            return self.created_at > other.created_at
        return False


def _step(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        return None
    return int(value)


def _run_id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text or None


def _created_at(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    return None


def check_order(candidate: Mapping[str, Any], live: Mapping[str, Any] | None) -> str | None:
    """Judge a candidate's step against the live one's (both given as checkpoint metadata).

    Returns None when the order says nothing (nothing live, a step missing, the same or a later
    step), or a note for the log when the candidate starts a new run.

    Raises:
        ValidationError: the candidate is from the live run with a lower step (a regression).

    Example:
        check_order({"run_id": "a", "step": 1_000}, {"run_id": "a", "step": 50_000})
        # ValidationError: step 1,000 is older than live step 50,000 (run 'a') ...
    """
    if live is None:
        return None
    new, old = Position.of(candidate), Position.of(live)
    if new.step is None or old.step is None:
        return None
    if new.run_id != old.run_id:
        return (
            f"new run {new.run_id!r} at step {new.step:,} (the live run {old.run_id!r} was at "
            f"step {old.step:,}): its steps start a new sequence"
        )
    if new.step < old.step:
        raise ValidationError(
            f"step {new.step:,} is older than live step {old.step:,} (run {new.run_id!r}): a "
            "regression; pin it or reload with force to go back on purpose, or publish with "
            "new_run=True to start a new run"
        )
    return None


def versions_behind(live: Mapping[str, Any], published: Iterable[Mapping[str, Any]]) -> int:
    """How many published checkpoints come after the live one (`Position.is_newer_than`).

    Args:
        live: the live checkpoint's metadata.
        published: the metadata of the checkpoints on offer (any order; the live one may be
            among them).
    """
    here = Position.of(live)
    return sum(1 for meta in published if Position.of(meta).is_newer_than(here))


# ---- the publishing side ------------------------------------------------------------------------


def new_run_id() -> str:
    """A fresh run id: the UTC time it was made and 8 random hex digits."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def current_run_id(directory: str | os.PathLike[str], name: str = "actor") -> str | None:
    """The run id the manifest `{name}_latest.json` in `directory` carries, if it can be read."""
    path = Path(directory) / f"{name}_latest.json"
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_MANIFEST_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MAX_MANIFEST_BYTES:
        return None
    try:
        manifest = parse_manifest(raw)
    except IntegrityError:
        return None
    return _run_id(manifest.get("metadata", {}).get("run_id"))


def run_id_for(
    directory: str | os.PathLike[str],
    name: str = "actor",
    run_id: str | None = None,
    new_run: bool = False,
) -> str:
    """The run id a publish into `directory` writes: `run_id` when given, a new one with
    `new_run=True` (or when the directory has none yet), else the one its manifest carries, so a
    trainer that restarted from scratch stays in the same run and its step 0 is a regression.

    Raises:
        ValueError: both `run_id` and `new_run` were given, or `run_id` is empty.

    Example:
        metadata["run_id"] = run_id_for("models/", "actor")
    """
    if run_id is not None:
        if new_run:
            raise ValueError("pass run_id= or new_run=True, not both")
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id must be a non-empty string, not {run_id!r}")
        return run_id
    if not new_run:
        kept = current_run_id(directory, name)
        if kept is not None:
            return kept
    return new_run_id()
