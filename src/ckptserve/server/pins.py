"""Pins that outlive a restart and reach every worker: an admin's pin is written to the state
directory (`statedir.py`, where `publish()` also reads it, so retention never prunes a pinned
checkpoint), and every worker applies what that file says: at start, and whenever it changes.

Without `--state-dir` a pin lives in the process that was asked (and, under `--workers N`, in a
directory the supervisor made for its workers, gone with it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import CheckpointError
from ..statedir import PINS_FILE, read_pins, write_pin
from ..versions import stat_key

if TYPE_CHECKING:
    from .state import ModelHandle

__all__ = ["PinBook"]

log = logging.getLogger("ckptserve.server")


class PinBook:
    """The pins of one server in `state_dir` (None: pins stay in this process)."""

    def __init__(self, state_dir: str | None) -> None:
        self.state_dir = state_dir
        self._applied: object = None  # the pins file's stat key when it was last applied

    def record(self, handle: ModelHandle) -> None:
        """Write what `handle` serves now (pinned or not) for every worker and restart to see."""
        if self.state_dir is None:
            return
        registry = handle.registry
        pinned, version = registry.pinned, registry.version
        sha256 = version.sha256 if pinned is not None and version is not None else None
        write_pin(self.state_dir, handle.directory, handle.name,
                  pinned.name if pinned is not None else None, sha256=sha256)  # fmt: skip

    def apply(self, handles: Iterable[ModelHandle]) -> None:
        """Make each registry pinned as the file says, if the file changed since the last look.
        Blocking (a file read, maybe a load): run it in a worker thread."""
        if self.state_dir is None:
            return
        key = stat_key(os.path.join(self.state_dir, PINS_FILE))
        if key == self._applied:
            return
        self._applied = key
        pins = read_pins(self.state_dir)
        for handle in handles:
            pin = pins.get((os.path.realpath(handle.directory), handle.name))
            registry = handle.registry
            pinned = registry.pinned
            if pin is None:
                if pinned is not None:
                    log.info("unpinned elsewhere", extra={"model": handle.name})
                    registry.unpin()
                continue
            if pinned is not None and pinned.name == pin.checkpoint:
                continue
            try:
                registry.pin(pin.path)
            except CheckpointError as exc:
                log.warning("the recorded pin %s cannot be served: %s", pin.checkpoint, exc,
                            extra={"model": handle.name})  # fmt: skip
            else:
                log.info("pinned %s as recorded", pin.checkpoint, extra={"model": handle.name})
