"""Model paths before serving: what a path that does not exist yet names, what may be created for
it, and the log line that says the server waits for a first checkpoint there.

A typo (`ckptserve serve modles`) must not silently create directories and wait forever: at most
the last component of a model directory is created, and the log says the server waits there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["looks_like_directory", "model_path_problem", "prepare_model_path"]

log = logging.getLogger("ckptserve.server")


def looks_like_directory(path: str) -> bool:
    """A path that does not exist yet names a directory when it ends in a slash or has no suffix."""
    return path.endswith(("/", os.sep)) or not Path(path).suffix


def _directory_of(path: str) -> Path:
    """The directory the model's checkpoints are in: the path itself, or the file's parent."""
    p = Path(path)
    return p if p.is_dir() or (not p.exists() and looks_like_directory(path)) else p.parent


def model_path_problem(path: str) -> str | None:
    """Why `path` cannot be served, or None: unreadable, under a file, or a directory to create
    whose parent does not exist either (only a missing last component is created). A URL
    (s3://...) is the source's to check."""
    if "://" in path:
        return None
    p = Path(path)
    if p.exists():
        if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
            return f"{path}: permission denied"
        return None
    directory = _directory_of(path)
    if directory.exists():
        return None if directory.is_dir() else f"{path}: {directory} is not a directory"
    parent = directory.parent
    if parent.is_dir():
        return None
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path}: {parent} is not a directory"
    return (
        f"{path}: {directory.parent} does not exist (only a missing last directory is created; "
        "a typo?)"
    )


def prepare_model_path(path: str) -> None:
    """Create a model directory that does not exist yet (its last component only), so that the
    registry follows `{name}_latest.*` inside it instead of watching the
    directory's path as a file; log that the server waits there when nothing is published yet.

    Raises:
        FileNotFoundError: the directory's parent does not exist (nothing is created).
    """
    if "://" in path:  # object storage: nothing to create here
        return
    p = Path(path)
    if not p.exists() and looks_like_directory(path):
        problem = model_path_problem(path)
        if problem is not None:
            raise FileNotFoundError(problem)
        p.mkdir(exist_ok=True)  # not parents=True: see above; workers may race here
        log.info("created %s: waiting for a first checkpoint there", p)
    elif p.is_dir():
        if not any(p.glob("*_latest.*")):
            log.info("nothing published in %s yet: waiting for a first checkpoint there", p)
    elif not p.exists():
        log.info("no checkpoint at %s yet: waiting for a first one", p)
