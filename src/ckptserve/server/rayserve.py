"""ckptserve as a Ray Serve application (`pip install 'ckptserve[ray]'`): N replicas, each the same
app as `ckptserve serve` (the registry, the `/rl` and `/v2` routes), each watching its source and
swapping on its own, and a fleet board that `GET /rl/fleet` and `ckptserve wait` read.

    from ckptserve.ray import build_app
    from ckptserve.server import ModelSpec, Settings
    settings = Settings(models=[ModelSpec(name="actor", path="s3://bucket/models/")])
    serve.run(build_app(settings, replicas=4), route_prefix="/")

Each replica polls its source (the watch interval, the S3 HEAD interval): pushing versions
through `user_config` restarts replicas (~5 s each here), polling does not. A replica asks for
`num_cpus=0.5` by default: with Ray's default of 1, a third replica on a 2-CPU node waits in
DEPLOYING forever, without an error. For a Serve config file, `import_path:
ckptserve.ray:app_builder` takes the settings as `args` (docs/scaling.md).

The public name is `ckptserve.ray`; the code lives in the server package, beside the uvicorn
host (serving.py), since it hosts the same app and reads the same runtime and fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from .app import create_app
from .fleet import FleetView, Replica, Serving, replica_name, this_replica
from .settings import Settings
from .state import Runtime

__all__ = ["DEFAULT_NUM_CPUS", "DEPLOYMENT", "FleetBoard", "app_builder", "build_app", "run"]

log = logging.getLogger("ckptserve.ray")

#: CPUs a replica asks Ray for (fractional: several replicas share a core; torch uses one thread).
DEFAULT_NUM_CPUS = 0.5
#: The name of the serving deployment (the fleet board is `FleetBoard`).
DEPLOYMENT = "ckptserve"
#: Seconds between a replica's reports to the board; one also follows every swap.
REPORT_EVERY = 0.5
#: A replica that has not reported for this long is no longer listed.
FORGET_AFTER = 5.0


class FleetBoard:
    """What each replica serves, as the replicas last reported it."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, replica: dict[str, Any]) -> None:
        self._reports[str(replica["replica"])] = (time.monotonic(), replica)

    def forget(self, name: str) -> None:
        self._reports.pop(name, None)

    def read(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        self._reports = {k: v for k, v in self._reports.items() if now - v[0] < FORGET_AFTER}
        return [replica for _, replica in self._reports.values()]


class _RayFleet:
    """The fleet as the board has it: every replica that reported lately (`app.state.fleet`)."""

    def __init__(self, board: DeploymentHandle[Any], app_name: str) -> None:
        self._board = board
        self._app = app_name

    def view(self, runtime: Runtime) -> FleetView:
        reports = self._board.read.remote().result(timeout_s=10)
        replicas = tuple(sorted((_replica(r) for r in reports), key=lambda r: r.name))
        expected = _expected_replicas(self._app)
        note = f"replicas of the Ray Serve deployment {self._app}/{DEPLOYMENT}"
        return FleetView("ray", expected, runtime.default, replicas, note)


def _replica(report: dict[str, Any]) -> Replica:
    models = {
        name: Serving(**serving) if serving is not None else None
        for name, serving in report["models"].items()
    }
    return Replica(str(report["replica"]), models)


_GOING = frozenset({"STOPPING", "STOPPED"})


def _expected_replicas(app_name: str) -> int | None:
    """The replicas the deployment has or is bringing up: all but those stopping or stopped.
    One still STARTING counts, so `ckptserve wait` right after start-up (or an upscale) waits for
    it too, and one that cannot start (no CPU left) shows as "1 of 2 replicas seen", not done."""
    try:
        deployments = serve.status().applications[app_name].deployments
        states = deployments[DEPLOYMENT].replica_states
        return sum(n for state, n in states.items() if getattr(state, "value", state) not in _GOING)
    except Exception:  # the controller is away, or the names differ: unknown
        return None


@serve.ingress()
class _Replica:
    """One replica: the app of `create_app(settings)`, and its reports to the fleet board."""

    def __init__(self, settings: str, board: DeploymentHandle[Any], app_name: str) -> None:
        self._settings = Settings(**json.loads(settings))
        self._board = board
        self._app_name = app_name
        self._reporter: asyncio.Task[None] | None = None

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self._settings)
        app.state.fleet = _RayFleet(self._board, self._app_name)
        self._runtime: Runtime = app.state.runtime
        self._reporter = asyncio.get_running_loop().create_task(self._report_forever())
        return app

    async def _report_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the board restarting: report again next time
                if self._runtime.models:
                    await self._board.report.remote(this_replica(self._runtime).to_dict())
            await asyncio.sleep(REPORT_EVERY)

    def replica(self) -> dict[str, Any]:
        """This replica and what it serves (for a handle: `handle.replica.remote()`)."""
        return this_replica(self._runtime).to_dict()

    async def __del__(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        with contextlib.suppress(Exception):
            await self._board.forget.remote(replica_name())


def build_app(
    settings: Settings,
    *,
    replicas: int = 1,
    num_cpus: float = DEFAULT_NUM_CPUS,
    autoscaling_config: dict[str, Any] | None = None,
    app_name: str = "ckptserve",
) -> Any:
    """The Ray Serve application: the serving deployment and its fleet board.

    Args:
        settings: what `ckptserve serve` would be told (models, swap mode, limits ...); every
            replica follows the same paths, so they must be readable on every node (s3://, a
            shared file system).
        replicas: how many replicas (ignored with `autoscaling_config`).
        num_cpus: CPUs each replica asks Ray for.
        autoscaling_config: Ray Serve autoscaling (`min_replicas`, `max_replicas`,
            `target_ongoing_requests`, ...) instead of a fixed count.
        app_name: the application's name in `serve.run(..., name=)`, for the fleet.

    Example:
        serve.run(build_app(settings, replicas=2), name="ckptserve", route_prefix="/")
    """
    if replicas < 1 or num_cpus < 0:
        raise ValueError("replicas must be >= 1 and num_cpus >= 0")
    scale: dict[str, Any] = (
        {"autoscaling_config": autoscaling_config}
        if autoscaling_config is not None
        else {"num_replicas": replicas}
    )
    board: Any = serve.deployment(
        FleetBoard, num_replicas=1, ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False},  # two reports a second per replica
    )  # fmt: skip
    deployment: Any = serve.deployment(
        _Replica, name=DEPLOYMENT, ray_actor_options={"num_cpus": num_cpus}, **scale
    )
    return deployment.bind(settings.to_env(), board.bind(), app_name)


