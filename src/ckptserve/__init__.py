"""ckptserve: serve a model that is still being trained, hot-reloading verified checkpoints.

The public names are imported on first use (PEP 562), so `import ckptserve` and the command
line's `--help` do not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names

if TYPE_CHECKING:
    from .errors import (
        CheckpointError,
        CkptServeError,
        IntegrityError,
        ModelNotAvailable,
        PathNotAllowed,
        PublishError,
        ValidationError,
    )
    from .fleet import wait_live
    from .formats import FORMATS, ExportedPolicy, load_checkpoint, sniff, state_dict_loader
    from .options import RegistryOptions
    from .publishing import list_checkpoints, publish
    from .registry import LiveModel, ModelRegistry
    from .sources import FileSource, ManifestSource, Snapshot, Source, confine
    from .versions import LoadAttempt, ModelVersion, VersionKey

__version__ = "0.2.0"

__all__ = (
    "FORMATS",
    "CheckpointError",
    "CkptServeError",
    "ExportedPolicy",
    "FileSource",
    "IntegrityError",
    "LiveModel",
    "LoadAttempt",
    "ManifestSource",
    "ModelNotAvailable",
    "ModelRegistry",
    "ModelVersion",
    "PathNotAllowed",
    "PublishError",
    "RegistryOptions",
    "Snapshot",
    "Source",
    "ValidationError",
    "VersionKey",
    "__version__",
    "confine",
    "list_checkpoints",
    "load_checkpoint",
    "publish",
    "sniff",
    "state_dict_loader",
    "wait_live",
)

_MODULES = {
    "errors": ("CheckpointError", "CkptServeError", "IntegrityError", "ModelNotAvailable",
               "PathNotAllowed", "PublishError", "ValidationError"),
    "fleet": ("wait_live",),
    "formats": ("FORMATS", "ExportedPolicy", "load_checkpoint", "sniff", "state_dict_loader"),
    "options": ("RegistryOptions",),
    "publishing": ("list_checkpoints", "publish"),
    "registry": ("LiveModel", "ModelRegistry"),
    "sources": ("FileSource", "ManifestSource", "Snapshot", "Source", "confine"),
    "versions": ("LoadAttempt", "ModelVersion", "VersionKey"),
}  # fmt: skip
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
