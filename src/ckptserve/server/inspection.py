"""`ckptserve inspect FILE`: what a checkpoint is and whether it would be served."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..formats import load_checkpoint, sniff, state_dict_loader
from ..inference import act
from ..manifest import METADATA_KEY
from ..validation import expectations_for, run_checks

__all__ = ["describe"]


def _count_parameters(model: Any) -> int:
    program = getattr(model, "program", None)
    if program is not None:  # ExportedPolicy: the program holds the weights
        return sum(int(t.numel()) for t in program.state_dict.values())
    params = getattr(model, "parameters", None)
    return sum(int(p.numel()) for p in params()) if params is not None else 0


def _weights_only_count(path: Path, fmt: str) -> int | None:
    try:
        if fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                total = 0
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    shape = f.get_slice(key).get_shape()
                    n = 1
                    for d in shape:
                        n *= int(d)
                    total += n
                return total
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        return sum(
            int(v.numel()) for k, v in state.items() if k != METADATA_KEY and hasattr(v, "numel")
        )
    except Exception:
        return None


def describe(
    path: Path, data: bytes, *, factory: str | None = None, obs_dim: int | None = None
) -> dict[str, Any]:
    """Format, size, sha256, metadata, parameter count, load time and probe shapes of a file."""
    info: dict[str, Any] = {
        "file": str(path),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    try:
        fmt = sniff(data)
    except CheckpointError as exc:
        info["error"] = str(exc)
        return info
    info["format"] = fmt
    info["runs_code_on_load"] = fmt == "torchscript"
    weights_only = fmt in ("state_dict", "safetensors")
    if weights_only and factory is None:
        count = _weights_only_count(path, fmt)
        if count is not None:
            info["parameters"] = count
        info["probe"] = "skipped: a weights-only file needs --factory package.module:make_model"
        try:
            info["metadata"] = _weights_metadata(path, fmt)
        except CheckpointError as exc:
            info["error"] = str(exc)
        return info
    loader: Any = state_dict_loader(factory) if factory else "auto"
    with tempfile.TemporaryDirectory(prefix="ckptserve-inspect-") as tmp:
        started = time.perf_counter()
        try:
            loaded = load_checkpoint(
                path, data=data, loader=loader, copy_to=Path(tmp) / "checkpoint"
            )
        except (CheckpointError, ValueError, ImportError, AttributeError) as exc:
            info["error"] = f"load failed: {exc}"
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


def _weights_metadata(path: Path, fmt: str) -> dict[str, Any]:
    import json

    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        raw = state.get(METADATA_KEY) if isinstance(state, dict) else None
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"metadata is not JSON: {exc}") from None
    return data if isinstance(data, dict) else {}
