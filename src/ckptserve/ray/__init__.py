"""ckptserve as a Ray Serve application (`pip install 'ckptserve[ray]'`): N replicas, each the same
app as `ckptserve serve` (the registry, the `/rl` and `/v2` routes), each watching its source and
swapping on its own, and a fleet board that `GET /rl/fleet` and `ckptserve wait` read.

    from ckptserve.ray import build_app
    from ckptserve.server import ModelSpec, Settings
    settings = Settings(models=[ModelSpec(name="actor", path="s3://bucket/models/")])
    serve.run(build_app(settings, replicas=4), route_prefix="/")

For a Serve config file: `import_path: ckptserve.ray:app_builder` (docs/scaling.md). This is the
public name; the code is `ckptserve.server.rayserve`.
"""

from ..server.rayserve import DEFAULT_NUM_CPUS, DEPLOYMENT, FleetBoard, app_builder, build_app, run

__all__ = ["DEFAULT_NUM_CPUS", "DEPLOYMENT", "FleetBoard", "app_builder", "build_app", "run"]
