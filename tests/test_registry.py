"""ModelRegistry: detect, load, validate and swap checkpoints without ever serving a bad one."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import ckptserve._watching
from ckptserve import (
    CheckpointError,
    IntegrityError,
    ModelNotAvailable,
    ModelRegistry,
    ModelVersion,
    VersionKey,
    publish,
)
from ckptserve.naming import latest_in_directory
from core_helpers import (
    FORMATS,
    SWAPS,
    action_of,
    loader_for,
    record_span,
    refresh,
    wait_for,
    wait_for_timestamp_tick,
    write_atomic,
    write_in_place,
)
from policies import Actor, ConstantActor, seeded_actor


def expected_action(seed: int) -> float:
    return action_of(seeded_actor(seed))


def published_bytes(model: torch.nn.Module, tmp_path: Path, **metadata: Any) -> bytes:
    """TorchScript bytes of `model` with its metadata, as publish() writes them."""
    out = tmp_path / f"pub-{time.monotonic_ns()}"
    return publish(model, out, format="torchscript", metadata=metadata).read_bytes()


# ---- 1. change detection -------------------------------------------------------------------


@pytest.mark.parametrize("swap", SWAPS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_served_and_swapped_on_change(
    fmt, swap, ckpt_path, checkpoint_bytes, make_registry
):
    """A checkpoint in any format is served, and a replacement is picked up in either swap mode."""
    ckpt_path.write_bytes(checkpoint_bytes(fmt, 0))
    registry = make_registry(ckpt_path, loader=loader_for(fmt), swap=swap)
    assert action_of(registry.get_model()) == pytest.approx(expected_action(0))
    assert registry.version.format == fmt

    write_atomic(ckpt_path, checkpoint_bytes(fmt, 1))
    assert action_of(refresh(registry).model) == pytest.approx(expected_action(1))
    assert registry.load_count == 2


def test_replace_with_mtime_set_back_is_detected(ckpt_path, checkpoint_bytes, make_registry):
    """A replace whose mtime is set back to the old value (os.utime) is still a change."""
    old, new = checkpoint_bytes("torchscript", 0), checkpoint_bytes("torchscript", 1)
    assert len(old) == len(new)
    ckpt_path.write_bytes(old)
    before = os.stat(ckpt_path)
    registry = make_registry(ckpt_path)
    registry.get_model()

    write_atomic(ckpt_path, new)
    os.utime(ckpt_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(ckpt_path).st_mtime == before.st_mtime

    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))
    assert registry.load_count == 2


def test_in_place_rewrite_with_same_mtime_and_size_is_detected(
    ckpt_path, checkpoint_bytes, make_registry
):
    """Same inode, size and mtime after an in-place rewrite: the ctime still tells."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    before = os.stat(ckpt_path)
    registry = make_registry(ckpt_path)
    registry.get_model()

    wait_for_timestamp_tick(ckpt_path)
    write_in_place(ckpt_path, checkpoint_bytes("torchscript", 1))
    os.utime(ckpt_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(ckpt_path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )

    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))


def test_rollback_to_older_file_is_detected(ckpt_path, checkpoint_bytes, make_registry):
    """Replacing the checkpoint with an older file (older mtime) swaps back to it."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 1))
    registry = make_registry(ckpt_path)
    registry.get_model()

    older = ckpt_path.with_name("actor_old.pt")
    older.write_bytes(checkpoint_bytes("torchscript", 0))
    os.utime(older, ns=(0, os.stat(ckpt_path).st_mtime_ns - 3_600 * 10**9))
    os.replace(older, ckpt_path)

    assert action_of(registry.get_model()) == pytest.approx(expected_action(0))
    assert registry.load_count == 2


def test_symlink_retarget_is_detected(tmp_path, checkpoint_bytes, make_registry):
    """Pointing the watched symlink at another file (same size, same mtime) is a change."""
    a, b = tmp_path / "actor_a.pt", tmp_path / "actor_b.pt"
    a.write_bytes(checkpoint_bytes("torchscript", 0))
    b.write_bytes(checkpoint_bytes("torchscript", 1))
    st = os.stat(a)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    link = tmp_path / "actor_latest.pt"
    link.symlink_to(a.name)
    registry = make_registry(link)
    assert registry.get_model() is not None
    assert registry.version.resolved == str(a.resolve())

    tmp_link = tmp_path / ".tmp-link"
    tmp_link.symlink_to(b.name)
    os.replace(tmp_link, link)

    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))
    assert registry.version.resolved == str(b.resolve())


def test_unchanged_file_is_not_reloaded(ckpt_path, checkpoint_bytes, make_registry):
    """Many calls on an unchanged file return the same model object and load once."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    assert all(registry.get_model() is first for _ in range(100))
    assert registry.check() is None
    assert registry.load_count == 1