def app_builder(args: dict[str, Any]) -> Any:
    """The builder a Serve config file names (`import_path: ckptserve.ray:app_builder`): `args`
    are the settings (`models: [{name, path}]`, `swap`, ...) plus `replicas`, `num_cpus`,
    `autoscaling_config` and `app_name`. Replica counts set in the file's `deployments:` win."""
    args = dict(args)
    options = {k: args.pop(k) for k in ("replicas", "num_cpus", "autoscaling_config", "app_name")
               if k in args}  # fmt: skip
    return build_app(Settings(**args), **options)


def run(settings: Settings, *, replicas: int = 1, num_cpus: float = DEFAULT_NUM_CPUS) -> None:
    """`ckptserve serve PATH --ray`: deploy on the cluster in `$RAY_ADDRESS`, or on a local Ray
    started here, with Serve's HTTP proxy on `settings.host:settings.port`; block until SIGINT
    or SIGTERM, then take the application down."""
    import os
    import signal
    import threading

    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    elif settings.host in ("0.0.0.0", "::"):
        ray.init(include_dashboard=False)
    else:  # a local Ray on the interface Serve listens on (127.0.0.1: nothing reachable outside)
        ray.init(include_dashboard=False, _node_ip_address=settings.host)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, replicas=replicas, num_cpus=num_cpus), name="ckptserve",
                  route_prefix="/")  # fmt: skip
        log.warning(
            "serving %d replica(s) on http://%s:%d (Ray %s)",
            replicas, settings.host, settings.port, address or "local",
        )  # fmt: skip
        stop.wait()
    finally:
        api: Any = serve  # parts of Ray's API are untyped
        with contextlib.suppress(Exception):
            api.delete("ckptserve")
        if not address:
            api.shutdown()
        ray.shutdown()
