"""LOAD: read a checkpoint's bytes as a callable policy, whatever format it was saved in.

`sniff` looks inside the bytes, never at the suffix:

    export        torch.export archive (`torch.export.save`, usually .pt2)
    torchscript   TorchScript archive (`torch.jit.save`): runs code on load, treat as executable
    state_dict    `torch.save(state_dict)` zip, read with `weights_only=True`; needs a factory
    safetensors   safetensors weights; needs a factory; loading can never run code

Zip-based files have every record's CRC-32 checked first: PyTorch does not, so a torn or mixed
file would otherwise load with wrong weights. Safetensors files written by `publish()` carry a
sha256 of their data in the header, checked the same way. A file is checked where it lies (the
zip read through the open file, the rest through a read-only mmap), never read into one object.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import json
import mmap
import os
import struct
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import torch

from ._zipcheck import ZipEntry, check_crcs, read_directory
from .errors import CheckpointError, IntegrityError
from .manifest import METADATA_FILE, METADATA_KEY, SAFETENSORS_SHA256_KEY

__all__ = [
    "FORMATS",
    "ExportedPolicy",
    "Loaded",
    "Loader",
    "check_safetensors",
    "check_zip",
    "load_checkpoint",
    "sniff",
    "state_dict_loader",
]

FORMATS = ("export", "torchscript", "state_dict", "safetensors")
WEIGHTS_FORMATS = ("state_dict", "safetensors")  # the formats that need a factory

Factory = Callable[..., torch.nn.Module]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model as loaded, with its format and the metadata that travelled inside it."""

    model: Any
    format: str
    metadata: dict[str, Any]


class Loader(Protocol):
    """Turns a checkpoint file into a model. `loader="auto"` is `AutoLoader()`."""

    def __call__(self, path: Path, fmt: str, device: str) -> Loaded: ...


_Buffer = bytes | memoryview | mmap.mmap


def sniff(data: bytes | memoryview) -> str:
    """Name the checkpoint format of `data`; raise CheckpointError when it is none we know."""
    return _sniff(data)[0]


def sniff_buffer(data: _Buffer, file: IO[bytes]) -> str:
    """`sniff`, for a buffer such as a read-only mmap of the file."""
    return _sniff(data)[0]


def _sniff(data: _Buffer) -> tuple[str, tuple[ZipEntry, ...]]:
    """The format, and for a zip its checked directory (a bomb is refused here, uninflated)."""
    head = bytes(data[:8])
    if head[:4] == b"PK\x03\x04":
        entries = read_directory(data)
        inner = {e.name.split("/", 1)[1] for e in entries if "/" in e.name}
        if "archive_format" in inner or any(n.startswith("models/") for n in inner):
            return "export", entries
        if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
            return "torchscript", entries
        if "data.pkl" in inner:
            return "state_dict", entries
        raise CheckpointError("zip archive is not a PyTorch checkpoint")
    if len(data) >= 10:
        (header_len,) = struct.unpack("<Q", head)
        if 0 < header_len <= len(data) - 8 and bytes(data[8:9]) == b"{":
            return "safetensors", ()
    if head[:2] == b"\x80\x02":
        raise CheckpointError(
            "legacy (non-zip) torch.save pickle: re-save with torch.save(..., "
            "_use_new_zipfile_serialization=True) or use publish()"
        )
    raise CheckpointError(
        "unknown checkpoint format (not export, TorchScript, state_dict or safetensors)"
    )


def check_zip(data: bytes | memoryview) -> None:
    """Raise IntegrityError unless every record of the zip matches its CRC-32 in the directory.

    The directory is checked first (CheckpointError for a zip bomb: see `_zipcheck`).
    """
    check_crcs(data, read_directory(data))


def check_safetensors(data: bytes | memoryview) -> None:
    """Raise IntegrityError unless a safetensors file is whole and matches its data checksum.

    The format has no checksum of its own; files written by `publish()` carry the sha256 of
    their data section in the header, so a torn copy (new header, partly old data) is caught.
    Files without it are only checked for length.
    """
    _check_safetensors(data)