def test_check_interval_limits_how_often_the_file_is_looked_at(
    ckpt_path, checkpoint_bytes, make_registry
):
    """With check_interval the change is seen at the next interval, not on every call."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, check_interval=3600)
    first = registry.get_model()
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
    assert registry.get_model() is first  # inside the interval: no stat, no swap
    assert registry.check() is not None  # stepping by hand ignores the interval
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))

    fast = make_registry(ckpt_path, check_interval=0.02)
    fast.get_model()
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 0))
    wait_for(
        lambda: action_of(fast.get_model()) == pytest.approx(expected_action(0)),
        what="the interval to pass and the new checkpoint to load",
    )


# ---- 2. failed loads --------------------------------------------------------------------------


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def garbage(data: bytes) -> bytes:
    return os.urandom(len(data))


def empty(data: bytes) -> bytes:
    return b""


def foreign_zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hello.txt", "not a model")
    return buf.getvalue()


@pytest.mark.parametrize("swap", SWAPS)
@pytest.mark.parametrize("damage", [truncated, garbage, empty, foreign_zip])
def test_truncated_file_keeps_previous_model(
    damage, swap, ckpt_path, checkpoint_bytes, make_registry
):
    """A damaged replacement is never served: the last good model keeps answering."""
    good = checkpoint_bytes("torchscript", 0)
    ckpt_path.write_bytes(good)
    registry = make_registry(ckpt_path, swap=swap)
    first = registry.get_model()

    write_atomic(ckpt_path, damage(good))
    assert refresh(registry).model is first
    assert registry.load_count == 1
    assert registry.last_error is not None
    assert registry.history[-1].result == "failed"


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_checkpoint_of_every_format_keeps_previous_model(
    fmt, ckpt_path, checkpoint_bytes, make_registry
):
    """Half of a checkpoint in any format fails to load and the live model stays."""
    ckpt_path.write_bytes(checkpoint_bytes(fmt, 0))
    registry = make_registry(ckpt_path, loader=loader_for(fmt))
    first = registry.get_model()
    write_atomic(ckpt_path, truncated(checkpoint_bytes(fmt, 1)))
    assert registry.get_model() is first
    assert registry.history[-1].result == "failed"


def test_failed_load_is_recorded_with_key_and_reason(ckpt_path, checkpoint_bytes, make_registry):
    """last_error names the version key and the reason of the failure."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    registry.get_model()
    write_atomic(ckpt_path, b"definitely not a checkpoint")
    registry.get_model()

    error = registry.last_error
    assert error["key"] == VersionKey.from_stat(os.stat(ckpt_path)).to_dict()
    assert "unknown checkpoint format" in error["reason"]
    assert error["result"] == "failed"
    assert error["checkpoint"] == "actor_latest.pt"


def test_failed_key_is_not_retried_on_every_call(ckpt_path, checkpoint_bytes, make_registry):
    """A file that failed is tried once, not on every request."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, retry_after=3600)
    registry.get_model()
    write_atomic(ckpt_path, b"garbage")
    for _ in range(50):
        registry.get_model()
    assert [a.result for a in registry.history] == ["ok", "failed"]
    assert registry.check() is None


def test_failed_key_is_retried_when_the_key_changes(ckpt_path, checkpoint_bytes, make_registry):
    """Fixing the file (a new key) loads it at once, whatever retry_after says."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, retry_after=3600)
    registry.get_model()
    write_atomic(ckpt_path, b"garbage")
    registry.get_model()
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))
    assert registry.last_error is None


def test_failed_key_is_retried_after_retry_after(ckpt_path, checkpoint_bytes, make_registry):
    """The same failed key is tried again once retry_after has passed."""
    ckpt_path.write_bytes(b"garbage")
    registry = make_registry(ckpt_path, retry_after=0.05)
    with pytest.raises(ModelNotAvailable):
        registry.get_model()

    def retried() -> bool:
        with pytest.raises(ModelNotAvailable):
            registry.get_model()
        return len(registry.history) >= 2

    wait_for(retried, what="a second attempt")
    assert all(a.result == "failed" for a in registry.history)


# ---- 3. torn writes -----------------------------------------------------------------------------


def mixed_zip(old: bytes, new: bytes) -> bytes:
    """The new file's first weight record over the old file: old zip directory, old CRCs."""
    assert len(old) == len(new)
    _, end = record_span(new, "/data/0")
    return new[:end] + old[end:]


def test_mixed_zip_with_old_directory_is_rejected(ckpt_path, checkpoint_bytes, make_registry):
    """A file with its old zip directory and a new record fails the CRC check and is not served."""
    old, new = checkpoint_bytes("torchscript", 0), checkpoint_bytes("torchscript", 1)
    mixed = mixed_zip(old, new)
    # The premise: PyTorch itself loads such a file without complaint, with mixed weights.
    scripted = torch.jit.load(io.BytesIO(mixed))
    assert action_of(scripted) != pytest.approx(expected_action(0))
    assert action_of(scripted) != pytest.approx(expected_action(1))

    ckpt_path.write_bytes(old)
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    wait_for_timestamp_tick(ckpt_path)
    write_in_place(ckpt_path, mixed)
    assert registry.get_model() is first
    assert "CRC-32" in registry.last_error["reason"]
    assert registry.load_count == 1


