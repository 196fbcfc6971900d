"""LOAD: read a checkpoint's bytes as a callable policy, whatever format it was saved in.

`FORMATS` is the one table of formats, by name; each `Format` says how to detect, check, read
and write it, for loading here and for `publish()`:

    export        torch.export archive (`torch.export.save`)
    torchscript   TorchScript archive (`torch.jit.save`): runs code on load, treat as executable
    state_dict    `torch.save(state_dict)` zip, read with `weights_only=True`; needs a factory
    safetensors   safetensors weights; needs a factory; loading can never run code

`sniff` looks inside the bytes, never at the suffix. A zip's directory is checked before
anything is inflated (a zip bomb is refused from it: `_zipcheck`), then every record's CRC-32:
PyTorch checks neither, so a torn or mixed file would otherwise load with wrong weights.
Safetensors files written by `publish()` carry a sha256 of their data in the header, checked the
same way. A file is checked where it lies, through a read-only mmap, never read into one object.
"""

from __future__ import annotations

import importlib
import inspect
import mmap
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import CheckpointError, one_line
from ..naming import FORMAT_NAMES
from . import _safetensors
from ._codec import Buffer, Format, Loaded, Sniffed
from ._pytorch import EXPORT, STATE_DICT, TORCHSCRIPT, ExportedPolicy
from ._safetensors import SAFETENSORS
from ._zipcheck import check_crcs, read_directory

__all__ = [
    "FORMATS",
    "ExportedPolicy",
    "Format",
    "Loaded",
    "Loader",
    "check_safetensors",
    "check_zip",
    "load_checkpoint",
    "mapped",
    "read_weights",
    "resolve_factory",
    "sniff",
    "state_dict_loader",
]

#: Every checkpoint format by name, in the order `sniff` tries them.
FORMATS: dict[str, Format] = {f.name: f for f in (EXPORT, TORCHSCRIPT, STATE_DICT, SAFETENSORS)}
assert tuple(FORMATS) == FORMAT_NAMES, "naming.FORMAT_NAMES lists the formats of this table"

Factory = Callable[..., torch.nn.Module]


class Loader(Protocol):
    """Turns a checkpoint file into a model. `loader="auto"` is `AutoLoader()`."""

    def __call__(self, path: Path, fmt: str, device: str) -> Loaded: ...


def sniff(data: Buffer) -> str:
    """Name the checkpoint format of `data`; raise CheckpointError when it is none we know."""
    return _sniff(data)[0].name


def _sniff(data: Buffer) -> tuple[Format, Sniffed]:
    """The format, and what the first look found (for a zip, its checked directory)."""
    head = bytes(data[:16])
    entries = read_directory(data) if head[:4] == b"PK\x03\x04" else None
    sniffed = Sniffed(head, len(data), entries)
    for fmt in FORMATS.values():
        if fmt.detect(sniffed):
            return fmt, sniffed
    if entries is not None:
        raise CheckpointError("zip archive is not a PyTorch checkpoint")
    if head[:2] == b"\x80\x02":
        raise CheckpointError(
            "legacy (non-zip) torch.save pickle: re-save with torch.save(..., "
            "_use_new_zipfile_serialization=True) or use publish()"
        )
    raise CheckpointError(
        "unknown checkpoint format (not export, TorchScript, state_dict or safetensors)"
    )


def check_zip(data: Buffer) -> None:
    """Raise IntegrityError unless every record of the zip matches its CRC-32 in the directory.

    The directory is checked first: CheckpointError for one that describes a zip bomb.
    """
    check_crcs(data, read_directory(data))


def check_safetensors(data: Buffer) -> None:
    """Raise IntegrityError unless a safetensors file is whole and matches its data checksum.

    The format has no checksum of its own; files written by `publish()` carry the sha256 of
    their data section in the header, so a torn copy (new header, partly old data) is caught.
    Files without it are only checked for length.
    """
    _safetensors.check(data)


def check(data: Buffer, allow_formats: Collection[str] | None = None) -> Format:
    """Sniff, refuse formats not allowed, check the CRCs or the data sha256; return the format."""
    fmt, sniffed = _sniff(data)
    if allow_formats is not None and fmt.name not in allow_formats:
        allowed = ", ".join(sorted(allow_formats))
        raise CheckpointError(f"{fmt.name} checkpoints are not allowed here (allowed: {allowed})")
    fmt.check(data, sniffed)
    return fmt


class AutoLoader:
    """Loads the self-contained formats (export, TorchScript); weights formats need a factory."""

    def __call__(self, path: Path, fmt: str, device: str) -> Loaded:
        if FORMATS[fmt].needs_factory:
            raise CheckpointError(
                f"a {fmt} checkpoint holds weights only: give a factory that builds the module "
                "(--factory package.module:make_model, or loader=state_dict_loader(...))"
            )
        return FORMATS[fmt].read(path, device)


