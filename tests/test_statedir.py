"""The state directory: pins a server records, and publish() never prunes a pinned checkpoint."""

from __future__ import annotations

import json
import os
import threading

import pytest

from ckptserve import list_checkpoints, publish
from ckptserve.naming import record_for
from ckptserve.statedir import PINS_FILE, STATE_DIR_ENV, Pin, pinned_in, read_pins, write_pin
from policies import seeded_actor


def test_a_pin_written_is_read_back_by_directory_and_name(tmp_path):
    """write_pin records (resolved directory, name) -> checkpoint; None removes it."""
    state, models = tmp_path / "state", tmp_path / "models"
    models.mkdir()
    (tmp_path / "link").symlink_to(models)
    pin = write_pin(state, tmp_path / "link", "actor", "actor_20260101_000000.pt", sha256="a" * 64)
    write_pin(state, models, "critic", "critic_20260101_000000.pt")
    pins = read_pins(state)
    key = (os.path.realpath(models), "actor")
    assert pins[key] == pin and isinstance(pin, Pin)
    assert pin.path == models.resolve() / "actor_20260101_000000.pt" and pin.sha256 == "a" * 64
    assert pinned_in(state, models) == {"actor_20260101_000000.pt", "critic_20260101_000000.pt"}
    assert write_pin(state, models, "actor", None) is None
    assert set(read_pins(state)) == {(os.path.realpath(models), "critic")}


@pytest.mark.parametrize(
    "content",
    [None, b"", b"{broken", b"[]", b'{"pins": 3}', b"\xff\xfe", b"[" * 50_000,
     json.dumps({"pins": [{"directory": "/m", "name": "actor", "checkpoint": "../x"},
                          {"directory": "/m", "name": 1, "checkpoint": "a.pt"}, "x"]}).encode()],
    ids=["missing", "empty", "broken", "list", "not-a-list", "binary", "deep", "bad-entries"],
)  # fmt: skip
def test_a_missing_or_garbled_pins_file_reads_as_no_pins(tmp_path, content):
    """Whatever the file holds, read_pins returns what it can and never raises; write_pin
    replaces a garbled file with a good one."""
    if content is not None:
        (tmp_path / PINS_FILE).write_bytes(content)
    assert read_pins(tmp_path) == {}
    write_pin(tmp_path, tmp_path, "actor", "actor_20260101_000000.pt")
    assert pinned_in(tmp_path, tmp_path) == {"actor_20260101_000000.pt"}


def test_a_pins_file_that_is_not_a_regular_file_is_not_read(tmp_path):
    """A FIFO or a symlink as the pins file reads as no pins, without blocking."""
    os.mkfifo(tmp_path / PINS_FILE)
    assert read_pins(tmp_path) == {}
    other = tmp_path / "other"
    other.mkdir()
    write_pin(other, tmp_path, "actor", "a_20260101_000000.pt")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / PINS_FILE).symlink_to(other / PINS_FILE)
    assert read_pins(linked) == {}


def test_a_pin_names_a_file_in_the_directory():
    """A path, `..` or an empty name is not a checkpoint file name."""
    for bad in ("../x.pt", "sub/x.pt", "..", ""):
        with pytest.raises(ValueError, match="not a file name"):
            write_pin("/nonexistent-state", "/m", "actor", bad)


def test_workers_pinning_at_once_keep_every_pin(tmp_path):
    """Eight writers, each pinning its own model: the file ends with all eight."""
    barrier = threading.Barrier(8)

    def pin(i: int) -> None:
        barrier.wait()
        for _ in range(5):
            write_pin(tmp_path, tmp_path, f"model{i}", f"model{i}_20260101_000000.pt")

    threads = [threading.Thread(target=pin, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {name for _, name in read_pins(tmp_path)} == {f"model{i}" for i in range(8)}


def test_the_pins_file_follows_the_umask(tmp_path):
    """Under umask 022 the file is 0644: the trainer's user can read it to spare pins."""
    before = os.umask(0o022)
    try:
        write_pin(tmp_path / "state", tmp_path, "actor", "actor_20260101_000000.pt")
    finally:
        os.umask(before)
    assert oct((tmp_path / "state" / PINS_FILE).stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("from_env", [False, True], ids=["argument", "environment"])
def test_publish_never_prunes_a_pinned_checkpoint(tmp_path, monkeypatch, from_env):
    """With keep=2, the pinned (oldest) checkpoint and its record survive every later publish;
    the state directory comes from `state_dir=` or `$CKPTSERVE_STATE_DIR`."""
    models, state = tmp_path / "models", tmp_path / "state"
    kwargs = {"keep": 2, "format": "state_dict"}
    if from_env:
        monkeypatch.setenv(STATE_DIR_ENV, str(state))
    else:
        monkeypatch.delenv(STATE_DIR_ENV, raising=False)
        kwargs["state_dir"] = state
    pinned = publish(seeded_actor(0), models, **kwargs)
    write_pin(state, models, "actor", pinned.name)
    published = [publish(seeded_actor(i), models, **kwargs) for i in range(1, 5)]
    assert list_checkpoints(models) == [published[3], published[2], pinned]
    assert record_for(pinned).exists()
    write_pin(state, models, "actor", None)
    latest = publish(seeded_actor(5), models, **kwargs)
    assert list_checkpoints(models) == [latest, published[3]]


def test_pins_of_another_directory_do_not_spare_anything(tmp_path, monkeypatch):
    """A pin is of one model directory: the same file name elsewhere is pruned as usual."""
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    models, state = tmp_path / "models", tmp_path / "state"
    first = publish(seeded_actor(0), models, keep=1, format="state_dict", state_dir=state)
    write_pin(state, tmp_path / "elsewhere", "actor", first.name)
    second = publish(seeded_actor(1), models, keep=1, format="state_dict", state_dir=state)
    assert list_checkpoints(models) == [second]