def test_key_change_during_load_discards_the_model(ckpt_path, checkpoint_bytes, make_registry):
    """When the stat key moves while a load runs, that load is discarded as superseded (not a
    failure) and the newer content is loaded in the same check."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    writes = iter([checkpoint_bytes("torchscript", 1)])

    def writer_strikes_mid_load(model: Any) -> None:
        data = next(writes, None)
        if data is not None:
            wait_for_timestamp_tick(ckpt_path)
            write_in_place(ckpt_path, data)

    registry = make_registry(ckpt_path, validate=writer_strikes_mid_load)
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))
    assert [a.result for a in registry.history] == ["superseded", "ok"]
    assert registry.load_count == 1
    assert registry.last_error is None


def test_what_is_loaded_is_the_bytes_that_were_hashed(ckpt_path, checkpoint_bytes, make_registry):
    """The model and its sha256 come from one read of the file."""
    data = checkpoint_bytes("torchscript", 0)
    ckpt_path.write_bytes(data)
    registry = make_registry(ckpt_path)
    registry.get_model()
    assert registry.version.sha256 == hashlib.sha256(data).hexdigest()
    assert registry.version.size == len(data)


# ---- 4. validation before swap ------------------------------------------------------------------


def test_probe_rejects_wrong_action_shape(ckpt_path, checkpoint_bytes, make_registry):
    """A model whose action is not [batch, 1] is rejected and the live model stays."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    torch.jit.save(torch.jit.script(Actor(action_dim=2)), ckpt_path)  # no metadata: expects 1
    assert registry.get_model() is first
    assert registry.history[-1].result == "rejected"
    assert "shape" in registry.last_error["reason"]


def test_probe_rejects_nan_actions(ckpt_path, tmp_path, checkpoint_bytes, make_registry):
    """A model that answers NaN on the probe never goes live."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    write_atomic(ckpt_path, published_bytes(ConstantActor(math.nan), tmp_path, obs_dim=4))
    assert registry.get_model() is first
    assert "not finite" in registry.last_error["reason"]


def test_action_bounds_in_metadata_reject_a_model(
    ckpt_path, tmp_path, checkpoint_bytes, make_registry
):
    """A model whose probe action leaves metadata's [action_low, action_high] is rejected."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    bounded = {"obs_dim": 4, "action_low": -0.5, "action_high": 0.5}
    write_atomic(ckpt_path, published_bytes(ConstantActor(0.9), tmp_path, **bounded))
    assert registry.get_model() is first
    assert "outside the action bounds" in registry.last_error["reason"]

    write_atomic(ckpt_path, published_bytes(ConstantActor(0.4), tmp_path, **bounded))
    assert registry.get_model() is not first
    assert registry.current.expect.action_bounds is not None


def test_configured_action_bounds_reject_a_model(ckpt_path, tmp_path, make_registry):
    """Bounds given to the registry apply to checkpoints without bounds in their metadata."""
    ckpt_path.write_bytes(published_bytes(ConstantActor(2.0), tmp_path, obs_dim=4))
    registry = make_registry(ckpt_path, action_low=-1.0, action_high=1.0)
    with pytest.raises(ModelNotAvailable) as info:
        registry.get_model()
    assert "outside the action bounds" in str(info.value.__cause__)


def test_validate_callable_can_reject_a_model(ckpt_path, checkpoint_bytes, make_registry):
    """The user's validate() raising rejects the model like a failed probe."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    calls = []

    def only_first(model: Any) -> None:
        calls.append(model)
        if len(calls) > 1:
            raise RuntimeError("eval return too low")

    registry = make_registry(ckpt_path, validate=only_first)
    first = registry.get_model()
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
    assert registry.get_model() is first
    assert registry.history[-1].result == "rejected"
    assert "eval return too low" in registry.last_error["reason"]


def test_metadata_contradicting_configuration_is_rejected(
    ckpt_path, checkpoint_bytes, make_registry
):
    """A checkpoint declaring obs_dim=4 is rejected by a server configured for 8."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, obs_dim=8)
    with pytest.raises(ModelNotAvailable, match="obs_dim"):
        registry.get_model()


# ---- 5. a file that disappears --------------------------------------------------------------------