def resolve_factory(factory: str | Factory) -> Factory:
    """The callable a `"package.module:function"` spec names (imported now), or `factory` itself.

    Raises ValueError for a malformed spec or a name that is not callable, and ImportError or
    AttributeError for one that cannot be found.
    """
    if callable(factory):
        return factory
    module_name, sep, attr = factory.partition(":")
    if not (module_name and sep and attr):
        raise ValueError(f"factory {factory!r} must look like 'package.module:function'")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"factory {factory!r} is not callable")
    return obj


def _takes_metadata(factory: Factory) -> bool:
    """True when the factory takes the metadata: a required positional parameter, or `metadata`."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(
        p.kind in positional and (p.name == "metadata" or p.default is inspect.Parameter.empty)
        for p in params
    )


class StateDictLoader(AutoLoader):
    """Builds the module from a factory, then loads state_dict or safetensors weights into it.

    The module is built on the meta device and the weights are assigned, not copied, so a large
    model costs one read of its weights and no second allocation.
    """

    def __init__(self, factory: str | Factory) -> None:
        self._spec = factory
        self._factory: Factory | None = None

    def _build(self, metadata: Mapping[str, Any]) -> torch.nn.Module:
        if self._factory is None:
            self._factory = resolve_factory(self._spec)
        takes_metadata = _takes_metadata(self._factory)
        with torch.device("meta"):
            module = self._factory(dict(metadata)) if takes_metadata else self._factory()
        if not isinstance(module, torch.nn.Module):
            raise CheckpointError(f"factory returned {type(module).__name__}, not an nn.Module")
        return module

    def __call__(self, path: Path, fmt: str, device: str) -> Loaded:
        if not FORMATS[fmt].needs_factory:
            return super().__call__(path, fmt, device)
        weights = FORMATS[fmt].read(path, device)
        module = self._build(weights.metadata)
        try:
            module.load_state_dict(weights.model, strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"weights do not fit the factory's module: {one_line(str(exc))}"
            ) from None
        unset = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if unset:
            raise CheckpointError(
                f"the factory's module has tensors the checkpoint does not fill: {', '.join(unset)}"
            )
        return Loaded(module.to(device).eval(), fmt, weights.metadata)

    def __repr__(self) -> str:
        return f"state_dict_loader({self._spec!r})"


def read_weights(
    path: Path, fmt: str, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata of a state_dict or safetensors file, without a factory.

    On the CPU the tensors are mapped from the file, not read: their pages load when touched.
    """
    if fmt not in FORMATS or not FORMATS[fmt].needs_factory:
        raise CheckpointError(f"a {fmt} checkpoint is not a weights file")
    weights = FORMATS[fmt].read(path, device)
    return weights.model, weights.metadata


def state_dict_loader(factory: str | Factory) -> Loader:
    """A loader for `state_dict` and `safetensors` checkpoints (export and TorchScript too).

    Args:
        factory: `"package.module:make_actor"` or a callable returning the `nn.Module` to load the
            weights into; it is passed the checkpoint's metadata dict if it has a required
            positional parameter (or one named `metadata`), and is called with no arguments
            otherwise.

    Example:
        registry = ModelRegistry("actor_latest.pt", loader=state_dict_loader("mypkg.nets:Actor"))
    """
    return StateDictLoader(factory)


def _same_kind(exc: CheckpointError, reason: str) -> CheckpointError:
    try:
        return type(exc)(reason)
    except Exception:  # a subclass that takes other arguments
        return CheckpointError(reason)


@contextmanager
def mapped(path: Path) -> Iterator[Buffer]:
    """The file at `path` as a read-only mmap (its pages are the page cache)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:  # mmap refuses an empty file
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield buf


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    loader: Loader | str = "auto",
    allow_formats: Collection[str] | None = None,
) -> Loaded:
    """Check and load one checkpoint file.

    The file is checked where it lies (through a read-only mmap), then loaded from the same
    path: give it a file nothing rewrites meanwhile (the registry passes its private copy).

    Args:
        path: the file to load.
        device: where to put the model.
        loader: `"auto"` or a Loader such as `state_dict_loader(...)`.
        allow_formats: if given, formats outside it are refused before anything is loaded.

    Raises:
        CheckpointError: the bytes are not a checkpoint we load, fail their checks
            (IntegrityError), or the loader fails; the reason is one line.

    Example:
        loaded = load_checkpoint("models/actor_latest.pt")
        action, _ = loaded.model(torch.zeros(1, loaded.metadata["obs_dim"]))
    """
    path = Path(path)
    impl: Loader = AutoLoader() if loader == "auto" else loader  # type: ignore[assignment]
    if isinstance(impl, str):
        raise ValueError(f"unknown loader {impl!r}: use 'auto' or state_dict_loader(...)")
    with mapped(path) as buf:
        fmt = check(buf, allow_formats)
    try:
        return impl(path, fmt.name, device)
    except CheckpointError as exc:
        reason = one_line(str(exc))
        if reason == str(exc):
            raise
        raise _same_kind(exc, reason) from exc  # a loader's reason, made one line
    except Exception as exc:  # torch raises many types for a bad archive
        raise CheckpointError(
            f"{fmt.name} load failed: {type(exc).__name__}: {one_line(str(exc))}"
        ) from exc