def _check_safetensors(data: _Buffer) -> None:
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise IntegrityError("safetensors header is not a JSON object")
    ends = [
        int(t["data_offsets"][1])
        for k, t in header.items()
        if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t
    ]
    size = max(0, len(data) - 8 - header_len)
    if size != max(ends, default=0):
        raise IntegrityError(
            f"safetensors data is {size} bytes, its header describes {max(ends, default=0)}"
            " (truncated or torn write)"
        )
    want = (header.get("__metadata__") or {}).get(SAFETENSORS_SHA256_KEY)
    if want is None:
        return
    # Views released on the way out, so an mmap under them can be closed (hashlib drops the GIL).
    with memoryview(data) as whole, whole[8 + header_len :] as body:
        got = hashlib.sha256(body).hexdigest()
    if got != want:
        raise IntegrityError(
            "safetensors data does not match the sha256 in its header (torn or corrupt write)"
        )


class ExportedPolicy(torch.nn.Module):
    """A `torch.export` program callable as `policy(state)` or `policy(state, deterministic)`.

    It calls the program's graph with its lifted parameters directly, skipping the input guards of
    `ExportedProgram.module()` (about 3x the forward cost of a small actor). The graph is the one
    exported, so `deterministic` is accepted for the calling convention and otherwise ignored.
    """

    def __init__(self, program: torch.export.ExportedProgram, device: str) -> None:
        super().__init__()
        from torch.export.graph_signature import InputKind, OutputKind

        self.program = program
        self.graph = program.graph_module
        sig = program.graph_signature
        lifted: list[torch.Tensor] = []
        for spec in sig.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                continue
            if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                raise CheckpointError(f"exported program has an unsupported input kind {spec.kind}")
            target = str(spec.target)
            value = program.state_dict.get(target)
            if value is None:
                value = program.constants[target]
            lifted.append(value.detach().to(device))
        self._lifted = tuple(lifted)
        self._user_outputs = [
            i for i, s in enumerate(sig.output_specs) if s.kind == OutputKind.USER_OUTPUT
        ]
        self._n_user_inputs = sum(1 for s in sig.input_specs if s.kind == InputKind.USER_INPUT)
        self._out_spec = program.call_spec.out_spec
        # The generated forward, without nn.Module.__call__ around it (~2 us of a ~30 us call).
        self._graph_forward = self.graph.forward
        # The common case, `return action, log_prob`: the graph's outputs are the result as is.
        n = len(sig.output_specs)
        self._plain_tuple = len(self._user_outputs) == n and self._out_spec == (
            torch.utils._pytree.tree_structure((0,) * n)
        )

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> Any:
        flat = self._graph_forward(*self._lifted, state)
        if self._plain_tuple:
            return tuple(flat)
        outs = [flat[i] for i in self._user_outputs]
        if self._out_spec is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return torch.utils._pytree.tree_unflatten(outs, self._out_spec)

    # Bypass nn.Module's hook machinery on the hot path: this wrapper has no hooks.
    __call__ = forward


def _metadata_from_json(raw: str | bytes | None, where: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where} metadata is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} metadata is not a JSON object")
    return data


def _load_export(path: Path, device: str) -> Loaded:
    extra = {METADATA_FILE: ""}
    # An open file, not a path: torch wants a `.pt2` name and logs a warning for anything else
    # (publish() names every checkpoint `.pt`).
    with open(path, "rb") as f:
        program = torch.export.load(f, extra_files=extra)
    return Loaded(
        ExportedPolicy(program, device),
        "export",
        _metadata_from_json(extra[METADATA_FILE], "export"),
    )


def _load_torchscript(path: Path, device: str) -> Loaded:
    extra = {METADATA_FILE: ""}
    model = torch.jit.load(str(path), map_location=device, _extra_files=extra)  # type: ignore[no-untyped-call]
    model.eval()
    return Loaded(model, "torchscript", _metadata_from_json(extra[METADATA_FILE], "TorchScript"))