@pytest.mark.parametrize("swap", SWAPS)
def test_missing_file_keeps_serving_and_reappearing_file_is_loaded(
    swap, ckpt_path, checkpoint_bytes, make_registry
):
    """Deleting the checkpoint keeps the last model serving; a new file is loaded when it appears."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, swap=swap)
    first = registry.get_model()

    ckpt_path.unlink()
    assert refresh(registry).model is first
    assert registry.file_missing
    assert registry.status()["file_missing"] is True

    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 1))
    assert action_of(refresh(registry).model) == pytest.approx(expected_action(1))
    assert not registry.status()["file_missing"]


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_a_latest_file_given_follows_the_same_models_latest_of_another_kind(
    fmt, tmp_path, make_registry
):
    """`serve DIR/actor_latest.pt` while the trainer publishes safetensors (or with a manifest):
    what is published is served, not the newest checkpoint found at start, forever."""
    publish(seeded_actor(0), tmp_path, format=fmt)
    (tmp_path / "actor_latest.json").unlink()  # only the link of the format is left
    given = tmp_path / ("actor_latest.pt" if fmt == "safetensors" else "actor_latest.json")
    registry = make_registry(given, loader=loader_for(fmt))
    assert action_of(registry.get_model()) == pytest.approx(expected_action(0))

    publish(seeded_actor(1), tmp_path, format=fmt)
    assert action_of(refresh(registry).model) == pytest.approx(expected_action(1))
    assert not registry.file_missing
    assert registry.version is not None and registry.version.checkpoint.startswith("actor_")


def test_a_latest_file_given_never_follows_another_models_latest(
    tmp_path, checkpoint_bytes, make_registry
):
    """Another model's `critic_latest.pt` beside a missing `actor_latest.pt` is not the actor."""
    (tmp_path / "critic_latest.pt").write_bytes(checkpoint_bytes("torchscript", 1))
    registry = make_registry(tmp_path / "actor_latest.pt")
    with pytest.raises(ModelNotAvailable):
        registry.get_model()
    assert registry.file_missing
    (tmp_path / "actor_latest.pt").write_bytes(checkpoint_bytes("torchscript", 0))
    assert action_of(refresh(registry).model) == pytest.approx(expected_action(0))


