"""PUBLISH: the trainer side. Write a checkpoint so that a server never sees half of it.

Each call writes `{name}_{YYYYmmdd_HHMMSS}.pt` (temp file in the same directory, fsync, atomic
link), points `{name}_latest.pt` at it (an atomic symlink swap), writes the manifest
`{name}_latest.json` (sha256, size, metadata, optional HMAC signature), then removes the oldest
timestamped checkpoints beyond `keep`, never the live one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import struct
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import PublishError
from .inference import act, infer_obs_dim
from .manifest import (
    METADATA_FILE,
    METADATA_KEY,
    SAFETENSORS_SHA256_KEY,
    SIGNING_KEY_ENV,
    sign_manifest,
)

__all__ = ["PublishFormat", "list_checkpoints", "publish"]

PublishFormat = Literal["export", "torchscript", "state_dict", "safetensors"]
_STAMP = "%Y%m%d_%H%M%S"


def _timestamped(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}_(\d{{8}}_\d{{6}})(?:_(\d+))?\.pt$")


def list_checkpoints(directory: str | os.PathLike[str], name: str = "actor") -> list[Path]:
    """The timestamped checkpoints `{name}_YYYYmmdd_HHMMSS[_N].pt` in `directory`, newest first."""
    pattern = _timestamped(name)
    found = []
    for entry in os.scandir(directory):
        m = pattern.match(entry.name)
        if m and entry.is_file(follow_symlinks=False):
            found.append((m.group(1), int(m.group(2) or 0), Path(entry.path)))
    return [p for *_, p in sorted(found, reverse=True)]


def _callable_of(model: Any) -> Any:
    if isinstance(model, torch.export.ExportedProgram):
        # A program accepts only the inputs it was exported with: (state,), not (state, True).
        module = model.module()
        return lambda state, deterministic=True: module(state)
    return model


def _export(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch")
    try:
        return torch.export.export(model, (example,), dynamic_shapes={"state": {0: batch}})
    except Exception as first:
        try:  # forward's first argument may not be named `state`
            return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        except Exception:
            raise PublishError(
                f"{type(model).__name__} cannot be exported with torch.export ({type(first).__name__}: "
                f"{first}); publish with format='state_dict' or 'safetensors' (and serve with "
                "state_dict_loader), or format='torchscript' if it can be scripted"
            ) from first


def _script(model: Any) -> Any:
    if isinstance(model, torch.jit.ScriptModule):
        return model
    try:
        return torch.jit.script(model)
    except Exception as exc:
        raise PublishError(
            f"{type(model).__name__} cannot be scripted ({type(exc).__name__}: {exc}); "
            "publish with format='export' (the default) or 'safetensors'"
        ) from exc


def _weights(model: Any, *, unshared: bool = False) -> dict[str, torch.Tensor]:
    """The model's tensors on the CPU; `unshared` copies tied ones (safetensors refuses them)."""
    state = (
        model.state_dict if isinstance(model, torch.export.ExportedProgram) else model.state_dict()
    )
    weights: dict[str, torch.Tensor] = {}
    seen: set[tuple[Any, ...]] = set()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        if unshared:
            where = (t.untyped_storage().data_ptr(),)
            if where in seen:
                t = t.clone()
            seen.add(where)
        weights[k] = t
    return weights


