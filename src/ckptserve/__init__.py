"""ckptserve: serve a model that is still being trained, hot-reloading verified checkpoints."""

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
from .publishing import list_checkpoints, publish
from .registry import LiveModel, ModelRegistry, RegistryOptions
from .sources import FileSource, ManifestSource, Snapshot, Source, confine
from .versions import LoadAttempt, ModelVersion, VersionKey

__version__ = "0.1.0"

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
