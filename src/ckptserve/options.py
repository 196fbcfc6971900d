"""The registry's options: how it detects, loads, validates and swaps, as one frozen object.

Each option is declared once, here, with its default, its bounds and its help text: the server's
settings, their `CKPTSERVE_<FIELD>` variables and the `ckptserve serve` flags are generated from
these declarations (server/settings.py, cli.py). Validated when built, so a bad option fails where
it is written (`RegistryOptions(swap="bg")`), not at the first load. Pure declarations: importing
this module imports neither torch nor pydantic.
"""

# No `from __future__ import annotations`: the settings are built from these annotations, so they
# stay objects.
# ruff: noqa: RUF009 (`_option` is `dataclasses.field` with a declaration; defaults are immutable)

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, get_origin

from .naming import FORMAT_NAMES

__all__ = [
    "OPTIONS",
    "SIGN_DEAD_BAND",
    "BoundSpec",
    "CanaryMetric",
    "Loader",
    "Option",
    "RegistryOptions",
    "SwapMode",
    "parse_follow",
]

SwapMode = Literal["sync", "background"]
CanaryMetric = Literal["none", "reward"]
#: Actions within this distance of 0 never count as a sign flip (`--sign-dead-band`).
SIGN_DEAD_BAND = 0.05
Number = float | int
#: A bound: one number for every dimension, one number per dimension, or None (unbounded).
BoundSpec = Number | Sequence[Number] | None

_KEY = "ckptserve.option"


class Loader(Protocol):
    """What `loader=` takes besides "auto": turns a checkpoint file into a loaded model
    (`state_dict_loader(...)`). Declared here without torch; `formats` implements it."""

    def __call__(self, path: Path, fmt: str, device: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Option:
    """How one RegistryOptions field is declared, besides its type and default.

    help: what it does, one or two sentences: `ckptserve serve --help` shows it.
    ge, gt, le: numeric bounds (None, where the type allows it, is always in bounds).
    check: raises ValueError for a value that the type and the bounds let through.
    setting: the server can be told it (a `serve` flag and `CKPTSERVE_<FIELD>`); False for what
        only Python can give (a callable) or what the server's settings give in another way.
    default_text: how help shows a default of None ("5 for manifests, off for files").
    parsed_as: the type a flag or a variable is parsed as, where the field's type is wider.
    """

    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    check: Callable[[Any], None] | None = None
    setting: bool = True
    default_text: str | None = None
    parsed_as: Any = None

    def problem(self, name: str, value: Any) -> str | None:
        """Why `value` is out of bounds for the option `name`, or None."""
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        low_ok = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        if low_ok and (self.le is None or value <= self.le):
            return None
        if self.ge is not None and self.le is not None:
            return f"{name} must be between {self.ge:g} and {self.le:g}, not {value!r}"
        if self.le is not None and value > self.le:
            return f"{name} must be <= {self.le:g}, not {value!r}"
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}"
        return f"{name} must be {low}, not {value!r}"


def _option(default: Any, help: str, **spec: Any) -> Any:
    return dataclasses.field(default=default, metadata={_KEY: Option(help, **spec)})


def _known_formats(value: Collection[str]) -> None:
    if isinstance(value, str):
        raise ValueError("allow_formats is a collection of names, not one string")
    unknown = sorted(set(value) - set(FORMAT_NAMES))
    if unknown or not value:
        raise ValueError(
            f"unknown formats: {', '.join(unknown) or '(none given)'}"
            f" (choose from {', '.join(FORMAT_NAMES)})"
        )


def _loader_or_auto(value: object) -> None:
    if isinstance(value, str) and value != "auto":
        raise ValueError(
            f"loader must be 'auto' or a Loader, not {value!r}: for a factory use "
            f"loader=state_dict_loader({value!r})"
        )


