"""Resident versions: the last K good versions stay loaded, so a client can finish an episode on
the version it started with, and a rollback needs no load.

A request names a version by its full sha256, a prefix of 12 or more hex digits, or the
`<checkpoint>@<sha256[:12]>` tag every response's `X-Model-Version` carries. Each version's memory
(the bytes of its parameters and buffers, per device, shared storage counted once) is measured
when it is added and shown in `to_dict()`.

Eviction: when a version is added beyond `keep`, the one that went live longest ago leaves first.
Adding a version that is already resident (a rollback to it) makes it the newest again. The live
version is the newest, so it is never the one evicted.

Reads (`find`, `versions`) take no lock: the set is an immutable tuple replaced on each write.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch

from ..versions import ModelVersion

__all__ = ["Resident", "ResidentVersions", "matching", "model_bytes", "parse_version_ref"]

#: The fewest hex digits of a sha256 that name a version (the tag's 12).
MIN_PREFIX = 12
_HEX = re.compile(r"[0-9a-f]{12,64}")


class Versioned(Protocol):
    """What a resident version is: a model and the version it came from (a LiveModel)."""

    @property
    def model(self) -> Any: ...

    @property
    def version(self) -> ModelVersion: ...


V = TypeVar("V", bound=Versioned)


@dataclass(frozen=True, slots=True)
class Resident(Generic[V]):
    """One resident version and the bytes its tensors hold, per device."""

    live: V
    nbytes: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.nbytes.values())


def parse_version_ref(ref: str) -> tuple[str | None, str]:
    """Split a version reference into (checkpoint name or None, lower-case hex prefix).

    Raises:
        ValueError: it is not a sha256, a 12+ hex prefix or a `<checkpoint>@<sha256[:12]>` tag.
    """
    checkpoint: str | None = None
    digits = ref
    if "@" in ref:
        checkpoint, _, digits = ref.rpartition("@")
        if not checkpoint:
            checkpoint = None
    digits = digits.lower()
    if not _HEX.fullmatch(digits):
        raise ValueError(
            f"a version is a sha256, a prefix of {MIN_PREFIX} or more hex digits, or "
            f"<checkpoint>@<sha256[:{MIN_PREFIX}]> (the X-Model-Version tag), not {ref!r}"
        )
    return checkpoint, digits


def matching(ref: str, versions: Iterable[V]) -> list[V]:
    """The versions among `versions` that `ref` names (see `parse_version_ref`).

    Raises:
        ValueError: `ref` is not a version reference.
    """
    checkpoint, digits = parse_version_ref(ref)
    return [
        v for v in versions
        if v.version.sha256.startswith(digits)
        and (checkpoint is None or v.version.checkpoint == checkpoint)
    ]  # fmt: skip


def _tensors(model: Any) -> Iterator[torch.Tensor]:
    if isinstance(model, torch.export.ExportedProgram):
        yield from model.state_dict.values()
        yield from (t for t in model.constants.values() if isinstance(t, torch.Tensor))
        return
    for name in ("parameters", "buffers"):
        method = getattr(model, name, None)
        if callable(method):
            yield from method()
    program = getattr(model, "program", None)  # formats.ExportedPolicy: the program it calls
    if isinstance(program, torch.export.ExportedProgram):
        yield from _tensors(program)
    lifted = getattr(model, "_lifted", ())  # ... and its weights, moved to the device
    if isinstance(lifted, tuple):
        yield from (t for t in lifted if isinstance(t, torch.Tensor))


def model_bytes(model: Any) -> dict[str, int]:
    """The bytes the tensors of `model` hold, by device ("cpu", "cuda:0"); each storage once,
    so tied weights and views are not counted twice."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, int] = {}
    for tensor in _tensors(model):
        storage = tensor.untyped_storage()
        device = str(tensor.device)
        where = (device, storage.data_ptr())
        if where in seen:
            continue
        seen.add(where)
        out[device] = out.get(device, 0) + storage.nbytes()
    return out


class ResidentVersions(Generic[V]):
    """The last `keep` good versions, newest last.

    Args:
        keep: how many versions stay loaded (`--keep-versions`; at least 1, the live one).
        measure: bytes of a model, by device (default `model_bytes`).

    Example:
        resident = ResidentVersions(keep=2)
        evicted = resident.add(candidate)  # after it went live
        live = resident.find(request_version) or conflict(resident.tags())
    """

    def __init__(
        self, keep: int = 2, *, measure: Callable[[Any], dict[str, int]] = model_bytes
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the live version), not {keep}")
        self.keep = keep
        self._measure = measure
        self._entries: tuple[Resident[V], ...] = ()
        self._write = threading.Lock()  # serialises writers; readers read `_entries` once

    def add(self, live: V) -> list[V]:
        """Make `live` the newest resident version; return the versions evicted for it."""
        sha = live.version.sha256
        with self._write:
            prior = next((e for e in self._entries if e.live is live), None)
            entry = prior or Resident(live, self._measure(live.model))
            kept = [e for e in self._entries if e.live.version.sha256 != sha]
            kept.append(entry)
            evicted = kept[: -self.keep]
            self._entries = tuple(kept[-self.keep :])
        return [e.live for e in evicted]

    def remove(self, sha256: str) -> V | None:
        """Drop the version with this sha256 (a version marked bad); the one removed, if any."""
        with self._write:
            gone = [e for e in self._entries if e.live.version.sha256 == sha256]
            self._entries = tuple(e for e in self._entries if e.live.version.sha256 != sha256)
        return gone[0].live if gone else None

    def find(self, ref: str) -> V | None:
        """The resident version `ref` names (see `parse_version_ref`), or None if none is.

        Raises:
            ValueError: `ref` is not a version reference, or its prefix names two versions.
        """
        found = matching(ref, (e.live for e in self._entries))
        if len(found) > 1:
            raise ValueError(f"{ref!r} names {len(found)} resident versions: give more digits")
        return found[0] if found else None

    def previous(self, sha256: str) -> V | None:
        """The newest resident version other than `sha256` (what a rollback goes back to)."""
        for entry in reversed(self._entries):
            if entry.live.version.sha256 != sha256:
                return entry.live
        return None

    def versions(self) -> list[V]:
        """The resident versions, oldest first."""
        return [e.live for e in self._entries]

    def tags(self) -> list[str]:
        """The resident versions' tags, newest first (what a 409 names)."""
        return [e.live.version.tag for e in reversed(self._entries)]

    @property
    def total_bytes(self) -> int:
        return sum(e.total_bytes for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, sha256: object) -> bool:
        return any(e.live.version.sha256 == sha256 for e in self._entries)

    def to_dict(self, live_sha256: str | None = None) -> dict[str, Any]:
        """Status: the resident versions newest first, each with its bytes, and the total."""
        entries = self._entries
        return {
            "keep": self.keep,
            "bytes": sum(e.total_bytes for e in entries),
            "versions": [
                {
                    "tag": e.live.version.tag,
                    "sha256": e.live.version.sha256,
                    "step": e.live.version.metadata.get("step"),
                    "bytes": e.total_bytes,
                    "bytes_by_device": dict(e.nbytes),
                    "live": e.live.version.sha256 == live_sha256,
                }
                for e in reversed(entries)
            ],
        }