def test_unreadable_path_is_a_missing_file_not_a_crash(ckpt_path, checkpoint_bytes, make_registry):
    """A path that cannot be stat'ed (here a symlink loop) reads as missing; the model stays."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    ckpt_path.unlink()
    ckpt_path.symlink_to(ckpt_path.name)  # ELOOP, not FileNotFoundError
    assert registry.get_model() is first
    assert registry.file_missing


# ---- 6. cold start ----------------------------------------------------------------------------------


def test_cold_start_without_a_file_raises_model_not_available(ckpt_path, make_registry):
    """No file: not loaded, and get_model() raises ModelNotAvailable, not FileNotFoundError."""
    registry = make_registry(ckpt_path)
    assert not registry.is_loaded
    assert registry.version is None
    with pytest.raises(ModelNotAvailable):
        registry.get_model()
    assert registry.status()["loaded"] is False


def test_cold_start_in_a_missing_directory_raises_model_not_available(tmp_path, make_registry):
    """A path under a directory that does not exist yet is a cold start, not a crash."""
    registry = make_registry(tmp_path / "nowhere" / "actor_latest.pt")
    with pytest.raises(ModelNotAvailable):
        registry.get_model()


def test_cold_start_with_a_bad_file_has_the_checkpoint_error_as_cause(ckpt_path, make_registry):
    """When no model is live and the file cannot load, ModelNotAvailable carries the reason."""
    ckpt_path.write_bytes(b"PK\x03\x04 truncated zip")
    registry = make_registry(ckpt_path)
    for _ in range(2):  # the first attempt, then the recorded failure
        with pytest.raises(ModelNotAvailable) as info:
            registry.get_model()
        assert isinstance(info.value.__cause__, CheckpointError)
    assert not registry.is_loaded


def test_empty_directory_waits_for_the_first_publish(tmp_path, make_registry):
    """A directory with nothing published is a cold start; the first publish() is then served."""
    registry = make_registry(tmp_path)
    with pytest.raises(ModelNotAvailable, match="no checkpoint"):
        registry.get_model()
    publish(seeded_actor(1), tmp_path, format="torchscript")
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))
    assert registry.source.kind == "manifest"
    assert registry.name == "actor"


def test_empty_directory_finds_a_checkpoint_copied_by_hand(
    tmp_path, checkpoint_bytes, make_registry
):
    """A directory watched before anything exists also finds a plain `*_latest.pt` later."""
    registry = make_registry(tmp_path)
    with pytest.raises(ModelNotAvailable):
        registry.get_model()
    (tmp_path / "actor_latest.pt").write_bytes(checkpoint_bytes("torchscript", 0))
    assert registry.get_model() is not None
    assert registry.source.kind == "file"


def test_empty_directory_is_not_listed_on_every_call(
    tmp_path, checkpoint_bytes, make_registry, monkeypatch
):
    """Calls without a model list an empty directory once per RESCAN_EVERY s at most, until an
    entry appears in it: a checkpoint copied in is still found at the next call."""
    listed: list[Path] = []
    monkeypatch.setattr(
        ckptserve._watching,
        "latest_in_directory",
        lambda directory, name, **kw: (
            listed.append(directory) or latest_in_directory(directory, name, **kw)
        ),
    )
    then = time.time_ns() - 10_000_000_000  # its last change well past any timestamp tick
    os.utime(tmp_path, ns=(then, then))
    registry = make_registry(tmp_path)
    started = time.monotonic()
    for _ in range(50):
        with pytest.raises(ModelNotAvailable):
            registry.get_model()
    elapsed = time.monotonic() - started
    assert 1 <= len(listed) <= 1 + elapsed / ckptserve._watching.RESCAN_EVERY

    (tmp_path / "actor_latest.pt").write_bytes(checkpoint_bytes("torchscript", 0))
    assert registry.get_model() is not None
    assert registry.source.kind == "file"


# ---- 7. concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("swap", SWAPS)
def test_concurrent_gets_replacements_and_forced_reloads(
    swap, ckpt_path, checkpoint_bytes, make_registry
):
    """Readers never fail or see a half-made model while files change, reloads are forced and
    status() is read."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, swap=swap)
    ok_loads = []
    registry.add_listener(lambda r, attempt: attempt.result == "ok" and ok_loads.append(attempt))
    registry.get_model()
    known_actions = [expected_action(0), expected_action(1)]
    stop = threading.Event()
    errors: list[BaseException] = []
    seen = []

    def reader() -> None:
        try:
            while not stop.is_set():
                model = registry.get_model()
                assert model is not None
                action = action_of(model)
                assert any(action == pytest.approx(a) for a in known_actions), action
                seen.append(action)
        except BaseException as exc:
            errors.append(exc)

    def observer() -> None:
        try:
            while not stop.is_set():
                json.dumps(registry.status())
        except BaseException as exc:
            errors.append(exc)

    def forcer() -> None:
        try:
            for _ in range(10):
                assert registry.get_model(force_reload=True) is not None
        except BaseException as exc:
            errors.append(exc)

    forcers = [threading.Thread(target=forcer) for _ in range(2)]
    threads = [threading.Thread(target=reader) for _ in range(5)]
    threads += [threading.Thread(target=observer), *forcers]
    for t in threads:
        t.start()
    for i in range(20):
        write_atomic(ckpt_path, checkpoint_bytes("torchscript", i % 2))
        time.sleep(0)  # let the readers run between replacements
    for t in forcers:
        t.join(60)
    stop.set()
    for t in threads:
        t.join(60)
    registry.wait_idle(30)

    assert not errors, errors[:3]
    assert seen
    assert registry.load_count == len(ok_loads) >= 1  # real successful loads only


# ---- 8. versions and status ---------------------------------------------------------------------------


def test_model_version_describes_the_loaded_checkpoint(tmp_path, make_registry):
    """The live ModelVersion has path, resolved file, key, mtime, size, sha256 and metadata."""
    checkpoint = publish(seeded_actor(0), tmp_path, format="torchscript", metadata={"step": 7})
    link = tmp_path / "actor_latest.pt"
    registry = make_registry(link)
    assert registry.version is None
    before = time.time()
    registry.get_model()
    version = registry.version

    st = os.stat(link)
    data = checkpoint.read_bytes()
    assert isinstance(version, ModelVersion)
    assert version.path == str(link)
    assert version.resolved == str(checkpoint.resolve())
    assert version.checkpoint == checkpoint.name
    assert version.key == VersionKey.from_stat(st)
    assert version.mtime == st.st_mtime_ns / 1e9
    assert version.size == len(data)
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    assert version.format == "torchscript"
    assert version.metadata["step"] == 7
    assert version.metadata["obs_dim"] == 4 and version.metadata["action_dim"] == 1
    assert before <= version.loaded_at <= time.time()
    assert version.load_seconds > 0
    assert version.tag == f"{checkpoint.name}@{version.sha256[:12]}"
    with pytest.raises(dataclasses.FrozenInstanceError):
        version.sha256 = "0" * 64  # type: ignore[misc]


