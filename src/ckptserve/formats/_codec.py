"""What a checkpoint format is, for the table in `formats`: four functions and two facts."""

from __future__ import annotations

import json
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, one_line

if TYPE_CHECKING:
    from ._zipcheck import ZipEntry

__all__ = ["Buffer", "Format", "Loaded", "Sniffed", "metadata_from_json"]

#: The bytes of a checkpoint as checked: in memory, or a read-only mmap of the file.
Buffer = bytes | memoryview | mmap.mmap


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model as loaded, with its format and the metadata that travelled inside it.

    For the weights formats read without a factory, `model` is the dict of tensors.
    """

    model: Any
    format: str
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What the first look at a file found: its first bytes and, for a zip, its checked directory."""

    head: bytes
    size: int
    entries: tuple[ZipEntry, ...] | None = None  # None: not a zip

    @property
    def names(self) -> frozenset[str]:
        """The zip's entry names below the top folder (`archive/data.pkl` -> `data.pkl`)."""
        return frozenset(e.name.split("/", 1)[1] for e in self.entries or () if "/" in e.name)


@dataclass(frozen=True, slots=True)
class Format:
    """One checkpoint format: how to recognise, check, read and write it.

    Attributes:
        name: the name `publish(format=...)` and `allow_formats` use.
        needs_factory: it holds weights only; `read` gives a dict of tensors.
        runs_code_on_load: reading it may execute code from the file (TorchScript).
        detect: whether a first look at a file (`Sniffed`) is this format.
        check: raise IntegrityError unless the bytes are whole (zip CRCs, a data sha256), and
            CheckpointError for a file of this format that is never loaded (a pickled module).
        read: `read(path, device) -> Loaded`, from a file that passed `check`.
        write: `write(model, metadata_json, example) -> bytes`, for `publish()`; `example` is
            a policy's `[batch, obs_dim]` state, or a dict of one tensor per named input.
    """

    name: str
    needs_factory: bool
    runs_code_on_load: bool
    detect: Callable[[Sniffed], bool] = field(repr=False)
    check: Callable[[Buffer, Sniffed], None] = field(repr=False)
    read: Callable[[Path, str], Loaded] = field(repr=False)
    write: Callable[[Any, str, Any], bytes] = field(repr=False)


def metadata_from_json(raw: str | bytes | None, where: str) -> dict[str, Any]:
    """The metadata dict stored in a checkpoint; CheckpointError when it is not a JSON object."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where} metadata is not JSON: {one_line(str(exc))}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} metadata is not a JSON object")
    return data