def _serialize(model: Any, fmt: str, meta_json: str, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    if fmt == "export":
        program = (
            model if isinstance(model, torch.export.ExportedProgram) else _export(model, example)
        )
        torch.export.save(program, buf, extra_files={METADATA_FILE: meta_json})
    elif fmt == "torchscript":
        if isinstance(model, torch.export.ExportedProgram):
            raise PublishError(
                "an ExportedProgram cannot be saved as TorchScript: use format='export'"
            )
        torch.jit.save(_script(model), buf, _extra_files={METADATA_FILE: meta_json})
    elif fmt == "state_dict":
        state: dict[str, Any] = dict(_weights(model))
        state[METADATA_KEY] = meta_json
        torch.save(state, buf)
    elif fmt == "safetensors":
        from safetensors.torch import save

        weights = _weights(model, unshared=True)
        plain = save(weights, metadata={METADATA_KEY: meta_json})
        data = _safetensors_data(plain)
        digest = hashlib.sha256(data).hexdigest()
        checked = save(weights, metadata={METADATA_KEY: meta_json, SAFETENSORS_SHA256_KEY: digest})
        if _safetensors_data(checked) != data:  # the header is the only part that may differ
            raise PublishError("safetensors wrote different data for the same weights")
        return checked
    else:
        raise PublishError(
            f"unknown format {fmt!r}: choose export, torchscript, state_dict or safetensors"
        )
    return buf.getvalue()


def _safetensors_data(blob: bytes) -> bytes:
    (header_len,) = struct.unpack("<Q", blob[:8])
    return blob[8 + header_len :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _place_unique(tmp: Path, directory: Path, name: str, when: datetime) -> Path:
    """Link `tmp` under a fresh timestamped name; a second call in the same second gets `_1`, ..."""
    stem = f"{name}_{when.strftime(_STAMP)}"
    # Number after the highest suffix of this second still on disk, so a name that retention
    # freed is never reused and names keep sorting in publish order.
    taken = re.compile(rf"^{re.escape(stem)}(?:_(\d+))?\.pt$")
    used = [int(m.group(1) or 0) for e in os.scandir(directory) if (m := taken.match(e.name))]
    first = max(used) + 1 if used else 0
    for n in range(first, first + 10_000):
        target = directory / (f"{stem}.pt" if n == 0 else f"{stem}_{n}.pt")
        try:
            os.link(tmp, target)
        except FileExistsError:
            continue
        os.unlink(tmp)
        return target
    raise PublishError(f"no free checkpoint name for {stem} in {directory}")


def _replace_symlink(link: Path, target_name: str) -> None:
    tmp = link.with_name(f".tmp-{link.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


def _retain(directory: Path, name: str, keep: int, live: Path) -> None:
    for old in list_checkpoints(directory, name)[keep:]:
        if old.name != live.name:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def publish(
    model: torch.nn.Module | torch.export.ExportedProgram,
    directory: str | os.PathLike[str],
    name: str = "actor",
    keep: int = 10,
    metadata: Mapping[str, Any] | None = None,
    *,
    format: PublishFormat | None = None,
    signing_key: str | bytes | None = None,
    example_input: torch.Tensor | None = None,
) -> Path:
    """Publish a checkpoint atomically and return the path of the new timestamped file.

    Args:
        model: an `nn.Module`, a `ScriptModule` or an `ExportedProgram` with
            `forward(state, deterministic=True) -> (action, log_prob)` or `-> action`.
        directory: the model directory the server watches (created if missing).
        name: file name prefix: `{name}_latest.pt`, `{name}_latest.json`, `{name}_<stamp>.pt`.
        keep: how many timestamped checkpoints to keep (the live one is never removed).
        metadata: JSON-serialisable extras (`step`, `eval_return`, `obs_low`, `action_high`...);
            `obs_dim`, `action_dim`, `format` and `created_at` are filled in.
        format: "export" (default for modules), "torchscript" (default for ScriptModules),
            "state_dict" or "safetensors" (weights only; serve them with `state_dict_loader`).
        signing_key: HMAC key for the manifest signature; defaults to `$CKPTSERVE_SIGNING_KEY`.
        example_input: a `[batch, obs_dim]` tensor to export and probe with, if `obs_dim` is
            neither in `metadata` nor the width of the model's first weight.

    Example:
        publish(actor, "models/", metadata={"step": step, "eval_return": ret})

    An `s3://bucket/prefix/` directory publishes to object storage (objectstore.py): the
    checkpoint object first, the manifest last; the path returned is then the new object's name.
    """
    if isinstance(directory, str) and directory.startswith("s3://"):
        # objectstore.py builds on this module, so it is found by name, not imported above.
        store: Any = importlib.import_module("ckptserve.objectstore")
        url: str = store.publish_to_store(
            model, directory, name, keep, metadata, format=format, signing_key=signing_key,
            example_input=example_input,
        )  # fmt: skip
        return Path(url.rpartition("/")[2])
    if keep < 1:
        raise ValueError("keep must be at least 1")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if format is None:
        format = "torchscript" if isinstance(model, torch.jit.ScriptModule) else "export"
    meta: dict[str, Any] = dict(metadata or {})
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        if example_input is None:
            obs_dim = meta.get("obs_dim") or infer_obs_dim(model)
            if obs_dim is None:
                raise PublishError("cannot tell the observation size: pass metadata={'obs_dim': N}")
            example_input = torch.zeros(2, int(obs_dim))
        meta.setdefault("obs_dim", int(example_input.shape[-1]))
        try:
            action = act(_callable_of(model), example_input)
        except Exception as exc:
            raise PublishError(
                f"the model fails on a {list(example_input.shape)} input: {exc}"
            ) from exc
        meta.setdefault("action_dim", int(action.shape[-1]))
        when = datetime.now(timezone.utc)
        meta.setdefault("created_at", when.isoformat())
        meta["format"] = format
        try:
            meta_json = json.dumps(meta, sort_keys=True)
        except TypeError as exc:
            raise PublishError(f"metadata is not JSON-serialisable: {exc}") from None
        try:
            data = _serialize(model, format, meta_json, example_input)
        except PublishError:
            raise
        except Exception as exc:
            raise PublishError(f"could not write a {format} checkpoint: {exc}") from exc
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train()

    tmp = _write_temp(directory, data, ".pt")
    try:
        checkpoint = _place_unique(tmp, directory, name, when.astimezone())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory)
    _replace_symlink(directory / f"{name}_latest.pt", checkpoint.name)
    manifest: dict[str, Any] = {
        "checkpoint": checkpoint.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "format": format,
        "metadata": meta,
        "created_at": meta["created_at"],
    }
    key = signing_key if signing_key is not None else os.environ.get(SIGNING_KEY_ENV) or None
    if key:
        manifest["signature"] = sign_manifest(manifest, key)
    payload = json.dumps(manifest, indent=2, sort_keys=True).encode()
    os.replace(_write_temp(directory, payload, ".json"), directory / f"{name}_latest.json")
    _fsync_dir(directory)
    _retain(directory, name, keep, checkpoint)
    return checkpoint
