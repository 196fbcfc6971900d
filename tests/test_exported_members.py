"""The public API is `ckptserve.__all__`, and importing it stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import ckptserve


def isort_style(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions and dunders."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_pinned_and_sorted():
    """Every public name is listed, sorted, and each one exists."""
    assert list(ckptserve.__all__) == [
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
    ]
    assert list(ckptserve.__all__) == sorted(ckptserve.__all__, key=isort_style)
    for name in ckptserve.__all__:
        assert hasattr(ckptserve, name), name


def test_every_error_is_a_ckptserve_error():
    """One base class catches every error the library raises."""
    errors = [
        getattr(ckptserve, n)
        for n in ckptserve.__all__
        if n.endswith(("Error", "Available", "Allowed", "Block"))
    ]
    assert errors and all(issubclass(e, ckptserve.CkptServeError) for e in errors)


def test_publish_is_the_function_and_publishing_the_module():
    """The re-exported function does not shadow a module of the same name."""
    import ckptserve.publishing

    assert callable(ckptserve.publish)
    assert ckptserve.publish is ckptserve.publishing.publish


def test_importing_ckptserve_does_not_import_the_server_stack():
    """A trainer that only calls publish() does not pay for FastAPI or uvicorn."""
    code = (
        "import sys, ckptserve; "
        "print(','.join(m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_every_module_has_a_layer_in_the_import_contract():
    """A new module must say where it sits: lint-imports checks only the modules it names."""
    root = Path(ckptserve.__file__).parent
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package supports 3.10
    config = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    named = {m.strip() for layer in contract["layers"] for m in re.split(r"[|:]", layer)}
    modules = {
        f"ckptserve.{p.stem if p.is_file() else p.name}"
        for p in root.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__init__.py"
    }
    assert modules - {"ckptserve.__main__"} <= named, sorted(modules - named)
    assert named <= modules, sorted(named - modules)