def test_status_is_json_with_original_and_new_fields(ckpt_path, checkpoint_bytes, make_registry):
    """status() keeps the original fields and adds version, errors, missing, pinned and history."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    empty = json.loads(json.dumps(registry.status()))
    assert empty["loaded"] is False and empty["version"] is None

    registry.get_model()
    write_atomic(ckpt_path, b"garbage")
    registry.get_model()
    status = json.loads(json.dumps(registry.status()))

    assert status["loaded"] is True
    assert status["model_path"] == str(ckpt_path)
    assert status["load_count"] == 1
    assert status["last_mtime"] == registry.version.mtime
    field_names = {f.name for f in dataclasses.fields(ModelVersion)}
    assert field_names <= set(status["version"])
    assert status["version"]["sha256"] == registry.version.sha256
    assert status["version"]["metadata"] == registry.version.metadata
    assert status["last_error"]["reason"]
    assert status["file_missing"] is False
    assert status["pinned"] is None
    assert [h["result"] for h in status["history"]] == ["ok", "failed"]
    assert all({"result", "reason", "duration"} <= set(h) for h in status["history"])


def test_history_keeps_the_last_n_attempts(ckpt_path, checkpoint_bytes, make_registry):
    """history is bounded, and check() still reports attempts once it is full."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, history=2)
    for seed in (1, 0, 1):
        write_atomic(ckpt_path, checkpoint_bytes("torchscript", seed))
        assert registry.check().result == "ok"
    write_atomic(ckpt_path, b"garbage")
    assert registry.check().result == "failed"
    assert len(registry.history) == 2


# ---- 9. pinning -----------------------------------------------------------------------------------------


def test_pin_serves_an_older_checkpoint_until_unpin(tmp_path, make_registry):
    """pin() serves a given checkpoint whatever is published; unpin() follows the latest again."""
    older = publish(seeded_actor(0), tmp_path, format="torchscript")
    registry = make_registry(tmp_path)
    publish(seeded_actor(1), tmp_path, format="torchscript")
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))

    registry.pin(older)
    assert registry.pinned == older
    assert action_of(registry.get_model()) == pytest.approx(expected_action(0))
    newest = publish(seeded_actor(2), tmp_path, format="torchscript")
    assert registry.check() is None
    assert action_of(registry.get_model()) == pytest.approx(expected_action(0))
    assert registry.status()["pinned"] == str(older)

    registry.unpin()
    assert registry.pinned is None
    assert registry.version.checkpoint == newest.name
    assert action_of(registry.get_model()) == pytest.approx(expected_action(2))


def test_pin_of_a_bad_checkpoint_keeps_the_live_model(tmp_path, make_registry):
    """pin() of a file that cannot load raises CheckpointError and changes nothing served."""
    publish(seeded_actor(0), tmp_path, format="torchscript")
    registry = make_registry(tmp_path)
    first = registry.get_model()
    bad = tmp_path / "actor_20000101_000000.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        registry.pin(bad)
    with pytest.raises(CheckpointError):
        registry.pin(tmp_path / "missing.pt")
    assert registry.pinned is None
    assert registry.get_model() is first
    assert registry.check() is None


def test_a_failed_pin_leaves_what_is_known_about_the_watched_checkpoint(
    ckpt_path, checkpoint_bytes, make_registry
):
    """A pin that fails is not the watched file failing: no missing flag, no retry of a
    watched checkpoint that failed, and the watched file's next change still loads."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, retry_after=3600)
    first = registry.get_model()
    write_atomic(ckpt_path, b"garbage")
    assert registry.check().result == "failed"
    with pytest.raises(CheckpointError):
        registry.pin(ckpt_path.parent / "missing.pt")
    assert not registry.file_missing
    assert registry.check() is None
    assert registry.get_model() is first
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))


# ---- force_reload, touch, mtime 0, formats allowed -----------------------------------------------------


def test_forced_reload_counts_a_load_even_when_unchanged(
    ckpt_path, checkpoint_bytes, make_registry
):
    """force_reload=True always loads a fresh model and counts it."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    assert registry.get_model(force_reload=True) is not first
    assert registry.load_count == 2
    assert registry.history[-1].forced


def test_touch_does_not_reload(ckpt_path, checkpoint_bytes, make_registry):
    """A touch (new mtime, same bytes) adopts the new key without a swap or a counted load."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    os.utime(ckpt_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert registry.get_model() is first
    assert registry.load_count == 1
    assert registry.history[-1].result == "unchanged"
    assert registry.check() is None  # the new key was adopted


def test_copy_of_the_same_bytes_does_not_reload(ckpt_path, checkpoint_bytes, make_registry):
    """Replacing the file with an identical copy keeps the live model."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 0))
    assert registry.get_model() is first
    assert registry.load_count == 1


def test_file_with_mtime_zero_is_served(ckpt_path, checkpoint_bytes, make_registry):
    """A file whose mtime is 0 (the epoch) is a file, not a missing one."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    os.utime(ckpt_path, ns=(0, 0))
    registry = make_registry(ckpt_path)
    assert registry.get_model() is not None
    assert registry.status()["last_mtime"] == 0.0
    assert registry.status()["loaded"] is True


def test_allow_formats_refuses_other_formats(ckpt_path, checkpoint_bytes, make_registry):
    """With allow_formats, a checkpoint of another format is never loaded."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, allow_formats={"export", "safetensors"})
    with pytest.raises(ModelNotAvailable, match="not allowed"):
        registry.get_model()
    allowed = make_registry(ckpt_path, allow_formats=["torchscript"])
    assert allowed.get_model() is not None


