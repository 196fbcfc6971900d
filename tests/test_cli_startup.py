"""The command line starts without torch: `import ckptserve` is lazy (PEP 562), and `--help`,
`--version` and the declarations of every option need neither torch nor FastAPI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "fastapi", "uvicorn")


def imported_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code` (even if it exits)."""
    probe = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: print(json.dumps([m for m in {HEAVY!r} if m in sys.modules])))\n"
        f"{code}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import ckptserve",
        "import ckptserve.cli",
        "from ckptserve import RegistryOptions; RegistryOptions(swap='background')",
        "from ckptserve.server.settings import Settings; Settings(swap='background')",
        "from ckptserve.cli import main; main(['--help'])",
        "from ckptserve.cli import main; main(['serve', '--help'])",
        "from ckptserve.cli import main; main(['--version'])",
        "from ckptserve.server.devices import device_problem; assert not device_problem('cpu')",
    ],
)
def test_starting_the_command_line_does_not_import_torch(code: str) -> None:
    """Declaring the options, `--help` and `--version` leave torch, FastAPI and uvicorn out."""
    assert imported_after(code) == []


def test_public_names_are_imported_on_first_use() -> None:
    """`ckptserve.publish` (and every other public name) still works: it is imported when used."""
    assert imported_after("import ckptserve; ckptserve.publish") == ["torch"]
    code = "import ckptserve; assert ckptserve.RegistryOptions is ckptserve.options.RegistryOptions"
    assert imported_after(code) == []


def test_an_unknown_name_is_an_attribute_error() -> None:
    import ckptserve

    with pytest.raises(AttributeError, match="no attribute 'publsh'"):
        ckptserve.publsh  # noqa: B018
    assert {"publish", "ModelRegistry", "__version__"} <= set(dir(ckptserve))
