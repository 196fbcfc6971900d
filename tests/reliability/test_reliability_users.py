"""The server run as another user than the one who publishes, as docs/security.md recommends:
what file permissions do to it. CI runs as root, which ignores permissions, so these tests run
the server under the unprivileged user `.ci/run` creates (`ckptserve-ci`, through setpriv)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverkit import ServerProcess, seeded, state, torch_script, wait_for

from ckptserve import publish

pytestmark = pytest.mark.slow

USER = "ckptserve-ci"


@pytest.fixture
def other_user() -> tuple[int, int]:
    """The uid and gid of the unprivileged test user (CI creates it; elsewhere the test skips)."""
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must create the user {USER} (see .ci/run)")
        pytest.skip(f"no user {USER}: `useradd --system {USER}` to run this test")
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to start the server as another user")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory both users can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ckptserve-users-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def server_as(user: tuple[int, int], args: list[str], home: Path) -> ServerProcess:
    uid, gid = user
    scratch = home / "tmp"
    scratch.mkdir(exist_ok=True)
    os.chown(scratch, uid, gid)
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    return ServerProcess(args, log=home / "server.log", env={"TMPDIR": str(scratch)},
                         command_prefix=prefix)  # fmt: skip


def test_an_unreadable_model_directory_keeps_the_live_model_serving(
    other_user: tuple[int, int], shared_dir: Path
) -> None:
    """`chmod 000` on the model directory while a model is live: every request is still answered
    by it (like a missing file, reported in status), and the directory made readable again is
    followed as before."""
    models = shared_dir / "models"
    publish(torch_script(seeded(1)), models)
    for path in (models, *models.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    with server_as(other_user, [str(models)], shared_dir) as server:
        server.wait_ready()
        first = server.client.post("/rl/predict", json=state()).json()["sha256"]
        models.chmod(0o000)
        try:
            for _ in range(20):
                r = server.client.post("/rl/predict", json=state())
                assert r.status_code == 200 and r.json()["sha256"] == first, r.text
            status = server.client.get("/rl/status").json()
            assert status["loaded"] and status["file_missing"], status
        finally:
            models.chmod(0o755)
        new = publish(torch_script(seeded(2)), models)
        for path in models.iterdir():
            path.chmod(0o644)

        def serves_new() -> bool:
            return bool(server.client.post("/rl/predict", json=state()).json()["checkpoint"]
                        == new.name)  # fmt: skip

        wait_for(serves_new, 30, "the checkpoint published after the directory came back")
