"""The registry's options: how it detects, loads, validates and swaps, as one frozen object.

Validated when built, so a bad option fails where it is written (`RegistryOptions(swap="bg")`),
not at the first load. The server builds one from its settings; `ModelRegistry(path, **overrides)`
applies keyword overrides on top.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from .formats import FORMATS, Loader
from .validation import BoundSpec

__all__ = ["RegistryOptions", "SwapMode"]

SwapMode = Literal["sync", "background"]


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How a registry detects, loads, validates and swaps. All fields have working defaults.

    check_interval: 0 = one stat per call (the original); > 0 = at most one per interval (s).
    swap: "sync" loads in the calling thread; "background" loads on a worker thread while
        callers keep getting the live model (a cold start still waits for the first load).
    background_nice: nice levels added to the background worker thread (Linux): where the cores
        are busy, requests get the CPU first and a load takes longer (measured: p99 during
        reloads 1.34x -> 1.09x the no-reload run, freshness 17 -> 46 ms). 0 = same priority.
    loader: "auto" (export, TorchScript) or `state_dict_loader(...)` for weights formats.
    validate: called with a freshly loaded model; raising rejects it.
    retry_after: seconds before a checkpoint that failed is tried again (unless it changes).
    verify_interval: seconds between full re-reads of the manifest, catching changes a stat key
        misses (coarse timestamps, NFS attribute caches); None = 5 s for manifests, off for files.
    obs_dim, action_dim, obs_low/high, action_low/high: expectations; the checkpoint's metadata
        fills what is not configured, and a contradiction rejects the checkpoint.
    allow_formats: formats that may load (names as in publish's `format=`); None = all.
    signing_key / require_signature: manifest HMAC key (default `$CKPTSERVE_SIGNING_KEY`).
    history: how many load attempts `status()` keeps.
    cache_dir: where private copies of checkpoints are loaded from (default: a temp dir).
    max_concurrent_loads: at most this many processes on the host load this model at once
        (`--workers N`: one publish would start N loads); a process whose turn has not come
        keeps serving its live model. None = no coordination. See coordination.py.
    lock_dir: where the coordination lock files live (default: a per-user temp dir).
    max_checkpoint_bytes: the most bytes of one checkpoint that are read (manifest mode: also at
        most the size the manifest states, plus one).
    nfs: the model directory is on a shared file system (NFS): its attributes are polled by a
        thread of its own every check_interval (1 s when 0), past the attribute cache (nfs.py).
    """

    check_interval: float = 0.0
    swap: SwapMode = "sync"
    background_nice: int = 10
    loader: Loader | str = "auto"
    validate: Callable[[Any], object] | None = None
    retry_after: float = 5.0
    verify_interval: float | None = None
    obs_dim: int | None = None
    action_dim: int | None = None
    obs_low: BoundSpec = None
    obs_high: BoundSpec = None
    action_low: BoundSpec = None
    action_high: BoundSpec = None
    allow_formats: Collection[str] | None = None
    signing_key: str | bytes | None = None
    require_signature: bool = False
    history: int = 20
    cache_dir: str | None = None
    max_concurrent_loads: int | None = None
    lock_dir: str | None = None
    max_checkpoint_bytes: int = 8 << 30
    nfs: bool = False

    def __post_init__(self) -> None:
        if self.swap not in ("sync", "background"):
            raise ValueError(f"swap must be 'sync' or 'background', not {self.swap!r}")
        if not 0 <= self.background_nice <= 19:
            raise ValueError("background_nice must be between 0 and 19")
        if self.check_interval < 0 or self.retry_after < 0:
            raise ValueError("check_interval and retry_after must be >= 0")
        if self.verify_interval is not None and self.verify_interval < 0:
            raise ValueError("verify_interval must be >= 0 (or None for the default)")
        if self.max_concurrent_loads is not None and self.max_concurrent_loads < 1:
            raise ValueError("max_concurrent_loads must be >= 1 (or None for no coordination)")
        if self.max_checkpoint_bytes < 1:
            raise ValueError("max_checkpoint_bytes must be >= 1")
        if self.history < 1:
            raise ValueError("history must keep at least one load attempt")
        if isinstance(self.loader, str) and self.loader != "auto":
            raise ValueError(
                f"loader must be 'auto' or a Loader, not {self.loader!r}: for a factory use "
                f"loader=state_dict_loader({self.loader!r})"
            )
        if self.allow_formats is not None:
            if isinstance(self.allow_formats, str):
                raise ValueError("allow_formats is a collection of names, not one string")
            unknown = sorted(set(self.allow_formats) - set(FORMATS))
            if unknown:
                raise ValueError(f"unknown formats {unknown} in allow_formats: use {FORMATS}")
