"""`ckptserve inspect FILE`: what a checkpoint is and whether it would be served."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..formats import Loaded, load_checkpoint, mapped, read_weights, sniff, state_dict_loader
from ..inference import act
from ..naming import WEIGHTS_FORMATS
from ..sources import FileSource
from ..validation import expectations_for, run_checks

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
    path: Path, *, factory: str | None = None, obs_dim: int | None = None
) -> dict[str, Any]:
    """Format, size, sha256, metadata, parameter count, load time and probe shapes of a file.

    Like the server, it streams the file into a private temporary copy (hashed on the way) and
    checks and loads that copy once, so a file replaced or truncated meanwhile cannot mix two
    versions into one report. OSError if the file cannot be read.
    """
    with tempfile.TemporaryDirectory(prefix="ckptserve-inspect-") as spool:
        snapshot = FileSource(path).fetch(Path(spool))
        info: dict[str, Any] = {"file": str(path), "size": snapshot.size, "sha256": snapshot.sha256}
        return _describe_copy(snapshot.file, info, factory=factory, obs_dim=obs_dim)


def _describe_copy(
    copy: Path, info: dict[str, Any], *, factory: str | None, obs_dim: int | None
) -> dict[str, Any]:
    with mapped(copy) as data:
        try:
            fmt = sniff(data)
        except CheckpointError as exc:
            info["error"] = str(exc)
            return info
    info["format"] = fmt
    info["runs_code_on_load"] = fmt == "torchscript"
    weights_only = fmt in WEIGHTS_FORMATS and factory is None
    loader: Any = (
        _weights_only if weights_only else state_dict_loader(factory) if factory else "auto"
    )
    started = time.perf_counter()
    try:
        loaded = load_checkpoint(copy, loader=loader)  # checked (CRCs, data sha256), then loaded
    except (CheckpointError, ValueError, ImportError, AttributeError) as exc:
        info["error"] = f"load failed: {exc}"
        return info
    if weights_only:
        info["parameters"] = _count_parameters(loaded.model)
        info["probe"] = "skipped: a weights-only file needs --factory package.module:make_model"
        info["metadata"] = loaded.metadata
        return info
    info["load_ms"] = round((time.perf_counter() - started) * 1000, 2)
    info["metadata"] = loaded.metadata
    info["parameters"] = _count_parameters(loaded.model)
    try:
        expect = expectations_for(loaded.metadata, obs_dim=obs_dim)
        probed = run_checks(loaded.model, expect)
    except CheckpointError as exc:
        info["probe"] = f"rejected: {exc}"
        info["error"] = f"would not be served: {exc}"
        return info
    if probed is None:
        info["probe"] = "skipped: the observation size is unknown (pass --obs-dim)"
        return info
    action = act(loaded.model, torch.zeros(1, probed))
    info["input_shape"] = [1, probed]
    info["output_shape"] = list(action.shape)
    info["probe"] = "ok"
    return info
