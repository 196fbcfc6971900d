"""PUBLISH: the trainer side. Write a checkpoint so that a server never sees half of it.

Each call writes `{name}_{YYYYmmdd_HHMMSS}.pt` (`.safetensors` for safetensors; temp file in the
same directory, fsync, atomic link), points `{name}_latest.pt` at it (an atomic symlink swap),
writes the manifest `{name}_latest.json` (sha256, size, metadata, optional HMAC signature), then
removes the oldest timestamped checkpoints beyond `keep`, never the live one. The file names
are the rules of `naming.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import IntegrityError, PublishError, ValidationError, one_line
from .formats import FORMATS, ExportedPolicy
from .inference import act, as_policy, call_named, infer_obs_dim
from .manifest import Keyring, keyring_from_environment, parse_manifest
from .naming import (
    CHECKPOINT_SUFFIXES,
    DEFAULT_NAME,
    MANIFEST_SUFFIX,
    STAMP_FORMAT,
    checkpoint_name,
    is_object_url,
    latest_link,
    latest_manifest,
    list_checkpoints,
    parse_checkpoint_name,
    record_for,
    suffix_for,
)
from .rollout.follow import FollowRule, published
from .rollout.ordering import run_id_for
from .statedir import STATE_DIR_ENV, pinned_in
from .validation import expectations_for

__all__ = ["PublishFormat", "list_checkpoints", "publish"]

PublishFormat = Literal["export", "torchscript", "state_dict", "safetensors"]


def _callable_of(model: Any) -> Any:
    if isinstance(model, torch.export.ExportedProgram):
        # A program accepts only the inputs it was exported with: (state,), not (state, True).
        module = model.module()
        return lambda state, deterministic=True: module(state)
    return as_policy(model)


def _describe_policy(
    model: Any, meta: dict[str, Any], example: torch.Tensor | None
) -> torch.Tensor:
    """Fill in a policy's `obs_dim` and `action_dim`; return the state to export with."""
    if any(isinstance(meta.get(key), Mapping) for key in ("inputs", "outputs")):
        raise PublishError(
            "metadata inputs/outputs objects describe a model with named inputs: publish it with "
            "example_inputs= (or name these metadata keys otherwise)"
        )
    if example is None:
        obs_dim = meta.get("obs_dim") or infer_obs_dim(model)
        if obs_dim is None:
            raise PublishError("cannot tell the observation size: pass metadata={'obs_dim': N}")
        example = torch.zeros(2, int(obs_dim))
    meta.setdefault("obs_dim", int(example.shape[-1]))
    try:
        action = act(_callable_of(model), example)
    except Exception as exc:
        raise PublishError(
            f"the model fails on a {list(example.shape)} input: {one_line(str(exc))}"
        ) from exc
    meta.setdefault("action_dim", int(action.shape[-1]) if action.dim() > 1 else 1)
    return example


