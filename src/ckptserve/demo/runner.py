"""`ckptserve demo`: the trainer and the server on one model directory, and the swaps as they land.

Two child processes, each in its own process group: the SAC trainer (`ckptserve.demo.trainer`),
which publishes a checkpoint every `publish_every` steps, and `ckptserve serve` on the same
directory with background swaps. The runner talks to the server only over HTTP, as a client would:
it polls `GET /rl/status`, prints one line per hot swap, and asks `POST /rl/predict` what the newly
served policy does in two fixed probe states. Ctrl-C, SIGTERM or `duration` stop both children
(SIGTERM to the group, SIGKILL after a deadline) and nothing is left running.

`broken_step` (`ckptserve demo --broken-step N`): the trainer also publishes a deliberately
broken checkpoint at step N (its actions negated), the server runs with the guard
(`GUARD_FLAGS`: the probe states the runner asks about are its shadow states), and the runner
prints the refusal, which the status page shows with its figures.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ._processes import Child, Stop, signals_ignored, signals_stop, stop_children
from .env import PairsTradingEnv

__all__ = ["GUARD_FLAGS", "PROBE_Z", "probe_states", "run_demo"]

PROBE_Z = (2.0, -2.0)
"""The probe states: every z-score in the window at +2 (short is right), then at -2 (long)."""

GUARD_FLAGS = ("--max-sign-flips", "0.5")
"""The server's guard with `--broken-step`: a policy whose actions change sign on more than half
of the probe states is refused (learning from the random start flips at most one of the two)."""

_POLL_SECONDS = 0.5


def probe_states() -> list[list[float]]:
    """The fixed observations the runner asks the served policy about (position 0)."""
    window = PairsTradingEnv().window
    return [[z] * window + [0.0] for z in PROBE_Z]


# The server is local: never send the runner's polls through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_json(url: str, body: Any = None, timeout: float = 3.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("content-type", "application/json")
    with _OPENER.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def _curl_line(base: str, state: list[float]) -> str:
    body = json.dumps({"state": state}, separators=(",", ":"))
    return (
        f"curl -s -X POST {base}/rl/predict -H 'content-type: application/json' "
        f"-d {shlex.quote(body)}"
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Watcher:
    """Polls the server and prints one line per new version it serves."""

    def __init__(self, base: str, write: Callable[[str], None]) -> None:
        self.base = base
        self.write = write
        self.states = probe_states()
        self.seen: list[str] = []
        self.refused: set[tuple[str, float]] = set()  # (sha256, at) of refusals printed

    def header(self) -> None:
        z = "  ".join(f"action(z={p:+.0f})" for p in PROBE_Z)
        self.write(
            f"{'swap':>4}  {'step':>7}  {'sha256':<12}  {'load':>6}  {'eval_return':>11}  {z}"
        )

    def poll(self) -> None:
        try:
            # The predict call also lets the server notice a new checkpoint (it swaps in the
            # background); the status call says what is live now.
            answer = _http_json(f"{self.base}/rl/predict", {"states": self.states})
            status = _http_json(f"{self.base}/rl/status")
        except (OSError, ValueError):  # not up yet, no checkpoint yet (503), or mid-restart
            return
        self._refusals(status)
        version = status.get("version") or {}
        sha = version.get("sha256")
        if not sha or (self.seen and self.seen[-1] == sha):
            return
        if answer.get("sha256") != sha:
            try:
                answer = _http_json(f"{self.base}/rl/predict", {"states": self.states})
            except (OSError, ValueError):
                return
        self.seen.append(sha)
        meta = version.get("metadata") or {}
        actions = "  ".join(
            f"{_first(a):>+12.2f}" if answer.get("sha256") == sha else f"{'-':>12}"
            for a in answer.get("actions") or [[None]] * len(PROBE_Z)
        )
        step = meta.get("step")
        ret = meta.get("eval_return")
        self.write(
            f"{len(self.seen):>4}  {step if step is not None else '?':>7}  {sha[:12]:<12}  "
            f"{float(version.get('load_seconds') or 0.0):>5.2f}s  "
            f"{float(ret) if ret is not None else float('nan'):>+11.2f}  {actions}"
        )

    def _refusals(self, status: dict[str, Any]) -> None:
        """One line per candidate the judge refused on live states (the guard's figures)."""
        for attempt in status.get("history") or []:
            d = attempt.get("divergence")
            key = (str(attempt.get("sha256")), float(attempt.get("at") or 0.0))
            if attempt.get("result") != "rejected" or not d or key in self.refused:
                continue
            first = not any(sha == key[0] for sha, _ in self.refused)
            self.refused.add(key)
            if first:  # a refused checkpoint is tried again now and then: print it once
                self.write(
                    f"   refused  {key[0][:12]}  sign flips {float(d.get('sign_flips') or 0):.0%} "
                    f"of {d.get('states')} live states, mean |Δaction| "
                    f"{float(d.get('mean_abs') or 0):.2f}: {attempt.get('checkpoint')} stays out"
                )


def _first(action: Any) -> float:
    while isinstance(action, list):
        action = action[0]
    return float(action) if action is not None else float("nan")


def run_demo(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    directory: str | None = None,
    duration: float | None = None,
    steps: int = 50_000,
    publish_every: int = 1_000,
    seed: int = 0,
    stream: TextIO | None = None,
    broken_step: int | None = None,
) -> int:
    """Train SAC and serve it while it learns; print the URL, a curl line and every hot swap.

    Args:
        host, port: where the server listens.
        directory: the model directory (default: a temporary one, removed afterwards).
        duration: stop after this many seconds (default: run until Ctrl-C).
        steps, publish_every, seed: passed to the trainer.
        stream: where to print (default: stdout).
        broken_step: have the trainer publish a broken checkpoint (actions negated) at this
            step, and the server refuse it (`GUARD_FLAGS`).

    Returns:
        0 when stopped by Ctrl-C, SIGTERM or `duration`; 1 when a child failed or the port is taken.

    Example:
        run_demo(port=8011, duration=60)
    """
    out = stream or sys.stdout

    def write(line: str) -> None:
        print(line, file=out, flush=True)

    from .._listening import port_problem

    problem = port_problem(host, port)
    if problem:
        write(f"ckptserve demo: {problem}")
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="ckptserve-demo-"))
    models = Path(directory) if directory else run_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    base = f"http://{_url_host(host)}:{port}"
    trainer = Child(
        "trainer",
        [
            sys.executable, "-m", "ckptserve.demo.trainer", "--dir", str(models),
            "--steps", str(steps), "--publish-every", str(publish_every), "--seed", str(seed),
            *(("--broken-step", str(broken_step)) if broken_step is not None else ()),
        ],
        run_dir / "trainer.log",
    )  # fmt: skip
    server = Child(
        "server",
        [
            sys.executable, "-m", "ckptserve", "serve", str(models), "--host", host,
            "--port", str(port), "--swap", "background",
            *(GUARD_FLAGS if broken_step is not None else ()),
        ],
        run_dir / "server.log",
    )  # fmt: skip
    children = [trainer, server]
    watcher = _Watcher(base, write)
    code = 0
    try:
        with signals_stop():
            for child in children:
                child.start()
            write("ckptserve demo: a SAC agent learns to trade a mean-reverting spread")
            write("while the server hot-swaps each checkpoint it publishes.")
            write(f"  model directory  {models}")
            for child in children:
                write(f"  {child.name:<16} pid {child.pid}  (log: {child.log})")
            write(f"  URL              {base}")
            write(f"  try it           {_curl_line(base, [0.0] * len(probe_states()[0]))}")
            write(
                f"  probe states     every z-score at {PROBE_Z[0]:+.0f} (short pays), then at "
                f"{PROBE_Z[1]:+.0f} (long pays); position 0"
            )
            if broken_step is not None:
                write(f"  broken step      {broken_step:,}: a checkpoint with every action negated "
                      f"is published; the guard ({' '.join(GUARD_FLAGS)}) refuses it")  # fmt: skip
            write("The first checkpoint lands in a few seconds; Ctrl-C to stop.\n")
            watcher.header()
            code = _watch(children, watcher, duration, write)
    except (KeyboardInterrupt, Stop):
        code = 0
    finally:
        with signals_ignored():
            stop_children(children)
        write(f"stopped: {len(watcher.seen)} versions served; trainer and server have exited.")
        if code == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            write(f"logs kept in {run_dir}")
    return code


def _watch(
    children: Sequence[Child],
    watcher: _Watcher,
    duration: float | None,
    write: Callable[[str], None],
) -> int:
    trainer, server = children
    end = None if duration is None else time.monotonic() + duration
    trainer_done = False
    while end is None or time.monotonic() < end:
        assert trainer.proc is not None and server.proc is not None
        if server.proc.poll() is not None:
            write(f"the server exited with status {server.proc.returncode}; its log ends:")
            write(server.tail())
            return 1
        if not trainer_done and trainer.proc.poll() is not None:
            if trainer.proc.returncode != 0:
                write(f"the trainer exited with status {trainer.proc.returncode}; its log ends:")
                write(trainer.tail())
                return 1
            trainer_done = True
            watcher.poll()
            write("the trainer has finished; the server keeps serving its last checkpoint.")
        watcher.poll()
        time.sleep(
            _POLL_SECONDS if end is None else max(0.0, min(_POLL_SECONDS, end - time.monotonic()))
        )
    return 0
