"""PUBLISH: the trainer writes checkpoints atomically, keeps a few, and carries metadata inside."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from ckptserve import (
    CheckpointError,
    PublishError,
    list_checkpoints,
    load_checkpoint,
    publish,
    sniff,
    state_dict_loader,
)
from ckptserve.formats import check_zip
from core_helpers import FORMATS, freeze_clock, loader_for
from policies import ConstantActor, seeded_actor


def test_publish_writes_checkpoint_latest_link_and_manifest(tmp_path):
    """publish() returns the timestamped file; `_latest.pt` and `_latest.json` point at it."""
    directory = tmp_path / "models"  # created on demand
    path = publish(seeded_actor(0), directory, format="torchscript")

    assert path.parent == directory
    assert re.fullmatch(r"actor_\d{8}_\d{6}\.pt", path.name)
    latest = directory / "actor_latest.pt"
    assert latest.is_symlink() and os.readlink(latest) == path.name
    manifest = json.loads((directory / "actor_latest.json").read_text())
    data = path.read_bytes()
    assert manifest["checkpoint"] == path.name
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["size"] == len(data)
    assert manifest["format"] == "torchscript"
    assert manifest["created_at"] == manifest["metadata"]["created_at"]
    assert "signature" not in manifest
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]


def test_default_format_is_export_for_modules_and_torchscript_for_script_modules(tmp_path):
    """An nn.Module is exported by default; a ScriptModule stays TorchScript."""
    assert sniff(publish(seeded_actor(0), tmp_path / "a").read_bytes()) == "export"
    scripted = torch.jit.script(seeded_actor(0))
    assert sniff(publish(scripted, tmp_path / "b").read_bytes()) == "torchscript"


def test_two_publishes_in_one_second_get_unique_names(tmp_path, monkeypatch):
    """A second publish within the same second gets its own file, newest listed first."""
    freeze_clock(monkeypatch, datetime(2026, 4, 12, 14, 30, 22, tzinfo=timezone.utc))
    first = publish(seeded_actor(0), tmp_path, format="state_dict")
    second = publish(seeded_actor(1), tmp_path, format="state_dict")

    assert first != second
    assert first.name.startswith("actor_20260412_") and second.name == f"{first.stem}_1.pt"
    assert list_checkpoints(tmp_path) == [second, first]
    assert os.readlink(tmp_path / "actor_latest.pt") == second.name


def test_retention_keeps_the_newest(tmp_path):
    """Only the `keep` newest timestamped checkpoints stay on disk."""
    published = [publish(seeded_actor(i), tmp_path, keep=2, format="state_dict") for i in range(5)]
    assert list_checkpoints(tmp_path) == published[:-3:-1]
    assert all(not p.exists() for p in published[:3])


def test_retention_never_removes_the_live_checkpoint(tmp_path, monkeypatch):
    """Even when the new checkpoint sorts oldest (clock went back), it is not removed."""
    future = tmp_path / "actor_29991231_235959.pt"
    future.write_bytes(b"a checkpoint from a clock that ran ahead")
    freeze_clock(monkeypatch, datetime(2001, 1, 1, tzinfo=timezone.utc))
    live = publish(seeded_actor(0), tmp_path, keep=1, format="state_dict")
    assert live.exists()
    assert os.readlink(tmp_path / "actor_latest.pt") == live.name


def test_reader_polling_during_publishes_never_sees_a_partial_file(tmp_path):
    """A reader that polls the latest link and manifest while publish() runs always reads whole files."""
    publish(seeded_actor(0), tmp_path, format="state_dict", keep=100)
    stop = threading.Event()
    problems: list[str] = []
    reads = {"checkpoint": 0, "manifest": 0}

    def reader() -> None:
        while not stop.is_set():
            try:
                data = (tmp_path / "actor_latest.pt").read_bytes()
                sniff(data)
                check_zip(data)
                reads["checkpoint"] += 1
                manifest = json.loads((tmp_path / "actor_latest.json").read_bytes())
                named = (tmp_path / manifest["checkpoint"]).read_bytes()
                if hashlib.sha256(named).hexdigest() != manifest["sha256"]:
                    problems.append(f"{manifest['checkpoint']} does not match its manifest")
                reads["manifest"] += 1
            except (OSError, ValueError, CheckpointError) as exc:
                problems.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            publish(seeded_actor(i % 3), tmp_path, format="state_dict", keep=100)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not problems, problems[:3]
    assert reads["checkpoint"] > 0 and reads["manifest"] > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_round_trips_through_every_format(fmt, tmp_path):
    """Metadata travels inside the checkpoint in every format, plus the keys publish() fills in."""
    extra = {"step": 50_000, "eval_return": 12.5, "run": "sac-7", "obs_low": -10.0}
    path = publish(seeded_actor(0), tmp_path, format=fmt, metadata=extra)
    loaded = load_checkpoint(path, loader=loader_for(fmt))
    assert loaded.metadata == {
        **extra,
        "obs_dim": 4,
        "action_dim": 1,
        "format": fmt,
        "created_at": loaded.metadata["created_at"],
        "run_id": loaded.metadata["run_id"],  # a new run: the directory had no manifest
    }
    assert datetime.fromisoformat(loaded.metadata["created_at"]).tzinfo is not None
    manifest = json.loads((tmp_path / "actor_latest.json").read_text())
    assert manifest["metadata"] == loaded.metadata


class NumpyActor(torch.nn.Module):
    """Leaves torch for numpy in forward: neither exportable nor scriptable."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, state, deterministic=True):
        return torch.from_numpy(self.linear(state).detach().numpy().copy()), None


