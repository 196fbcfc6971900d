"""The trainer's side of a fleet: wait until every replica of a server serves a checkpoint.

`wait_live(url, sha256)` polls the server's `GET {prefix}/fleet` (standard library only: a trainer
needs neither the server extras nor torch for it) until each replica it lists serves the
checkpoint with that sha256, as many replicas as the server expects.

    import ckptserve
    path = ckptserve.publish(actor, "models/")
    ckptserve.wait_live("http://127.0.0.1:8000", sha256_of_it, timeout=60)
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["fleet_url", "lagging", "wait_live"]

_HEX = re.compile(r"^[0-9a-f]{12,64}$")


def fleet_url(url: str) -> str:
    """The fleet route for a server URL: `http://h:p` -> `http://h:p/rl/fleet`; a URL that ends
    in `/fleet` (another prefix) is taken as it is."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    url = url.rstrip("/")
    return url if url.endswith("/fleet") else f"{url}/rl/fleet"


def lagging(view: dict[str, Any], sha256: str, model: str | None = None) -> list[str]:
    """Why the fleet in `view` does not all serve `sha256` yet, one line per reason (empty: it
    does). `sha256` may be a prefix of at least 12 hex digits."""
    name = model or view.get("default")
    replicas = view.get("replicas") or []
    reasons = []
    expected = view.get("expected")
    if not replicas:
        reasons.append("no replica answers")
    elif isinstance(expected, int) and len(replicas) < expected:
        reasons.append(f"{len(replicas)} of {expected} replicas seen")
    for replica in replicas:
        serving = (replica.get("models") or {}).get(name)
        if serving is None:
            reasons.append(f"{replica.get('replica')}: {name} not live")
        elif not str(serving.get("sha256", "")).startswith(sha256):
            reasons.append(
                f"{replica.get('replica')}: {serving.get('checkpoint')} "
                f"({str(serving.get('sha256'))[:12]})"
            )
    return reasons


def _get(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        data = json.loads(reply.read())
    if not isinstance(data, dict) or "replicas" not in data:
        raise ValueError(f"{url} does not answer with a fleet")
    return data


def wait_live(
    url: str,
    sha256: str,
    timeout: float = 60.0,
    *,
    model: str | None = None,
    interval: float = 0.25,
) -> dict[str, Any]:
    """Wait until every replica of the server at `url` serves the checkpoint `sha256`.

    Args:
        url: the server (`http://host:port`) or its fleet route (`.../rl/fleet`).
        sha256: the checkpoint's sha256 (its manifest's), or a prefix of at least 12 hex digits.
        timeout: seconds to wait at most.
        model: the model to check (default: the server's default model).
        interval: seconds between looks at the fleet.

    Returns:
        The fleet as last seen (`scope`, `replicas`, ...), every replica on `sha256`.

    Raises:
        ValueError: the URL or the sha256 is not one.
        ConnectionError: the server cannot be reached, or answers no fleet, at the first look.
        TimeoutError: not every replica serves it within `timeout` (the message says which).
    """
    where = fleet_url(url)
    sha256 = sha256.lower()
    if not _HEX.match(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 (12 to 64 hex digits)")
    if timeout < 0 or interval <= 0:
        raise ValueError("timeout must be >= 0 and interval > 0")
    deadline = time.monotonic() + timeout
    view: dict[str, Any] | None = None
    problem = ""
    while True:
        left = deadline - time.monotonic()
        try:
            view = _get(where, max(1.0, min(10.0, left)))
            problem = ""
        except (OSError, ValueError) as exc:  # URLError is an OSError
            if view is None:
                raise ConnectionError(f"{where}: {_reason(exc)}") from None
            problem = f"last look failed: {_reason(exc)}"  # a replica restarting: look again
        else:
            reasons = lagging(view, sha256, model)
            if not reasons:
                return view
            problem = "; ".join(reasons)
        if time.monotonic() + interval > deadline:
            raise TimeoutError(
                f"not every replica serves {sha256[:12]} after {timeout} s: {problem}"
            )
        time.sleep(interval)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