def parse_follow(text: str) -> tuple[Literal["latest", "max", "min"], str | None]:
    """`--follow`: "latest" -> ("latest", None), "max:<key>" -> ("max", key), "min:<key>" ->
    ("min", key). The one parser of the rule (rollout.FollowRule.parse builds on it).

    Raises:
        ValueError: anything else, saying what is accepted.
    """
    if text == "latest":
        return "latest", None
    mode, _, key = text.partition(":")
    if key and mode == "max":
        return "max", key
    if key and mode == "min":
        return "min", key
    raise ValueError(
        f"--follow is 'latest', 'max:<metadata key>' or 'min:<metadata key>', not {text!r}"
    )


def _follow_rule(value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"follow is a rule written as text, not {value!r}")
    parse_follow(value)


def _finite(name: str) -> Callable[[float], None]:
    def check(value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, not {value!r}")

    return check


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How a registry detects, loads, validates and swaps. All fields have working defaults.

    Each field's help text, bounds and checks are in its declaration (`OPTIONS[name]`). The server
    can set every field whose `setting` is true, as `--field-name` or `CKPTSERVE_FIELD_NAME`.

    Example:
        options = RegistryOptions(swap="background", check_interval=0.5)
        registry = ModelRegistry("models/", options=options)
    """

    check_interval: float = _option(
        0.0, "Seconds between checks of the file (0: one stat per request, or in the server per "
        "event-loop iteration, so a new checkpoint is served at once).", ge=0,
    )  # fmt: skip
    swap: SwapMode = _option(
        "sync", "sync: a request that sees a new checkpoint waits for it; background: the live "
        "model keeps answering while the new one loads (a cold start still waits).",
    )  # fmt: skip
    background_nice: int = _option(
        10, "Nice levels below the server for --swap background loads (Linux): busy cores serve "
        "requests first and a load takes longer; 0: the same priority.", ge=0, le=19,
    )  # fmt: skip
    loader: Loader | str = _option(
        "auto", "'auto' (export, TorchScript) or state_dict_loader(...) for weights formats "
        "(the server: --factory).", check=_loader_or_auto, setting=False,
    )  # fmt: skip
    validate: Callable[[Any], object] | None = _option(
        None, "Called with a freshly loaded model; raising rejects it.", setting=False
    )
    retry_after: float = _option(
        5.0, "Seconds before a checkpoint that failed is tried again (unless it changes).", ge=0
    )
    verify_interval: float | None = _option(
        None, "Seconds between full re-reads of the manifest, catching changes a stat key misses "
        "(coarse timestamps, NFS attribute caches).", ge=0,
        default_text="5 for manifests, off for files",
    )  # fmt: skip
    obs_dim: int | None = _option(
        None, "Observation size, for checkpoints without metadata.", ge=1,
        default_text="metadata",
    )  # fmt: skip
    action_dim: int | None = _option(
        None, "Action size, for checkpoints without metadata.", ge=1,
        default_text="metadata, else the first model's output",
    )  # fmt: skip
    obs_low: BoundSpec = _option(
        None, "Lower observation bound: one number, or one per dimension (comma-separated); a "
        "state outside it is refused.", default_text="metadata",
    )  # fmt: skip
    obs_high: BoundSpec = _option(
        None, "Upper observation bound: one number, or one per dimension (comma-separated).",
        default_text="metadata",
    )  # fmt: skip
    action_low: BoundSpec = _option(
        None, "Lower action bound a model's probe must respect.", default_text="metadata"
    )
    action_high: BoundSpec = _option(
        None, "Upper action bound a model's probe must respect.", default_text="metadata"
    )
    allow_formats: Collection[str] | None = _option(
        None, f"Formats that may load ({', '.join(FORMAT_NAMES)}; comma-separated); others are "
        "refused before loading.", check=_known_formats, default_text="all",
        parsed_as=tuple[str, ...] | None,
    )  # fmt: skip
    max_checkpoint_bytes: int = _option(
        8 << 30, "The most bytes of one checkpoint that are read (a manifest's: at most the size "
        "it states, plus one).", ge=1,
    )  # fmt: skip
    signing_key: str | bytes | None = _option(
        None, "HMAC key of manifest signatures (the server reads $CKPTSERVE_SIGNING_KEY).",
        setting=False,
    )  # fmt: skip
    signing_keys: str | None = _option(
        None, "The keys accepted while a key is rotated, as $CKPTSERVE_SIGNING_KEYS gives them "
        "(format: manifest.py).", setting=False,
    )  # fmt: skip
    require_signature: bool = _option(
        False, "Refuse manifests without a valid signature ($CKPTSERVE_SIGNING_KEY), and plain "
        "checkpoint files."
    )  # fmt: skip
    history: int = _option(20, "How many load attempts status() keeps.", ge=1, setting=False)
    cache_dir: str | None = _option(
        None, "Where private copies of checkpoints are loaded from.", setting=False,
        default_text="a temporary directory",
    )  # fmt: skip
    max_concurrent_loads: int | None = _option(
        None, "At most this many processes on the host load this model at once (--workers N: "
        "one publish would start N loads); the others keep serving until their turn.", ge=1,
        default_text="no limit",
    )  # fmt: skip
    lock_dir: str | None = _option(
        None, "Where the files that coordinate loads are (see coordination.py).", setting=False,
        default_text="a per-user temporary directory",
    )  # fmt: skip
    state_dir: str | None = _option(
        None, "A writable directory for what the server must remember across restarts (pins, "
        "marks); never the model directory.", default_text="none: nothing is remembered",
    )  # fmt: skip
    nfs: bool = _option(
        False, "The model directory is on a shared file system (NFS): its attributes are polled "
        "by a thread of its own every --check-interval (1 s when 0), past the attribute cache.",
    )  # fmt: skip
    # ---- safe rollout (docs/rollout.md) ----
    keep_versions: int = _option(
        2, "How many good versions stay loaded (the live one included): a request may name any "
        "of them, and a rollback goes back to one without a load.", ge=1,
    )  # fmt: skip
    shadow_states: int = _option(
        256, "How many recent request states are kept to run a candidate on beside the live "
        "model before a swap (0: no shadow comparison).", ge=0,
    )  # fmt: skip
    sign_dead_band: float = _option(
        SIGN_DEAD_BAND, "Actions within this distance of 0 never count as a sign flip.", ge=0,
        check=_finite("sign_dead_band"),
    )  # fmt: skip
    max_divergence: float | None = _option(
        None, "Refuse a candidate whose mean absolute action difference from the live model over "
        "the buffered states is above this.", ge=0, check=_finite("max_divergence"),
        default_text="off",
    )  # fmt: skip
    max_sign_flips: float | None = _option(
        None, "Refuse a candidate whose actions change sign (outside the dead band) on more than "
        "this share (0-1) of the buffered states.", ge=0, le=1, default_text="off",
    )  # fmt: skip
    canary_fraction: float = _option(
        0.0, "A candidate that passed the checks first answers this share of requests (sticky "
        "per X-Session-Id) before it goes live (0: no canary, it goes live at once).", ge=0, le=1,
    )  # fmt: skip
    canary_seconds: float = _option(
        60.0,
        "How long a canary answers its share before it is promoted.",
        gt=0,
        check=_finite("canary_seconds"),
    )
    canary_metric: CanaryMetric = _option(
        "none", "none: a canary is promoted when its window ends without failures; reward: also "
        "only when its rewards (POST /rl/feedback) are not worse than the live version's.",
    )  # fmt: skip
    follow: str = _option(
        "latest", "Which published checkpoint is served: latest, max:<metadata key> (e.g. "
        "max:eval_return) or min:<metadata key> (e.g. min:loss).", check=_follow_rule,
    )  # fmt: skip

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            spec: Option = f.metadata[_KEY]
            value = getattr(self, f.name)
            if get_origin(f.type) is Literal and value not in get_args(f.type):
                choices = " or ".join(map(repr, get_args(f.type)))
                raise ValueError(f"{f.name} must be {choices}, not {value!r}")
            problem = spec.problem(f.name, value)
            if problem:
                raise ValueError(problem)
            if spec.check is not None and value is not None:
                spec.check(value)


#: Every RegistryOptions field's declaration, by name.
OPTIONS: Mapping[str, Option] = {
    f.name: f.metadata[_KEY] for f in dataclasses.fields(RegistryOptions)
}