def test_a_module_that_cannot_be_exported_is_told_which_format_to_pick(tmp_path):
    """The export error names the formats that will work instead."""
    with pytest.raises(PublishError, match="format='state_dict' or 'safetensors'"):
        publish(NumpyActor(), tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_module_that_cannot_be_scripted_is_told_which_format_to_pick(tmp_path):
    """The TorchScript error names the formats that will work instead."""
    with pytest.raises(PublishError, match="format='export'"):
        publish(NumpyActor(), tmp_path, format="torchscript")


def test_weights_formats_publish_any_module(tmp_path):
    """A module that cannot be exported still publishes as state_dict or safetensors."""
    for fmt in ("state_dict", "safetensors"):
        path = publish(NumpyActor(), tmp_path / fmt, format=fmt)
        assert sniff(path.read_bytes()) == fmt


def test_publish_refuses_bad_arguments(tmp_path):
    """keep < 1, metadata that is not JSON and an unknown observation size are refused."""
    with pytest.raises(ValueError, match="keep"):
        publish(seeded_actor(0), tmp_path, keep=0)
    with pytest.raises(PublishError, match="JSON"):
        publish(seeded_actor(0), tmp_path, format="state_dict", metadata={"when": object()})
    with pytest.raises(PublishError, match="obs_dim"):
        publish(ConstantActor(0.0), tmp_path, format="state_dict")
    with pytest.raises(PublishError, match="unknown format"):
        publish(seeded_actor(0), tmp_path, format="onnx")  # type: ignore[arg-type]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".pt"]


def test_publish_leaves_a_training_model_in_training_mode(tmp_path):
    """publish() evaluates the model for its probe but gives it back as it found it."""
    actor = seeded_actor(0).train()
    publish(actor, tmp_path, format="state_dict")
    assert actor.training


def test_list_checkpoints_ignores_other_files(tmp_path):
    """Only `{name}_YYYYmmdd_HHMMSS[_N].pt` files are checkpoints of that name."""
    for name in (
        "actor_20260101_000000.pt",
        "actor_20260101_000000_2.pt",
        "critic_20260101_000000.pt",
    ):
        (tmp_path / name).write_bytes(b"x")
    for name in ("actor_latest.pt", "actor_notes.pt", ".tmp-actor_20260101_000001.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "actor_20260101_000000_2.pt",
        "actor_20260101_000000.pt",
    ]


class TiedActor(torch.nn.Module):
    """Two layers sharing one weight tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4, bias=False)
        self.b = torch.nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight

    def forward(self, state, deterministic=True):
        return self.b(self.a(state))[:, :1], None


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors"])
def test_tied_weights_publish_and_load(fmt, tmp_path):
    """A module with shared weights publishes in the weights formats and loads back equal."""
    torch.manual_seed(0)
    actor = TiedActor().eval()
    path = publish(actor, tmp_path, format=fmt)
    loaded = load_checkpoint(path, loader=state_dict_loader(TiedActor))
    state = torch.randn(2, 4)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(state)[0], actor(state)[0])


@pytest.fixture
def umask():
    """Set the process umask for one test (`umask(0o022)`), restored afterwards."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


def published_files(directory) -> list:
    return [p for p in directory.iterdir() if not p.is_symlink()]


@pytest.mark.parametrize(
    ("mask", "mode"),
    [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
    ids=["umask-022", "umask-002", "umask-077"],
)
def test_published_files_follow_the_umask(mask, mode, tmp_path, umask):
    """The checkpoint and the manifest get 0666 minus the umask (0644 under 022), as any file
    the trainer writes would, so a server running as another user can read them."""
    umask(mask)
    publish(seeded_actor(0), tmp_path, format="state_dict")
    files = published_files(tmp_path)
    assert {p.suffix for p in files} >= {".pt", ".json"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {
        p.name: oct(mode) for p in files
    }


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_a_server_running_as_another_user_can_read_what_publish_wrote(umask):
    """Under umask 022, an unprivileged user (nobody, via setpriv) reads the checkpoint and
    the manifest that root published."""
    umask(0o022)
    root = Path(tempfile.mkdtemp(prefix="ckptserve-umask-"))
    try:
        root.chmod(0o755)
        checkpoint = publish(seeded_actor(0), root / "models", format="state_dict")
        for path in (checkpoint, root / "models" / "actor_latest.json"):
            result = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(path)],
                capture_output=True,
            )
            assert result.returncode == 0, result.stderr.decode()
            assert result.stdout == path.read_bytes()
    finally:
        shutil.rmtree(root)


def test_safetensors_are_published_as_dot_safetensors(tmp_path):
    """A safetensors checkpoint and its latest link end in `.safetensors`; the manifest names it."""
    path = publish(seeded_actor(0), tmp_path, format="safetensors")
    assert re.fullmatch(r"actor_\d{8}_\d{6}\.safetensors", path.name)
    latest = tmp_path / "actor_latest.safetensors"
    assert latest.is_symlink() and os.readlink(latest) == path.name
    assert json.loads((tmp_path / "actor_latest.json").read_text())["checkpoint"] == path.name
    assert list_checkpoints(tmp_path) == [path]
    assert not (tmp_path / "actor_latest.pt").exists()


def test_switching_format_keeps_one_latest_link_and_one_retention(tmp_path, monkeypatch):
    """From `.pt` to `.safetensors` and back within one second: names number on across both
    suffixes, the other suffix's latest link goes, retention counts both."""
    freeze_clock(monkeypatch, datetime(2026, 4, 12, 14, 30, 22, tzinfo=timezone.utc))
    first = publish(seeded_actor(0), tmp_path, format="state_dict", keep=2)
    second = publish(seeded_actor(1), tmp_path, format="safetensors", keep=2)
    assert second.name == f"{first.stem}_1.safetensors"
    assert not os.path.lexists(tmp_path / "actor_latest.pt")
    assert os.readlink(tmp_path / "actor_latest.safetensors") == second.name
    third = publish(seeded_actor(2), tmp_path, format="export", keep=2)
    assert third.name == f"{first.stem}_2.pt"
    assert not os.path.lexists(tmp_path / "actor_latest.safetensors")
    assert list_checkpoints(tmp_path) == [third, second]
    assert not first.exists()


def test_a_directory_keeps_its_run_id_until_a_new_run_is_asked_for(tmp_path):
    """publish() writes the directory's run_id into each checkpoint (a trainer restarted from
    scratch is still the same run); new_run=True or run_id= starts another."""

    def run_of(path):
        return json.loads((tmp_path / "actor_latest.json").read_text())["metadata"]["run_id"]

    first = publish(seeded_actor(0), tmp_path, metadata={"step": 10})
    run = run_of(first)
    assert run and run_of(publish(seeded_actor(1), tmp_path, metadata={"step": 0})) == run
    assert run_of(publish(seeded_actor(2), tmp_path, new_run=True)) != run
    assert run_of(publish(seeded_actor(3), tmp_path, run_id="sweep-7")) == "sweep-7"


def test_a_restarted_trainer_republishing_step_zero_is_refused_as_a_regression(
    tmp_path, make_registry
):
    """Same run, lower step than live: refused; a new run is accepted."""
    publish(seeded_actor(0), tmp_path, metadata={"step": 50_000})
    registry = make_registry(tmp_path)
    live = registry.get()
    publish(seeded_actor(1), tmp_path, metadata={"step": 1_000})
    attempt = registry.check()
    assert attempt.result == "rejected" and "older than live step 50,000" in attempt.reason, attempt
    assert registry.current is live
    publish(seeded_actor(2), tmp_path, metadata={"step": 0}, new_run=True)
    assert registry.check().result == "ok"


def test_a_model_answering_one_dimensional_actions_is_published_with_action_dim_one(tmp_path):
    """A `[batch]` action is one action per state, not `batch` actions."""
    import json

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mu = torch.nn.Linear(4, 1)

        def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
            return self.mu(state)[:, 0]

    publish(Flat().eval(), tmp_path)
    assert json.loads((tmp_path / "actor_latest.json").read_text())["metadata"]["action_dim"] == 1
