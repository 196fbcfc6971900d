"""What one registry follows: the watched path (a checkpoint, a manifest, or the `*_latest` file
of a directory, found again when it goes missing), and how an earlier checkpoint of the same
model (a pin, a fallback) is checked the way the watched one would be."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ._watching import RESCAN_EVERY, DirectoryWatch, Timing, Watch
from .manifest import Keyring, parse_keyring
from .naming import DEFAULT_NAME, checkpoint_prefix, is_object_url, latest_name
from .nfs import PolledSource
from .options import RegistryOptions
from .sources import Snapshot, Source, checkpoint_source, make_source

__all__ = ["Following"]


class Following:
    """The sources of one model.

    Args:
        path: a checkpoint file, a `{name}_latest.json` manifest, a directory, or an
            `s3://bucket/prefix/` URL (kept a string: a Path would fold its `//`).
        options: the registry's options (signing, retry and verify timing).
        name: the `{name}` looked for in a directory (default "actor").
    """

    def __init__(
        self, path: str | os.PathLike[str], options: RegistryOptions, name: str | None
    ) -> None:
        key: object = options.signing_key  # a Keyring passed as is, or a key to parse
        self.keyring = (
            key
            if isinstance(key, Keyring)
            else parse_keyring(options.signing_keys, options.signing_key)
        )
        if options.require_signature and self.keyring is None:
            raise ValueError("require_signature needs a key: pass signing_key= or signing_keys=")
        self._options = options
        # Having a key means only signed manifests are followed: without that, deleting the
        # manifest and writing a plain checkpoint would downgrade the source.
        self.signed = self.keyring is not None
        self._name = name or DEFAULT_NAME
        self.directory: DirectoryWatch | None = None
        if os.path.isdir(path):
            self.directory = DirectoryWatch(Path(path), self._name, signed_only=self.signed)
        elif not is_object_url(path) and (latest := latest_name(Path(path))) is not None:
            # `actor_latest.pt` given, `actor_latest.safetensors` published (or the manifest):
            # the same model's latest, followed once the given one is missing.
            self.directory = DirectoryWatch(Path(path).parent, latest, signed_only=self.signed,
                                            same_name=True)  # fmt: skip
        self.watched = self.watch(self._source(path))
        self._vouched: dict[str, str] = {}  # checkpoint name -> sha256 a manifest vouched for

    def watch(self, source: Source) -> Watch:
        """A new watch of `source`, with the timing its kind gets."""
        verify = self._options.verify_interval
        if verify is None:
            verify = 5.0 if source.kind == "manifest" else 0.0
        rescan = RESCAN_EVERY if self.directory is not None else math.inf
        return Watch(source, Timing(self._options.retry_after, verify, rescan))

    def refind(self, now: float) -> Watch | None:
        """While the watched path is missing: a watch of what its directory offers instead."""
        if self.directory is None:
            return None
        found = self.directory.find(now, self.watched.source.path)
        if found is None:
            return None
        _close(self.watched.source)
        self.watched = self.watch(self._source(found))
        return self.watched

    def close(self) -> None:
        """Stop what the watched source runs of its own (the poll thread of an object store or
        an NFS mount)."""
        _close(self.watched.source)

    def vouch(self, source: Source, snapshot: Snapshot) -> None:
        """Remember the digest a manifest vouched for, so the same checkpoint can be pinned."""
        if source.kind != "file":
            self._vouched[snapshot.path.name] = snapshot.sha256

    def earlier(self) -> tuple[Path, str]:
        """Where earlier checkpoints of this model are, and the name they were published under."""
        path = self.watched.source.path
        return path.parent, checkpoint_prefix(path) or self._name

    def checkpoint_source(self, path: Path) -> Source:
        """The source that checks one earlier checkpoint as the watched source would."""
        return checkpoint_source(
            path, watched=self.watched.source, signing_key=self.keyring,
            signed=self.signed, verified_sha256=self._vouched.get(path.name),
        )  # fmt: skip

    def _source(self, path: str | os.PathLike[str]) -> Source:
        source = make_source(
            path, name=self._name, signing_key=self.keyring,
            require_signature=self.signed, check_interval=self._options.check_interval,
        )  # fmt: skip
        if self._options.nfs and source.kind in ("file", "manifest"):
            return PolledSource(source, interval=self._options.check_interval)
        return source


def _close(source: Source) -> None:
    # Only the polled sources hold anything (a thread); the Source protocol does not ask for it.
    close = getattr(source, "close", None)
    if close is not None:
        close()
