"""LOAD + VALIDATE, as one step: turn a fetched snapshot into a checked candidate, or raise.

`load_candidate` checks and loads the snapshot's private copy (the file `Source.fetch` wrote),
works out what the model must look like (options + the checkpoint's metadata), runs the probe
and the user's `validate`, and returns a `LiveModel`. It reads no registry state, so anything
that wants a verified candidate (the registry's swap, a shadow or canary evaluation) calls the
same function.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from .formats import load_checkpoint
from .inference import as_policy, on_device
from .options import RegistryOptions
from .sources import Snapshot
from .validation import Expectations, expectations_for, run_checks
from .versions import ModelVersion

__all__ = ["LiveModel", "load_candidate"]


@dataclass(frozen=True, slots=True)
class LiveModel:
    """The handle a request uses from start to end: the model and the version it came from."""

    model: Any
    version: ModelVersion
    expect: Expectations = field(repr=False)


def load_candidate(
    snapshot: Snapshot,
    *,
    device: str,
    options: RegistryOptions,
    served: Expectations | None = None,
    path: str | os.PathLike[str] | None = None,
    started: float | None = None,
) -> LiveModel:
    """Load, probe and validate one snapshot; return it as a handle that is not live anywhere.

    Args:
        snapshot: the checkpoint as a source fetched it: a private copy, named by its sha256.
        device: where the model is loaded ("cpu", "cuda:0", ...).
        options: the loader, allowed formats, expectations and `validate` to apply.
        served: the live model's expectations: their sizes lock the candidate's (None: nothing
            live, or a forced load).
        path: the path recorded as the version's `path` (default: the snapshot's).
        started: `time.perf_counter()` when the attempt began, for `load_seconds` (default: now).

    Raises:
        CheckpointError: the bytes do not load (IntegrityError) or the model is rejected
            (ValidationError). Other exceptions (a loader's bug) propagate as they are.

    Example:
        candidate = load_candidate(source.fetch(PrivateCopies()), device="cpu",
                                   options=RegistryOptions())
    """
    if started is None:
        started = time.perf_counter()
    loaded = load_checkpoint(
        snapshot.file, device=device, loader=options.loader, allow_formats=options.allow_formats
    )
    # forward(state) actors are called as forward(state, True); on an accelerator, with CPU states.
    model = on_device(as_policy(loaded.model), device)
    metadata = {**snapshot.metadata, **loaded.metadata}
    expect = expectations_for(
        metadata,
        obs_dim=options.obs_dim, action_dim=options.action_dim,
        obs_low=options.obs_low, obs_high=options.obs_high,
        action_low=options.action_low, action_high=options.action_high,
        served=served,
    )  # fmt: skip
    expect = run_checks(model, expect, options.validate)
    # A target outside the model's directory is named by the path inside it, nothing more.
    resolved = snapshot.resolved if snapshot.inside else snapshot.path
    version = ModelVersion(
        path=str(snapshot.path if path is None else path),
        resolved=str(resolved),
        key=snapshot.key if snapshot.inside else None,
        mtime=snapshot.key.mtime_ns / 1e9,
        size=snapshot.size,
        sha256=snapshot.sha256,
        format=loaded.format,
        metadata=metadata,
        loaded_at=time.time(),
        load_seconds=time.perf_counter() - started,
    )
    return LiveModel(model, version, expect)
