"""Helpers for the server tests: a tiny actor, free ports, and `ckptserve serve` as a subprocess
that is always stopped (its whole process group) when the test ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import torch

OBS_DIM = 4


class TinyActor(torch.nn.Module):
    """A SAC-style actor: `forward(state, deterministic=True) -> (action, log_prob)`."""

    def __init__(self, obs_dim: int = OBS_DIM, hidden: int = 8) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(obs_dim, hidden), torch.nn.ReLU())
        self.mu = torch.nn.Linear(hidden, 1)

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.mu(self.body(state))), torch.zeros(state.shape[0], 1)


class ThreadRecordingActor(TinyActor):
    """A TinyActor that notes the thread each forward pass runs in (a Python module: built by a
    factory for a weights checkpoint)."""

    threads: ClassVar[list[int]] = []

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ThreadRecordingActor.threads.append(threading.get_ident())
        return super().forward(state, deterministic)


def thread_recording_actor() -> TinyActor:
    """Factory for `--factory serverkit:thread_recording_actor`."""
    return ThreadRecordingActor()


def torch_script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.script(module)


ADMIN_TOKEN = "s3cret-token"


def make_tiny_actor() -> TinyActor:
    """Factory for `--factory serverkit:make_tiny_actor` (weights formats)."""
    return TinyActor()


def seeded(seed: int) -> TinyActor:
    torch.manual_seed(seed)
    return TinyActor().eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it is true or `timeout` passes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class ServerProcess:
    """`ckptserve serve ARGS` on a free 127.0.0.1 port, in its own process group."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None,
                 log: Path, port: int | None = None,
                 command_prefix: list[str] | None = None) -> None:  # fmt: skip
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTSERVE_")}
        full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
        tests = str(Path(__file__).parent)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, full_env.get("PYTHONPATH")]))
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*(command_prefix or []), sys.executable, "-m", "ckptserve", "serve", *args,
             "--port", str(self.port)],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=full_env, start_new_session=True,
        )  # fmt: skip
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60, path: str = "/readyz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.client.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        # Workers may outlive the supervisor for a moment; the group goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log_file.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def state(value: float = 0.1, n: int = OBS_DIM) -> dict[str, list[float]]:
    return {"state": [value] * n}


class InProcessServer:
    """The app from `create_app` under uvicorn in a thread of this process, on the connections
    `ckptserve serve` uses (`http`: another uvicorn protocol): fast to start, and its runtime
    (registries, metrics) is reachable from the test."""

    def __init__(self, app: Any, *, http: Any = None, **config_options: Any) -> None:
        import uvicorn

        from ckptserve.server.connection import http_protocol

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_options.setdefault("access_log", False)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                lifespan="on", http=http or http_protocol(0),
                                **config_options)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 20, "uvicorn to start")
        if not self.server.started:
            raise AssertionError("in-process server failed to start")
        self.client = httpx.Client(base_url=self.url, timeout=10)

    @property
    def runtime(self) -> Any:
        return self.app.runtime

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(15)


SLOW_LOAD_SECONDS = 1.0


def slow_tiny_actor() -> TinyActor:
    """A factory that takes SLOW_LOAD_SECONDS (without holding the GIL): a slow reload."""
    time.sleep(SLOW_LOAD_SECONDS)
    return TinyActor()
