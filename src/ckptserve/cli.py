"""The command line: `ckptserve serve`, `ckptserve inspect`, `ckptserve demo`. Thin: parse, build
the settings, hand them to uvicorn. Every `serve` option can also come from the environment as
`CKPTSERVE_<OPTION>` (e.g. `CKPTSERVE_PORT=8011`); a flag given on the command line wins."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

__all__ = ["cli", "main"]


class StartupError(click.ClickException):
    """A problem found before serving: printed as one line, exit status 1."""


def _fail(message: str) -> NoReturn:
    raise StartupError(message)


def _bound(value: str | None) -> float | list[float] | None:
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or a comma-separated list") from None
    if not numbers:
        raise click.BadParameter("needs at least one number")
    return numbers[0] if len(numbers) == 1 and "," not in value else numbers


def default_name(path: Path) -> str:
    """The model name for a path without `NAME=`: `actor_latest.pt` -> `actor`."""
    from .naming import model_name, name_in_directory
    from .server.state import looks_like_directory

    if path.is_dir() or (not path.exists() and looks_like_directory(str(path))):
        return name_in_directory(path)
    return model_name(path)


def parse_models(args: Sequence[str]) -> list[dict[str, str]]:
    """`PATH` or `NAME=PATH` arguments as model specs (name, path)."""
    from .server.settings import NAME_RE

    specs = []
    for arg in args:
        name, sep, rest = arg.partition("=")
        if sep and NAME_RE.match(name) and "/" not in name:
            path = rest
        else:
            name, path = "", arg
        if not path:
            _fail(f"{arg!r}: no path after '='")
        specs.append({"name": name or default_name(Path(path)), "path": path})
    return specs


def _check_path(path: str) -> None:
    p = Path(path)
    if p.exists():
        if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
            _fail(f"{path}: permission denied")
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        _fail(f"{path}: {parent} is not a directory")


def _settings_error(exc: Any) -> NoReturn:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    where = f"--{loc[0].replace('_', '-')}" if loc else "options"
    if loc and loc[0] == "models":
        where = "model " + ".".join(loc[1:])
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    _fail(f"invalid {where}: {message}")


def build_settings(models: Sequence[str], options: dict[str, Any]) -> Any:
    """Settings from the command line; options not given fall back to `CKPTSERVE_*` variables."""
    from pydantic import ValidationError as PydanticValidationError

    from .server.settings import Settings

    given = {k: v for k, v in options.items() if v is not None}
    if models:
        given["models"] = parse_models(models)
    try:
        settings = Settings(**given)
    except PydanticValidationError as exc:
        _settings_error(exc)
    if not settings.models:
        _fail("no model to serve: give a checkpoint, manifest or directory (ckptserve serve PATH)")
    return settings


def _preflight(settings: Any) -> None:
    """Catch bad paths and options now, as one line, instead of in a worker's traceback."""
    from . import ModelRegistry
    from .errors import CkptServeError
    from .formats import resolve_factory
    from .server.state import prepare_model_path

    if settings.factory is not None:
        try:
            resolve_factory(settings.factory)
        except ValueError as exc:  # "factory '...' must look like ...": name the option
            _fail(f"--{exc}")
        except (ImportError, AttributeError) as exc:
            _fail(f"--factory {settings.factory!r}: {exc}")
    try:
        options = settings.registry_options()
    except ValueError as exc:
        _fail(f"invalid options: {exc}")
    for spec in settings.models:
        _check_path(spec.path)
        try:
            prepare_model_path(spec.path)
            ModelRegistry(spec.path, settings.device, name=spec.name, options=options).close()
        except (CkptServeError, ValueError, OSError) as exc:
            _fail(f"{spec.name}={spec.path}: {exc}")