def _describe_named(
    model: Any, meta: dict[str, Any], examples: Mapping[str, torch.Tensor], output_name: str | None
) -> dict[str, torch.Tensor]:
    """Fill in a named-input model's `inputs` and `outputs` from a run on the examples; return
    them, each with a batch of at least 2 (torch.export keeps a batch of 1 fixed)."""
    if "obs_dim" in meta or "action_dim" in meta:
        raise PublishError(
            "a model with example_inputs has inputs and outputs, not obs_dim/action_dim"
        )
    args: dict[str, torch.Tensor] = {}
    for name, t in examples.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] < 1:
            raise PublishError(f"example_inputs[{name!r}] must be a [batch, size] tensor")
        args[name] = t if t.shape[0] >= 2 else t.expand(2, -1)
    shapes = ", ".join(f"{name}{list(t.shape)}" for name, t in args.items())
    fn = ExportedPolicy(model, "cpu") if isinstance(model, torch.export.ExportedProgram) else model
    try:
        with torch.inference_mode():
            out = fn(**args)
        if isinstance(out, Mapping):
            if output_name is not None:
                raise PublishError(
                    "the model names its outputs (it returns a dict): drop output_name"
                )
            names = [str(k) for k in out]
        else:
            names = [output_name or "output"]
        got = call_named(fn, args, names)
    except PublishError:
        raise
    except Exception as exc:
        raise PublishError(f"the model fails on {shapes}: {one_line(str(exc))}") from exc
    meta["inputs"] = {name: int(t.shape[-1]) for name, t in args.items()}
    meta["outputs"] = {name: int(t.shape[-1]) for name, t in got.items()}
    try:
        expectations_for(meta)  # the names and sizes a server takes
    except ValidationError as exc:
        raise PublishError(str(exc)) from None
    return args


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes, suffix: str) -> Path:
    """Write `data` to a new hidden file in `directory`, fsynced, with the umask's mode.

    Not mkstemp: it makes 0600 files whatever the umask, which a server running as another
    user cannot read. Opened 0666 with O_EXCL, the kernel applies the umask (0644 under 022).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = directory / f".tmp-{secrets.token_hex(8)}{suffix}"
        try:
            fd = os.open(tmp, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise PublishError(f"no free temporary name in {directory}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _place_unique(tmp: Path, directory: Path, name: str, when: datetime, fmt: str) -> Path:
    """Link `tmp` under a fresh timestamped name; a second call in the same second gets `_1`, ..."""
    stamp = when.strftime(STAMP_FORMAT)
    # Number after the highest of this second still on disk (any suffix), so a name that
    # retention freed is never reused and names keep sorting in publish order.
    used = [
        parts.n
        for entry in os.scandir(directory)
        if (parts := parse_checkpoint_name(entry.name))
        and (parts.name, parts.stamp) == (name, stamp)
    ]
    first = max(used) + 1 if used else 0
    for n in range(first, first + 10_000):
        target = directory / checkpoint_name(name, when, fmt, n)
        try:
            os.link(tmp, target)
        except FileExistsError:
            continue
        os.unlink(tmp)
        return target
    raise PublishError(f"no free checkpoint name for {name}_{stamp} in {directory}")


def _replace_symlink(link: Path, target_name: str) -> None:
    tmp = link.with_name(f".tmp-{link.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


def _point_latest(directory: Path, name: str, fmt: str, checkpoint: Path) -> None:
    """Point `{name}_latest{suffix}` at `checkpoint`; drop the link of another suffix (a format
    published before), which would point at an older checkpoint."""
    link = latest_link(directory, name, fmt)
    _replace_symlink(link, checkpoint.name)
    for suffix in CHECKPOINT_SUFFIXES:
        other = link.with_name(f"{name}_latest{suffix}")
        if other != link and other.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                other.unlink()


def _keyring(signing_key: str | bytes | Keyring | None) -> Keyring | None:
    if isinstance(signing_key, Keyring):
        return signing_key
    if signing_key:
        return Keyring.single(signing_key)
    try:
        return keyring_from_environment()
    except ValueError as exc:
        raise PublishError(f"signing keys: {exc}") from None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


#: The variable `publish()` reads the servers' follow rule from when given none (the one
#: `ckptserve serve --follow` reads too).
FOLLOW_ENV = "CKPTSERVE_FOLLOW"


def _retain(directory: Path, name: str, keep: int, live: Path, state_dir: str | None,
            rule: FollowRule) -> None:  # fmt: skip
    """Remove the timestamped checkpoints beyond the `keep` newest, each with its record, but
    never the live one, one a server has pinned (its pins are in its state directory), nor the
    best one under the servers' follow rule (`--follow max:<key>`)."""
    spared = {live.name} | (pinned_in(state_dir, directory) if state_dir else set())
    if rule.key is not None:
        spared |= rule.protected(published(directory, name))
    for old in list_checkpoints(directory, name)[keep:]:
        if old.name not in spared:
            _unlink(record_for(old))
            _unlink(old)


