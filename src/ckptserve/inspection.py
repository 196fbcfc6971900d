"""INSPECT: what a checkpoint is and whether it would be served (`ckptserve inspect PATH`).

The same stages a server runs, once, on a private copy: detect (a file, a manifest or a
directory, as `serve` takes them), load, validate. No FastAPI: the command stays fast.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ._copies import PrivateCopies
from .errors import CheckpointError
from .formats import (
    FORMATS,
    Loaded,
    load_checkpoint,
    mapped,
    read_weights,
    sniff,
    state_dict_loader,
)
from .inference import act
from .naming import MANIFEST_SUFFIX, latest_in_directory, name_in_directory
from .sources import FileSource, ManifestSource, Snapshot
from .validation import expectations_for, run_checks

__all__ = ["describe"]


def _count_parameters(model: Any) -> int:
    program = getattr(model, "program", None)
    # Weights read without a factory are a dict; an ExportedPolicy's program holds its weights.
    tensors = model if isinstance(model, dict) else getattr(program, "state_dict", None)
    if tensors is not None:
        return sum(int(t.numel()) for t in tensors.values() if hasattr(t, "numel"))
    params = getattr(model, "parameters", None)
    return sum(int(p.numel()) for p in params()) if params is not None else 0


def _weights_only(path: Path, fmt: str, device: str) -> Loaded:
    """A Loader that stops at the tensors and metadata: there is no factory to build a module."""
    state, metadata = read_weights(path, fmt, device)
    return Loaded(state, fmt, metadata)


def describe(
    path: str | os.PathLike[str],
    *,
    factory: str | None = None,
    obs_dim: int | None = None,
    signing_key: str | bytes | None = None,
) -> dict[str, Any]:
    """Format, size, sha256, metadata, parameter count, load time and probe shapes of a checkpoint.

    Args:
        path: a checkpoint file, a `{name}_latest.json` manifest (its checkpoint is described,
            checked against the manifest's sha256 and size), or a model directory (the file a
            server would follow in it).
        factory: `"package.module:function"` to build the module of a weights-only file.
        obs_dim: the observation size, when the checkpoint does not say.
        signing_key: check the manifest's signature with this key.

    Like the server, it streams the checkpoint into a private temporary copy (hashed on the
    way) and checks and loads that copy once, so a file replaced or truncated meanwhile cannot
    mix two versions into one report. A reason the checkpoint would not be served is in
    `"error"` (one line). OSError if the file cannot be read.

    Example:
        describe("models/")["probe"]  # "ok"
    """
    path = Path(path)
    info: dict[str, Any] = {}
    if path.is_dir():
        info["directory"] = str(path)
        path = latest_in_directory(path, name_in_directory(path))
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, "nothing published here yet", str(path))
    with tempfile.TemporaryDirectory(prefix="ckptserve-inspect-") as spool:
        copies = PrivateCopies(spool)  # held to the end: collecting it removes the copy
        try:
            snapshot = _fetch(path, copies, info, signing_key)
        except CheckpointError as exc:
            info["error"] = str(exc)
            return info
        info.update(file=str(snapshot.path), size=snapshot.size, sha256=snapshot.sha256)
        return _describe_copy(snapshot, info, factory=factory, obs_dim=obs_dim)


def _fetch(
    path: Path, copies: PrivateCopies, info: dict[str, Any], signing_key: str | bytes | None
) -> Snapshot:
    if path.suffix != MANIFEST_SUFFIX:
        return FileSource(path).fetch(copies)
    info["manifest"] = str(path)
    source = ManifestSource(path, signing_key=signing_key)
    manifest = source.read_manifest()
    info["signed"] = "signature" in manifest
    if signing_key is not None:
        info["signature"] = "valid"
    return source.fetch(copies)


def _describe_copy(
    snapshot: Snapshot, info: dict[str, Any], *, factory: str | None, obs_dim: int | None
) -> dict[str, Any]:
    copy = snapshot.file
    with mapped(copy) as data:
        try:
            fmt = FORMATS[sniff(data)]
        except CheckpointError as exc:
            info["error"] = str(exc)
            return info
    info["format"] = fmt.name
    info["runs_code_on_load"] = fmt.runs_code_on_load
    weights_only = fmt.needs_factory and factory is None
    loader: Any = (
        _weights_only if weights_only else state_dict_loader(factory) if factory else "auto"
    )
    started = time.perf_counter()
    try:
        loaded = load_checkpoint(copy, loader=loader)  # checked (CRCs, data sha256), then loaded
    except (CheckpointError, ValueError, ImportError, AttributeError) as exc:
        info["error"] = f"load failed: {exc}"
        return info
    metadata = {**snapshot.metadata, **loaded.metadata}
    if weights_only:
        info["parameters"] = _count_parameters(loaded.model)
        info["probe"] = "skipped: a weights-only file needs --factory package.module:make_model"
        info["metadata"] = metadata
        return info
    info["load_ms"] = round((time.perf_counter() - started) * 1000, 2)
    info["metadata"] = metadata
    info["parameters"] = _count_parameters(loaded.model)
    try:
        expect = expectations_for(metadata, obs_dim=obs_dim)
        checked = run_checks(loaded.model, expect)
    except CheckpointError as exc:
        info["probe"] = f"rejected: {exc}"
        info["error"] = f"would not be served: {exc}"
        return info
    if checked.inputs is not None:  # named inputs and outputs (a critic)
        info["inputs"] = {name: [1, size] for name, size in checked.inputs}
        info["outputs"] = {name: [1, size] for name, size in checked.outputs or ()}
        info["probe"] = "ok"
        return info
    probed = checked.obs_dim or 0
    action = act(loaded.model, torch.zeros(1, probed))
    info["input_shape"] = [1, probed]
    info["output_shape"] = list(action.shape)
    info["probe"] = "ok"
    return info
