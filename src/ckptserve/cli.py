"""The command line: `ckptserve serve`, `ckptserve inspect`, `ckptserve demo`. Thin: parse, build
the settings, hand them to uvicorn. Every `serve` option can also come from the environment as
`CKPTSERVE_<OPTION>` (e.g. `CKPTSERVE_PORT=8011`); a flag given on the command line wins."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

import click

__all__ = ["cli", "main"]


class StartupError(click.ClickException):
    """A problem found before serving: printed as one line, exit status 1."""


def _fail(message: str) -> NoReturn:
    raise StartupError(message)


def default_name(path: Path) -> str:
    """The model name for a path without `NAME=`: `actor_latest.pt` -> `actor`."""
    from .naming import model_name, name_in_directory
    from .server.paths import looks_like_directory

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


def _settings_error(exc: Any) -> NoReturn:
    from .server.settings import ENV_PREFIX, Settings

    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    if loc[:1] == ["registry"]:
        loc = loc[1:]
    if not loc:
        where = "options"
    elif loc[0] == "models":
        where = "model " + ".".join(loc[1:])
    elif loc[0] in Settings.NOT_FLAGS:
        where = ENV_PREFIX + loc[0].upper()
    else:
        where = "--" + loc[0].replace("_", "-")
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
    """Catch bad paths and options now, as one line, instead of in a worker's traceback: the
    factory imports, and each path can be read and names the kind of source the options need."""
    from ._coordination import LoadSlots
    from .errors import CkptServeError
    from .formats import resolve_factory
    from .server.devices import device_problem
    from .server.paths import looks_like_directory, model_path_problem
    from .sources import make_source

    problem = device_problem(settings.device)
    if problem:
        _fail(problem)
    options = settings.registry_options()  # puts --app-dir on the import path for the factory
    if settings.factory is not None:
        try:
            resolve_factory(settings.factory)
        except ValueError as exc:  # "factory '...' must look like ...": name the option
            _fail(f"--{exc}")
        except (ImportError, AttributeError) as exc:
            _fail(f"--factory {settings.factory!r}: {exc}")
    keyed = bool(options.signing_key or options.signing_keys)
    if options.require_signature and not keyed:
        _fail("--require-signature needs a key: set CKPTSERVE_SIGNING_KEY")
    if options.max_concurrent_loads is not None:
        try:  # the lock directory must be ours and private: say so now, not in a traceback
            LoadSlots("preflight", 1, directory=options.lock_dir)
        except OSError as exc:
            _fail(f"--max-concurrent-loads: {exc}")
    for spec in settings.models:
        problem = model_path_problem(spec.path)
        if problem:
            _fail(problem)
        if not Path(spec.path).exists() and looks_like_directory(spec.path):
            continue  # the server creates it and follows {name}_latest.json in it
        try:
            make_source(
                spec.path, name=spec.name, signing_key=options.signing_key,
                require_signature=options.require_signature or keyed,  # a key means signed-only
            )  # fmt: skip
        except (CkptServeError, ValueError, OSError) as exc:
            why = " (a signing key is set, so only signed manifests are served)" if keyed else ""
            _fail(f"{spec.name}={spec.path}: {exc}{why}")


def _run(settings: Any) -> None:
    from .server.serving import run

    run(settings)


# ---- commands -------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ckptserve")
def cli() -> None:
    """Serve a model that is still being trained: hot-reloaded, verified checkpoints over HTTP."""


class _Numbers(click.ParamType[Any]):
    """A bound: one number, or a comma-separated list of them."""

    name = "X[,X...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            numbers = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a number or a comma-separated list", param, ctx)
        if not numbers:
            self.fail("needs at least one number", param, ctx)
        return numbers[0] if len(numbers) == 1 and "," not in value else numbers


class _Names(click.ParamType[Any]):
    """A comma-separated list of names."""

    name = "NAME[,NAME...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        return tuple(name.strip() for name in value.split(",") if name.strip())


def _click_type(annotation: Any) -> Any:
    """The click type of a settings field: its type without None."""
    from .options import BoundSpec

    if annotation == BoundSpec:
        return _Numbers()
    kinds = [a for a in get_args(annotation) if a is not type(None)]
    kind = (
        kinds[0] if get_origin(annotation) in (Union, UnionType) and len(kinds) == 1 else annotation
    )
    if get_origin(kind) is Literal:
        return click.Choice(get_args(kind))
    if get_origin(kind) is tuple:
        return _Names()
    if kind in (bool, int, float, str):
        return kind
    raise TypeError(f"no command-line type for {annotation!r}")


def _settings_flags(command: Callable[..., None]) -> Callable[..., None]:
    """One option per settings field with a flag (server/settings.py `flags()`): the name, the
    type, the help and the default all come from the field's one declaration. No flag has a
    click default, so what is not given falls back to `CKPTSERVE_<FIELD>`, then the default."""
    from .server.settings import flags

    for flag in reversed(flags()):
        kind = _click_type(flag.annotation)
        shown = f"{flag.help}  [default: {flag.default_text}]".lstrip()
        if kind is bool:
            names = f"{flag.option}/--no-{flag.option[2:]}"
            command = click.option(names, flag.name, default=None, help=shown)(command)
        else:
            command = click.option(flag.option, flag.name, type=kind, help=shown)(command)
    return command


@cli.command(no_args_is_help=False)
@click.argument("models", nargs=-1, metavar="PATH [NAME=PATH ...]")
@_settings_flags
def serve(models: tuple[str, ...], **options: Any) -> None:
    """Serve one or more hot-reloading models.

    PATH is a checkpoint file, a `{name}_latest.json` manifest or a directory (its *_latest file is
    followed). The first model is the default one, served under the prefix; NAME=PATH names a model
    (otherwise: the file name's first part, actor_latest.pt -> actor). A checkpoint that does not
    exist yet is not an error: the server starts not ready and loads it when it appears.
    """
    from ._listening import port_problem

    # SIGHUP means "look at the sources again" once the server runs; while it starts (imports,
    # the preflight loads) it must not end it. Workers start with it ignored too (serving.py).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = build_settings(models, options)
    _preflight(settings)
    problem = port_problem(settings.host, settings.port)
    if problem:
        _fail(problem)
    if settings.ray:
        try:
            from .server.rayserve import run as run_on_ray
        except ImportError as exc:
            _fail(f"--ray needs Ray Serve: pip install 'ckptserve[ray]' ({exc})")
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # Ray's processes keep their own ways
        run_on_ray(settings, replicas=settings.replicas)
        return
    _run(settings)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--factory", help="package.module:function for state_dict / safetensors files.")
@click.option("--obs-dim", type=int, help="Observation size, if the checkpoint does not say.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(file: Path, factory: str | None, obs_dim: int | None, as_json: bool) -> None:
    """Describe a checkpoint before publishing it: format, metadata, parameters, probe shapes,
    sha256 and load time."""
    from .inspection import describe

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
@click.option(
    "--broken-step", type=click.IntRange(min=1), help="Also publish a broken checkpoint (every "
    "action negated) at this step, and serve with the guard that refuses it.",
)  # fmt: skip
def demo(
    host: str, port: int, directory: str | None, duration: float | None, broken_step: int | None
) -> None:
    """Train a small SAC agent and serve it while it learns (the whole loop on one machine)."""
    from .demo.runner import run_demo

    sys.exit(run_demo(host=host, port=port, directory=directory, duration=duration,
                      broken_step=broken_step))  # fmt: skip


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