def test_a_factory_string_as_loader_is_a_configuration_error(ckpt_path):
    """loader= takes "auto" or a Loader; a bare factory string says to wrap it."""
    with pytest.raises(ValueError, match="state_dict_loader"):
        ModelRegistry(ckpt_path, loader="policies:make_actor")


def test_unknown_format_name_in_allow_formats_is_a_configuration_error(ckpt_path):
    """A typo in allow_formats fails at construction instead of refusing everything."""
    with pytest.raises(ValueError, match="unknown formats"):
        ModelRegistry(ckpt_path, allow_formats={"exported"})


@pytest.mark.parametrize("nice", [-1, 20])
def test_background_nice_outside_what_nice_allows_is_a_configuration_error(ckpt_path, nice):
    """background_nice is 0..19 (0: the background load runs at the callers' priority)."""
    with pytest.raises(ValueError, match="background_nice"):
        ModelRegistry(ckpt_path, background_nice=nice)


# ---- swap modes: stale(), check() and the scheduling policies --------------------------------------------------------------


def test_background_callers_never_wait_once_live(ckpt_path, checkpoint_bytes, make_registry):
    """While a new checkpoint loads on the worker, every caller gets the live model at once."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    started, release = threading.Event(), threading.Event()
    gate = {"on": False}

    def slow_validate(model: Any) -> None:
        if gate["on"]:
            started.set()
            assert release.wait(30)

    registry = make_registry(ckpt_path, swap="background", validate=slow_validate)
    first = registry.get_model()  # a cold start waits for the first load
    gate["on"] = True
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))

    assert registry.get_model() is first  # schedules the load, returns at once
    assert started.wait(30)
    assert registry.loading
    for _ in range(100):  # the worker is stuck in validate(): none of these may wait for it
        assert registry.get_model() is first
        assert registry.get().model is first
    assert registry.status()["loading"] is True
    assert not registry.wait_idle(timeout=0.01)

    release.set()
    assert registry.wait_idle(30)
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))
    assert registry.load_count == 2


def test_background_cold_start_loads_in_the_caller(ckpt_path, checkpoint_bytes, make_registry):
    """With nothing live, a background registry's first get_model() waits and returns a model."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, swap="background")
    assert registry.get_model() is not None
    assert registry.load_count == 1


def test_stale_tells_that_a_look_is_needed_and_loads_nothing(
    ckpt_path, checkpoint_bytes, make_registry
):
    """stale() compares tokens only; check() is the one step that loads."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    assert registry.stale()  # nothing decided yet
    assert registry.current is None
    assert registry.check().result == "ok"
    live = registry.current
    assert not registry.stale()

    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
    assert registry.stale() and registry.stale()  # asking twice changes nothing
    assert registry.current is live and registry.load_count == 1
    assert registry.check().result == "ok"
    assert registry.current is not live
    assert not registry.stale()


def test_stale_looks_at_most_once_per_check_interval_and_check_ignores_it(
    ckpt_path, checkpoint_bytes, make_registry
):
    """With check_interval, stale() stats the file at most once per interval; check() always looks."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, check_interval=3600)
    registry.check()
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
    assert not registry.stale()  # within the interval: not looked at
    assert registry.check().result == "ok"


def test_sync_policy_lets_the_caller_check_a_new_checkpoint(
    ckpt_path, checkpoint_bytes, make_registry
):
    """In sync mode a new token is the caller's to check: serve_stale answers None."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    assert registry.policy.serve_stale(registry) is None  # nothing live: the caller checks
    live = registry.get()
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
    assert registry.policy.serve_stale(registry) is None
    assert not registry.loading
    assert registry.get() is not live


def test_sync_retry_of_a_failed_file_runs_on_the_worker_while_a_model_is_live(
    ckpt_path, checkpoint_bytes, make_registry
):
    """An unchanged bad file is retried every retry_after off the request path: the live model
    answers at once and the retry runs on the worker."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, retry_after=0.0)
    live = registry.get()
    write_atomic(ckpt_path, b"garbage" * 100)
    assert registry.check().result == "failed"
    assert registry.stale()  # the retry is due at once
    assert registry.policy.serve_stale(registry) is live
    assert registry.wait_idle(30)
    assert registry.history[-1].result == "failed"
    assert registry.current is live


