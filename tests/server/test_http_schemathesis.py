"""The published schema is the truth: `schemathesis run -c all` against a real server's
/openapi.json, admin token given, finds nothing. Its one exception is in `schemathesis.toml`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from serverkit import ADMIN_TOKEN, ServerProcess, seeded, torch_script

from ckptserve import publish

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_with_every_check_finds_nothing(tmp_path: Path) -> None:
    """Every phase (examples, coverage, fuzzing, stateful), every check, a fixed seed. Run in
    `tmp_path`, so its `.schemathesis/` and `.hypothesis/` stay out of the checkout."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    server = ServerProcess(
        [str(directory)], env={"CKPTSERVE_ADMIN_TOKEN": ADMIN_TOKEN}, log=tmp_path / "server.log"
    )
    try:
        server.wait_ready()
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file",
             str(ROOT / "schemathesis.toml"), "--no-color", "run", f"{server.url}/openapi.json",
             "--checks", "all", "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
             "--seed", "7", "--max-examples", "20", "--workers", "1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
    finally:
        server.stop()
    report = result.stdout + result.stderr
    assert result.returncode == 0 and " passed" in report, report