def _run(settings: Any) -> None:
    import uvicorn

    from .server.app import SETTINGS_ENV, app_from_env, create_app
    from .server.logs import log_config

    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": log_config(settings.log_format, settings.log_level),
        "access_log": False,
        "timeout_graceful_shutdown": 10,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="ckptserve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    os.environ[SETTINGS_ENV] = settings.to_env()
    try:
        target = f"{app_from_env.__module__}:{app_from_env.__name__}"
        uvicorn.run(target, factory=True, workers=settings.workers, **common)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


# ---- commands -------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ckptserve")
def cli() -> None:
    """Serve a model that is still being trained: hot-reloaded, verified checkpoints over HTTP."""


_FORMATS = "export, torchscript, state_dict, safetensors"


@cli.command(no_args_is_help=False)
@click.argument("models", nargs=-1, metavar="PATH [NAME=PATH ...]")
@click.option("--host", help="Interface to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, help="Port to listen on.  [default: 8000]")
@click.option("--workers", type=int, help="uvicorn worker processes.  [default: 1]")
@click.option("--device", help="Where models are loaded (cpu, cuda:0, ...).  [default: cpu]")
@click.option("--swap", type=click.Choice(["sync", "background"]),
              help="sync: requests wait for a new checkpoint; background: keep serving the old one "
                   "while it loads.  [default: sync]")  # fmt: skip
@click.option("--background-nice", type=int,
              help="Nice levels below the server for --swap background loads (Linux; 0: the "
                   "same priority): busy cores serve requests first.  [default: 10]")  # fmt: skip
@click.option("--check-interval", type=float,
              help="Seconds between checks of the file (0: one stat per request).  [default: 0]")  # fmt: skip
@click.option("--retry-after", type=float, help="Seconds before a failed checkpoint is retried.")
@click.option("--verify-interval", type=float,
              help="Seconds between full manifest re-reads (catches what stat keys miss).")  # fmt: skip
@click.option("--obs-dim", type=int, help="Observation size, for checkpoints without metadata.")
@click.option("--action-dim", type=int, help="Action size.  [default: metadata, else 1]")
@click.option("--obs-low", help="Lower observation bound: a number or a comma-separated list.")
@click.option("--obs-high", help="Upper observation bound: a number or a comma-separated list.")
@click.option("--action-low", help="Lower action bound a model's probe must respect.")
@click.option("--action-high", help="Upper action bound a model's probe must respect.")
@click.option("--allow-formats", help=f"Comma-separated formats that may load ({_FORMATS}).")
@click.option("--require-signature/--no-require-signature", default=None,
              help="Refuse manifests without a valid signature ($CKPTSERVE_SIGNING_KEY).")  # fmt: skip
@click.option("--factory", help="package.module:function building the module for weights formats.")
@click.option("--prefix", help="URL prefix of the original API.  [default: /rl]")
@click.option("--max-body-bytes", type=int, help="Request body limit.  [default: 1048576]")
@click.option("--max-batch", type=int, help="Most states in one request.  [default: 4096]")
@click.option("--max-concurrent-loads", type=int,
              help="With --workers N: at most this many workers load a new checkpoint at once; "
                   "the others keep serving until their turn.  [default: no limit]")  # fmt: skip
@click.option("--batch-max-size", type=int,
              help="Dynamic batching: gather up to N concurrent states into one forward pass "
                   "(1: off).  [default: 1]")  # fmt: skip
@click.option("--batch-max-wait-ms", type=float,
              help="How long a batch waits for more requests (0: one event-loop turn).  "
                   "[default: 0]")  # fmt: skip
@click.option("--torch-threads", type=int,
              help="torch intra-op threads (0: torch's default).  [default: 1]")  # fmt: skip
@click.option("--log-format", type=click.Choice(["text", "json"]), help="[default: text]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--ray", "on_ray", is_flag=True,
              help="Serve as a Ray Serve application (ckptserve[ray]): on the cluster in "
                   "$RAY_ADDRESS, else a local Ray bound to --host.")  # fmt: skip
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: how many replicas, each watching the source itself.")  # fmt: skip
def serve(models: tuple[str, ...], on_ray: bool, replicas: int, **options: Any) -> None:
    """Serve one or more hot-reloading models.

    PATH is a checkpoint file, a `{name}_latest.json` manifest or a directory (its *_latest file is
    followed). The first model is the default one, served under the prefix; NAME=PATH names a model
    (otherwise: the file name's first part, actor_latest.pt -> actor). A checkpoint that does not
    exist yet is not an error: the server starts not ready and loads it when it appears.
    """
    from .server.listening import port_problem

    for key in ("obs_low", "obs_high", "action_low", "action_high"):
        try:
            options[key] = _bound(options[key])
        except click.BadParameter as exc:
            _fail(f"invalid --{key.replace('_', '-')}: {exc.message}")
    if options["allow_formats"] is not None:
        options["allow_formats"] = tuple(
            f.strip() for f in options["allow_formats"].split(",") if f.strip()
        )
    settings = build_settings(models, options)
    _preflight(settings)
    problem = port_problem(settings.host, settings.port)
    if problem:
        _fail(problem)
    if on_ray:
        try:
            from .ray import run as run_on_ray
        except ImportError as exc:
            _fail(f"--ray needs Ray Serve: pip install 'ckptserve[ray]' ({exc})")
        run_on_ray(settings, replicas=replicas)
        return
    _run(settings)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--factory", help="package.module:function for state_dict / safetensors files.")
@click.option("--obs-dim", type=int, help="Observation size, if the checkpoint does not say.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(file: Path, factory: str | None, obs_dim: int | None, as_json: bool) -> None:
    """Describe a checkpoint before publishing it: format, metadata, parameters, probe shapes,
    sha256 and load time."""
    from .server.inspection import describe

    try:
        info = describe(file, factory=factory, obs_dim=obs_dim)
    except OSError as exc:
        _fail(f"{file}: {exc.strerror or exc}")
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            shown = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
            click.echo(f"{key:<{width}}  {shown}")
    if info.get("error"):
        sys.exit(1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--directory", type=click.Path(file_okay=False), help="Where checkpoints go.")
@click.option("--duration", type=float, help="Stop after this many seconds.")
def demo(host: str, port: int, directory: str | None, duration: float | None) -> None:
    """Train a small SAC agent and serve it while it learns (the whole loop on one machine)."""
    from .demo.runner import run_demo

    sys.exit(run_demo(host=host, port=port, directory=directory, duration=duration))


@cli.command()
@click.argument("url")
@click.option("--sha256", required=True, help="The checkpoint's sha256 (or its first 12+ hex).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@click.option("--model", help="The model to check.  [default: the server's default model]")
def wait(url: str, sha256: str, timeout: float, model: str | None) -> None:
    """Wait until every replica of the server at URL serves a checkpoint: exit 0 then, 1 on
    timeout, 2 when URL cannot be reached or the arguments are wrong."""
    from .fleet import wait_live

    try:
        view = wait_live(url, sha256, timeout, model=model)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except ConnectionError as exc:
        click.echo(f"ckptserve: error: {exc}", err=True)
        sys.exit(2)
    except TimeoutError as exc:
        click.echo(f"ckptserve: {exc}", err=True)
        sys.exit(1)
    replicas = view["replicas"]
    click.echo(f"{len(replicas)} replica(s) serve {sha256[:12]} ({view['scope']})")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `ckptserve` script: errors are one line on stderr, never a traceback."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="ckptserve",
                 standalone_mode=False)  # fmt: skip
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("ckptserve: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message())
        sys.exit(2)
    except click.UsageError as exc:
        click.echo(
            f"ckptserve: error: {exc.format_message()} (see ckptserve {_command(exc)}--help)",
            err=True,
        )
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"ckptserve: error: {exc.format_message()}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _command(exc: click.UsageError) -> str:
    ctx = exc.ctx
    return f"{ctx.info_name} " if ctx is not None and ctx.parent is not None else ""