def test_background_policy_schedules_the_check_and_answers_with_the_live_model(
    ckpt_path, checkpoint_bytes, make_registry
):
    """In background mode a stale registry returns the live handle and loads on the worker."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path, swap="background")
    live = registry.get()
    write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
    assert registry.get() is live
    assert registry.wait_idle(30)
    assert registry.get() is not live


def test_close_removes_the_private_copies(ckpt_path, checkpoint_bytes, tmp_path):
    """Checkpoints are loaded from private copies in a cache that close() cleans up."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "unrelated.txt").write_text("not ours")
    with ModelRegistry(ckpt_path, cache_dir=str(cache)) as registry:
        registry.get_model()
        assert any(p.name.startswith(registry.version.sha256) for p in cache.iterdir())
        write_atomic(ckpt_path, checkpoint_bytes("torchscript", 1))
        registry.get_model()
    assert [p.name for p in cache.iterdir()] == ["unrelated.txt"]


def test_bytes_that_fail_to_load_leave_no_private_copy(ckpt_path, checkpoint_bytes, tmp_path):
    """A failed load's copy is removed from the cache; the live model's copy stays."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    cache = tmp_path / "cache"
    with ModelRegistry(ckpt_path, cache_dir=str(cache)) as registry:
        registry.get_model()
        write_atomic(ckpt_path, b"not a checkpoint" * 64)
        registry.get_model()
        assert registry.history[-1].result == "failed"
        assert [p.name for p in cache.iterdir()] == [registry.version.sha256]


def test_a_loaded_model_survives_its_file_being_replaced(
    ckpt_path, checkpoint_bytes, make_registry
):
    """The live model keeps answering after its checkpoint file is overwritten or removed."""
    ckpt_path.write_bytes(checkpoint_bytes("state_dict", 0))
    registry = make_registry(ckpt_path, loader=loader_for("state_dict"), check_interval=3600)
    model = registry.get_model()
    wait_for_timestamp_tick(ckpt_path)
    write_in_place(ckpt_path, checkpoint_bytes("state_dict", 1))
    assert action_of(model) == pytest.approx(expected_action(0))


def test_integrity_error_is_a_checkpoint_error():
    """IntegrityError (CRC, sha256, signature) is caught by `except CheckpointError`."""
    assert issubclass(IntegrityError, CheckpointError)


def test_odd_metadata_is_a_failed_load_not_a_crash(
    ckpt_path, tmp_path, checkpoint_bytes, make_registry
):
    """Metadata that cannot be read as bounds fails the load; get_model() still answers."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    registry = make_registry(ckpt_path)
    first = registry.get_model()
    odd = published_bytes(seeded_actor(1), tmp_path, action_low="minus one")
    write_atomic(ckpt_path, odd)
    assert registry.get_model() is first
    assert "minus one" in registry.last_error["reason"]


def test_close_waits_for_a_load_in_flight_before_removing_the_copies(
    ckpt_path, checkpoint_bytes, tmp_path
):
    """close() from another thread lets a running load finish; then the cache is emptied."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    started, release = threading.Event(), threading.Event()

    def slow_validate(model: Any) -> None:
        started.set()
        assert release.wait(30)

    cache = tmp_path / "cache"
    registry = ModelRegistry(ckpt_path, cache_dir=str(cache), validate=slow_validate)
    loader = threading.Thread(target=registry.get_model)
    loader.start()
    assert started.wait(30)
    closer = threading.Thread(target=registry.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # waiting for the load, not pulling the copy from under it
    release.set()
    loader.join(30)
    closer.join(30)
    assert [a.result for a in registry.history] == ["ok"]
    assert list(cache.iterdir()) == []


def test_a_load_that_outlasts_close_keeps_nothing(ckpt_path, checkpoint_bytes):
    """close() that stops waiting leaves the late load without effect: nothing swapped or kept."""
    ckpt_path.write_bytes(checkpoint_bytes("torchscript", 0))
    started, release = threading.Event(), threading.Event()

    def slow_validate(model: Any) -> None:
        started.set()
        assert release.wait(30)

    registry = ModelRegistry(ckpt_path, validate=slow_validate)
    copies = registry._copies.directory
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            registry.get_model()
        except ModelNotAvailable as exc:  # nothing was swapped in: the registry was closed
            outcome.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    assert started.wait(30)
    registry.close(timeout=0)
    release.set()
    loader.join(30)
    assert registry.current is None and len(outcome) == 1
    assert not copies.exists()


class StateOnlyActor(torch.nn.Module):
    """A CleanRL-style actor: `forward(x)` takes the state alone and returns the action."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mu(x))


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_an_actor_whose_forward_takes_the_state_alone_is_published_and_served(
    tmp_path, make_registry, fmt
):
    """`forward(x)` (no deterministic flag) is called as `forward(x)`, by publish() and the server."""
    torch.manual_seed(3)
    actor = StateOnlyActor().eval()
    publish(actor, tmp_path, format=fmt)
    served = make_registry(tmp_path).get_model()
    x = torch.full((1, 4), 0.5)
    with torch.inference_mode():
        got, want = served(x, True), actor(x)
    assert float(got[0, 0]) == pytest.approx(float(want[0, 0]), abs=1e-6)
