"""The fleet: which checkpoint each replica of this server serves, for `GET {prefix}/fleet` and
`ckptserve wait`.

A replica is one serving process: a Ray Serve replica (named by its replica id), else a worker,
named `<hostname>:<pid>`. What a replica can see of the others depends on how it runs:

    process   one worker (`--workers 1`): this process alone is the fleet
    workers   `--workers N`: each worker's live checkpoint and sha256, read from the metrics
              files the workers share (step and time live only for the worker that answers)
    ray       every replica of the Ray Serve deployment (ckptserve.ray reports them)
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .metrics import worker_versions

if TYPE_CHECKING:
    from .state import Runtime

__all__ = [
    "FleetSource",
    "FleetView",
    "Replica",
    "Serving",
    "local_fleet",
    "replica_header",
    "replica_name",
    "this_replica",
]


@dataclass(frozen=True, slots=True)
class Serving:
    """The version one replica serves for one model."""

    checkpoint: str
    sha256: str
    step: int | None = None
    live_since: float | None = None  # time.time() when it went live


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica and what it serves, per model (None: nothing live yet)."""

    name: str
    models: Mapping[str, Serving | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "replica": self.name,
            "models": {m: asdict(s) if s is not None else None for m, s in self.models.items()},
        }


@dataclass(frozen=True, slots=True)
class FleetView:
    """What one replica can see of the fleet.

    scope: "process", "workers" or "ray" (see the module docstring).
    expected: how many replicas there should be (None: unknown).
    default: the model that `ckptserve wait` checks unless told another.
    """

    scope: str
    expected: int | None
    default: str | None
    replicas: tuple[Replica, ...]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "expected": self.expected,
            "default": self.default,
            "note": self.note,
            "replicas": [r.to_dict() for r in self.replicas],
        }


class FleetSource(Protocol):
    """Another way to see the fleet (`app.state.fleet`): ckptserve.ray sets one."""

    def view(self, runtime: Runtime) -> FleetView:
        """The fleet as seen from this replica (may block: the route runs it in a thread)."""


_NAME: tuple[str, tuple[bytes, bytes]] | None = None  # a forked child forgets it (below)


def replica_name() -> str:
    """This process's name in the fleet: the Ray Serve replica id inside a replica, else
    `<hostname>:<pid>`. Computed once per process."""
    return (_NAME or _named())[0]


def replica_header() -> tuple[bytes, bytes]:
    """`(b"x-replica", name)`, the header every model response carries."""
    return (_NAME or _named())[1]


def _named() -> tuple[str, tuple[bytes, bytes]]:
    global _NAME
    name = _ray_replica_id() or f"{socket.gethostname()}:{os.getpid()}"
    _NAME = (name, (b"x-replica", name.encode()))
    return _NAME


def _forget() -> None:
    global _NAME
    _NAME = None


os.register_at_fork(after_in_child=_forget)  # not os.getpid() per request: a syscall each


def _ray_replica_id() -> str | None:
    if "ray.serve" not in sys.modules:  # never import Ray here: only a replica has it loaded
        return None
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not inside a replica
        return None


def this_replica(runtime: Runtime) -> Replica:
    """This process and the version it serves of each model."""
    models: dict[str, Serving | None] = {}
    for name, handle in runtime.models.items():
        live = handle.registry.current
        if live is None:
            models[name] = None
            continue
        v = live.version
        step = v.metadata.get("step")
        models[name] = Serving(
            v.checkpoint, v.sha256, step if isinstance(step, int) else None, v.loaded_at
        )
    return Replica(replica_name(), models)


def local_fleet(runtime: Runtime) -> FleetView:
    """The fleet outside Ray: this process, or with `--workers N` every worker whose metrics
    file says what it serves (a worker that has loaded nothing yet has none)."""
    me = this_replica(runtime)
    workers = runtime.settings.workers
    directory = runtime.metrics.multiprocess_dir
    default = runtime.default
    if workers == 1 or directory is None:
        note = "this process alone" if workers == 1 else "this worker alone: no shared metrics"
        return FleetView("process", workers, default, (me,), note)
    others = [r for r in _workers_in(directory, runtime) if r.name != me.name]
    replicas = tuple(sorted([me, *others], key=lambda r: r.name))
    note = (
        f"{len(replicas)} of {workers} workers seen through the shared metrics files; step and "
        "live_since are known for the worker that answered"
    )
    return FleetView("workers", workers, default, replicas, note)


def _workers_in(directory: str, runtime: Runtime) -> list[Replica]:
    """Each live worker's versions, from the files the workers keep for `ckptserve_model_info`."""
    host = socket.gethostname()
    found = []
    for pid, versions in worker_versions(directory):
        models: dict[str, Serving | None] = {
            name: Serving(*versions[name]) if name in versions else None for name in runtime.models
        }
        if any(models.values()):
            found.append(Replica(f"{host}:{pid}", models))
    return found
