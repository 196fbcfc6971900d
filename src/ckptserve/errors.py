"""The errors ckptserve raises, as one tree with one base class to catch.

CkptServeError
├── ModelNotAvailable        no live model to serve (cold start, or every load failed)
├── CheckpointError          a checkpoint could not be loaded: unreadable, corrupt, unknown format
│   ├── IntegrityError       the bytes are not the ones published: zip CRC, sha256 or signature
│   └── ValidationError      it loaded, but the probe or the user's validate() rejected it
├── PathNotAllowed           a pinned name escapes the model's directory
└── PublishError             publish() could not write or export the checkpoint
"""

from __future__ import annotations

import re

__all__ = [
    "CheckpointError",
    "CkptServeError",
    "IntegrityError",
    "ModelNotAvailable",
    "PathNotAllowed",
    "PublishError",
    "ValidationError",
]


class CkptServeError(Exception):
    """Base class of every error raised by ckptserve."""


class ModelNotAvailable(CkptServeError):
    """Raised when a model is requested but no version is live."""


class CheckpointError(CkptServeError):
    """Raised when a checkpoint cannot be read or loaded."""


class IntegrityError(CheckpointError):
    """Raised when a checkpoint's bytes do not match their CRCs, hash or signature."""


class ValidationError(CheckpointError):
    """Raised when a loaded model fails the probe or the user's validate() check."""


class PathNotAllowed(CkptServeError):
    """Raised when a checkpoint name resolves outside the directory it must stay in."""


class PublishError(CkptServeError):
    """Raised when publish() cannot export or write a checkpoint."""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")  # CSI sequences and 2-byte escapes


def one_line(text: str, limit: int = 300) -> str:
    """`text` as one line without terminal escapes, cut to `limit` characters: an error reason
    goes into a one-line log, a JSON body and a status page."""
    text = "".join(c if c.isprintable() else " " for c in _ANSI.sub("", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
