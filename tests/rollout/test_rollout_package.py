"""The rollout package: its public names, and that it stays out of the server's way."""

from __future__ import annotations

import subprocess
import sys

import ckptserve.rollout as rollout


def test_the_public_names_are_listed_sorted_and_exist():
    """`__all__` is sorted as ruff sorts it, and every name in it exists."""
    names = list(rollout.__all__)
    key = lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)  # noqa: E731
    assert names == sorted(names, key=key)
    assert all(hasattr(rollout, n) for n in names)


def test_importing_rollout_does_not_import_the_server():
    """A trainer calling run_id_for pays for no FastAPI, uvicorn or pydantic."""
    code = (
        "import sys, ckptserve.rollout; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'pydantic', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