class AutoLoader:
    """Loads the self-contained formats (export, TorchScript); weights formats need a factory."""

    def __call__(self, path: Path, fmt: str, device: str) -> Loaded:
        if fmt == "export":
            return _load_export(path, device)
        if fmt == "torchscript":
            return _load_torchscript(path, device)
        raise CheckpointError(
            f"a {fmt} checkpoint holds weights only: configure "
            "loader=state_dict_loader('package.module:make_model') to build the module"
        )


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
        if fmt not in WEIGHTS_FORMATS:
            return super().__call__(path, fmt, device)
        state, metadata = read_weights(path, fmt, device)
        module = self._build(metadata)
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit the factory's module: {exc}") from None
        unset = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if unset:
            raise CheckpointError(
                f"the factory's module has tensors the checkpoint does not fill: {', '.join(unset)}"
            )
        return Loaded(module.to(device).eval(), fmt, metadata)

    def __repr__(self) -> str:
        return f"state_dict_loader({self._spec!r})"


def read_weights(
    path: Path, fmt: str, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata of a state_dict or safetensors file, without a factory.

    On the CPU the tensors are mapped from the file, not read: their pages load when touched.
    """
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=device) as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            return tensors, _metadata_from_json(raw, "safetensors")
    if fmt != "state_dict":
        raise CheckpointError(f"a {fmt} checkpoint is not a weights file")
    try:
        state = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise CheckpointError(f"state_dict refused by weights_only loading: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"state_dict file holds {type(state).__name__}, not a dict")
    raw = state.pop(METADATA_KEY, None)
    if raw is not None and not isinstance(raw, str):
        raise CheckpointError(f"{METADATA_KEY} in a state_dict must be a JSON string")
    return state, _metadata_from_json(raw, "state_dict")


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


_SUFFIX = {
    "export": ".pt2",
    "torchscript": ".pt",
    "state_dict": ".pt",
    "safetensors": ".safetensors",
}


def _private_copy(data: bytes, target: Path) -> Path:
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


@contextmanager
def mapped(path: Path) -> Iterator[tuple[_Buffer, IO[bytes]]]:
    """The file at `path` as a read-only mmap (its pages are the page cache) and an open file."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:  # mmap refuses an empty file
            yield b"", f
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield buf, f


def _check(data: _Buffer, file: IO[bytes], allow_formats: Collection[str] | None) -> str:
    """Sniff, refuse formats not allowed, check the CRCs or the data sha256; return the format."""
    fmt, entries = _sniff(data)
    if allow_formats is not None and fmt not in allow_formats:
        allowed = ", ".join(sorted(allow_formats))
        raise CheckpointError(f"{fmt} checkpoints are not allowed here (allowed: {allowed})")
    if fmt == "safetensors":
        _check_safetensors(data)
    else:
        check_crcs(data, entries)
    return fmt


def load_checkpoint(
    path: str | Path,
    *,
    data: bytes | None = None,
    device: str = "cpu",
    loader: Loader | str = "auto",
    allow_formats: Collection[str] | None = None,
    copy_to: Path | None = None,
) -> Loaded:
    """Check and load one checkpoint file.

    Args:
        path: the file to load (the registry passes its private copy, which nothing rewrites).
        data: the file's bytes if already read; they are sniffed and CRC-checked. Without it
            (and without `copy_to`) the file is checked where it lies, through a read-only mmap.
        device: where to put the model.
        loader: `"auto"` or a Loader such as `state_dict_loader(...)`.
        allow_formats: if given, formats outside it are refused before anything is loaded.
        copy_to: load from a private copy of `data` at this path (suffix set by format), so what
            is loaded is exactly the bytes that were checked, whatever happens to `path`.
    """
    path = Path(path)
    if data is None and copy_to is None:
        with mapped(path) as (buf, file):
            fmt = _check(buf, file, allow_formats)
    else:
        if data is None:
            data = path.read_bytes()
        fmt = _check(data, io.BytesIO(data), allow_formats)
        if copy_to is not None:
            path = _private_copy(data, copy_to.with_suffix(_SUFFIX[fmt]))
    impl: Loader = AutoLoader() if loader == "auto" else loader  # type: ignore[assignment]
    if isinstance(impl, str):
        raise ValueError(f"unknown loader {impl!r}: use 'auto' or state_dict_loader(...)")
    try:
        return impl(path, fmt, device)
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises many types for a bad archive
        raise CheckpointError(f"{fmt} load failed: {type(exc).__name__}: {exc}") from exc
