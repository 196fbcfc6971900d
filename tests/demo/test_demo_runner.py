"""`ckptserve demo`: the trainer and the server run side by side, new versions answer over HTTP,
and stopping the demo leaves no process behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ckptserve.demo._processes import Child as _Child
from ckptserve.demo._processes import stop_children as _stop_children
from ckptserve.demo.runner import probe_states, run_demo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _groups_alive(pgids: set[int]) -> list[int]:
    """Pids of live (non-zombie) processes whose process group is one of `pgids`."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) in pgids:
            alive.append(int(entry))
    return alive


def _predict(port: int) -> dict[str, object] | None:
    body = json.dumps({"state": probe_states()[0]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/rl/predict", data=body, method="POST",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer
    except OSError:
        return None


class _Demo:
    """`python -m ckptserve demo` in its own session, its output collected by a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckptserve", "demo", "--port", str(port), "--duration", "110"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.pids: set[int] = set()
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    @property
    def text(self) -> str:
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)

    def child_pids(self, timeout: float = 30) -> set[int]:
        """The trainer's and the server's pids (each leads its own process group)."""
        deadline = time.monotonic() + timeout
        while len(self.pids) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self.output.append(self.lines.get(timeout=1))
                if m := re.search(r"^\s+(trainer|server)\s+pid (\d+)", self.output[-1]):
                    self.pids.add(int(m.group(2)))
        assert len(self.pids) == 2, self.text
        return self.pids

    def __enter__(self) -> _Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pgid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _wait_gone(pgids: set[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := _groups_alive(pgids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.mark.slow
def test_demo_serves_new_versions_and_ctrl_c_leaves_nothing_behind() -> None:
    """Two versions answer POST /rl/predict within a minute; Ctrl-C stops trainer and server."""
    with _Demo(_free_port()) as demo:
        pids = demo.child_pids()
        seen: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            answer = _predict(demo.port)
            if answer is not None:
                assert len(answer["action"]) == 1  # type: ignore[arg-type]
                seen.setdefault(str(answer["sha256"]), answer)
            time.sleep(0.5)
        assert len(seen) >= 2, demo.text

        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(timeout=30) == 0, demo.text
        assert not _groups_alive(pids), demo.text
    text = demo.text
    assert re.search(r"^\s+2\s+\d+\s+[0-9a-f]{12}\s", text, re.M), text  # a second swap line
    assert "trainer and server have exited" in text


@pytest.mark.slow
def test_killed_runner_takes_its_children_with_it() -> None:
    """Even a SIGKILLed runner (no cleanup runs) leaves no trainer or server behind."""
    with _Demo(_free_port()) as demo:
        pids = demo.child_pids()
        # The pids are printed after Popen returned, i.e. after exec: the pre-exec hook has run.
        os.kill(demo.proc.pid, signal.SIGKILL)
        demo.proc.wait(timeout=10)
        assert not _wait_gone(pids, timeout=15), demo.text


def test_port_in_use_is_one_line_and_starts_nothing() -> None:
    """A taken port is reported before any child starts; the exit code is 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = io.StringIO()
        port = taken.getsockname()[1]
        code = run_demo(port=port, duration=1, stream=out)
    assert code == 1
    assert out.getvalue() == (
        f"ckptserve demo: cannot listen on 127.0.0.1:{port}: address already in use"
        " (pick another with --port)\n"
    )


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    """A child (and its grandchild) that ignore SIGTERM are SIGKILLed after the deadline."""
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = _Child("stubborn", [sys.executable, "-c", script], tmp_path / "stubborn.log")
    child.start()
    deadline = time.monotonic() + 20
    while len(_groups_alive({child.pid})) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_groups_alive({child.pid})) == 2
    started = time.monotonic()
    _stop_children([child], deadline=0.5)
    assert time.monotonic() - started < 5
    assert not _groups_alive({child.pid})
