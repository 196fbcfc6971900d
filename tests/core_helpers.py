"""Helpers for the core tests: formats, writers, polling with a deadline (no fixed sleeps)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ckptserve import ModelRegistry, state_dict_loader

FORMATS = ("export", "torchscript", "state_dict", "safetensors")
#: Formats that need a factory to be served.
WEIGHTS_FORMATS = ("state_dict", "safetensors")
SWAPS = ("sync", "background")


def loader_for(fmt: str) -> Any:
    """The registry loader for a format: auto, or a factory for weights-only files."""
    return state_dict_loader("policies:make_actor") if fmt in WEIGHTS_FORMATS else "auto"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` the safe way (new inode), as a careful writer would."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_in_place(path: Path, data: bytes) -> None:
    """Overwrite `path` in place (same inode), as a careless writer would."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(data)
        f.truncate()


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `predicate` until it is truthy or the deadline passes; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def refresh(registry: ModelRegistry) -> Any:
    """Let the registry notice a change in either swap mode and return the live handle."""
    registry.get()
    assert registry.wait_idle(30)
    return registry.get()


def action_of(model: Any, seed_state: float = 0.5) -> float:
    """The model's deterministic action on a fixed state, to tell checkpoints apart."""
    with torch.inference_mode():
        out = model(torch.full((1, 4), seed_state), True)
    return float(out[0][0, 0])


def record_span(data: bytes, suffix: str) -> tuple[int, int]:
    """The [start, end) byte range of the data of the zip record whose name ends with `suffix`."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    header = data[info.header_offset : info.header_offset + 30]
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + info.compress_size


def freeze_clock(monkeypatch: Any, when: datetime) -> None:
    """Make publish() believe it is `when` (UTC)."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return when if tz is None else when.astimezone(tz)

    monkeypatch.setattr("ckptserve.publishing.datetime", Frozen)


def wait_for_timestamp_tick(path: Path) -> None:
    """Wait until the file system's clock has moved past `path`'s ctime.

    Kernels without fine-grained timestamps stamp files with a clock that ticks every few
    milliseconds; a test that rewrites a file in place must not do it within the same tick.
    """
    probe = path.with_name(f".tick-{path.name}")
    since = os.stat(path).st_ctime_ns
    try:
        wait_for(
            lambda: (probe.write_bytes(b"tick"), os.stat(probe).st_ctime_ns > since)[1],
            what="the file system clock to tick",
        )
    finally:
        probe.unlink(missing_ok=True)