def publish(
    model: torch.nn.Module | torch.export.ExportedProgram,
    directory: str | os.PathLike[str],
    name: str = DEFAULT_NAME,
    keep: int = 10,
    metadata: Mapping[str, Any] | None = None,
    *,
    format: PublishFormat | None = None,
    signing_key: str | bytes | Keyring | None = None,
    example_input: torch.Tensor | None = None,
    example_inputs: Mapping[str, torch.Tensor] | None = None,
    output_name: str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    new_run: bool = False,
    follow: str | None = None,
) -> Path:
    """Publish a checkpoint atomically and return the path of the new timestamped file.

    Args:
        model: an `nn.Module`, a `ScriptModule` or an `ExportedProgram` with
            `forward(state, deterministic=True) -> (action, log_prob)` or `-> action`.
        directory: the model directory the server watches (created if missing).
        name: file name prefix: `{name}_latest.json`, `{name}_latest.pt`, `{name}_<stamp>.pt`
            (`.safetensors` instead of `.pt` for safetensors; the layout is in `naming.py`).
        keep: how many timestamped checkpoints to keep (the live one and pinned ones are never
            removed).
        metadata: JSON-serialisable extras (`step`, `eval_return`, `obs_low`, `action_high`...);
            `obs_dim`, `action_dim`, `format` and `created_at` are filled in.
        format: "export" (default for modules), "torchscript" (default for ScriptModules),
            "state_dict" or "safetensors" (weights only; serve them with `state_dict_loader`).
        signing_key: HMAC key for the manifest signature, or a `Keyring` (its signing key signs,
            and its id goes into the manifest as `key_id`); defaults to the keys of
            `$CKPTSERVE_SIGNING_KEYS` (the first listed signs) or `$CKPTSERVE_SIGNING_KEY`.
        example_input: a `[batch, obs_dim]` tensor to export and probe with, if `obs_dim` is
            neither in `metadata` nor the width of the model's first weight.
        example_inputs, output_name: for a model that is not a policy (a critic's
            `forward(state, action) -> q`): one `[batch, size]` example per input, by the name
            `forward` calls it (it is called with them by name), and the name of the tensor it
            returns (default "output"; a model that returns a dict of tensors names its
            own). Written to the metadata as `inputs` and `outputs` (`{"state": 8, "action":
            1}`, `{"q": 1}`); the server then takes `{"inputs": {...}}` and OIP requests with
            those names.
        state_dir: the servers' state directory (`--state-dir`), whose pins retention spares;
            defaults to `$CKPTSERVE_STATE_DIR`.
        run_id, new_run: the run the checkpoint belongs to (metadata `run_id`): by default the
            one the directory's manifest names, so a trainer restarted from scratch is the same
            run and its lower steps are refused as regressions; `new_run=True` starts a new one.
        follow: the servers' `--follow` rule ("max:eval_return"), so retention never removes
            the checkpoint they serve as the best; defaults to `$CKPTSERVE_FOLLOW` (the
            variable the server reads too), else "latest".

    Example:
        publish(actor, "models/", metadata={"step": step, "eval_return": ret})

    An `s3://bucket/prefix/` directory publishes to object storage (objectstore.py): the
    checkpoint object first, the manifest last; the path returned is then the new object's name.
    """
    if is_object_url(directory):
        # _s3publish.py builds on this module, so it is found by name, not imported above.
        store: Any = importlib.import_module("ckptserve._s3publish")
        url: str = store.publish_to_store(
            model, directory, name, keep, metadata, format=format, signing_key=signing_key,
            example_input=example_input, example_inputs=example_inputs, output_name=output_name,
        )  # fmt: skip
        return Path(url.rpartition("/")[2])
    if keep < 1:
        raise ValueError("keep must be at least 1")
    rule = FollowRule.parse(follow or os.environ.get(FOLLOW_ENV) or "latest")
    keyring = _keyring(signing_key)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if format is None:
        format = "torchscript" if isinstance(model, torch.jit.ScriptModule) else "export"
    if format not in FORMATS:
        raise PublishError(f"unknown format {format!r}: choose {', '.join(FORMATS)}")
    meta: dict[str, Any] = dict(metadata or {})
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        if example_inputs is not None:
            if example_input is not None:
                raise PublishError("pass example_input (a policy) or example_inputs, not both")
            example: Any = _describe_named(model, meta, example_inputs, output_name)
        elif output_name is not None:
            raise PublishError("output_name names the output of a model with example_inputs")
        else:
            example = _describe_policy(model, meta, example_input)
        if "run_id" not in meta or run_id is not None or new_run:
            meta["run_id"] = run_id_for(directory, name, run_id=run_id, new_run=new_run)
        when = datetime.now(timezone.utc)
        meta.setdefault("created_at", when.isoformat())
        meta["format"] = format
        try:
            meta_json = json.dumps(meta, sort_keys=True)
        except TypeError as exc:
            raise PublishError(f"metadata is not JSON-serialisable: {one_line(str(exc))}") from None
        try:
            data = FORMATS[format].write(model, meta_json, example)
        except PublishError:
            raise
        except Exception as exc:
            raise PublishError(
                f"could not write a {format} checkpoint: {one_line(str(exc))}"
            ) from exc
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train()

    tmp = _write_temp(directory, data, suffix_for(format))
    try:
        checkpoint = _place_unique(tmp, directory, name, when.astimezone(), format)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    manifest: dict[str, Any] = {
        "checkpoint": checkpoint.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "format": format,
        "metadata": meta,
        "created_at": meta["created_at"],
    }
    if keyring is not None:
        manifest = keyring.sign(manifest)
    payload = json.dumps(manifest, indent=2, sort_keys=True).encode()
    try:
        parse_manifest(payload)
    except IntegrityError as exc:  # e.g. metadata over the 64 KiB a server reads
        _unlink(checkpoint)
        raise PublishError(f"a server would refuse this checkpoint's manifest: {exc}") from None
    # The checkpoint's own record first (a pin or a fallback to it is checked against it),
    # then the latest link and manifest: each file replaced atomically, each after what it names.
    os.replace(_write_temp(directory, payload, MANIFEST_SUFFIX), record_for(checkpoint))
    _fsync_dir(directory)
    _point_latest(directory, name, format, checkpoint)
    os.replace(_write_temp(directory, payload, MANIFEST_SUFFIX), latest_manifest(directory, name))
    _fsync_dir(directory)
    if state_dir is None:
        state_dir = os.environ.get(STATE_DIR_ENV) or None
    _retain(directory, name, keep, checkpoint, None if state_dir is None else os.fspath(state_dir),
            rule)  # fmt: skip
    return checkpoint
