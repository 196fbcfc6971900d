"""ModelRegistry against a hostile or careless directory and a restart: what may be in the model
directory, and what the registry must still never do (serve it, hang, leak, go dark)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from ckptserve import CheckpointError, ModelNotAvailable, publish
from ckptserve.fallback import MAX_CANDIDATES
from ckptserve.naming import record_for
from core_helpers import action_of, write_atomic
from policies import Actor, ConstantActor, seeded_actor


def expected_action(seed: int) -> float:
    return action_of(seeded_actor(seed))


def publish_bad(directory: Path, key: str | None = None) -> Path:
    """A timestamped checkpoint that fails to load, made the latest, as a bad publish would."""
    good = publish(seeded_actor(99), directory, format="torchscript", signing_key=key)
    write_atomic(good, b"PK\x03\x04 not a checkpoint")
    return good


# ---- a restart is never an outage while a good checkpoint exists -------------------------------


def test_a_restart_with_a_bad_newest_checkpoint_serves_the_newest_good_one(tmp_path, make_registry):
    """Nine good checkpoints and a corrupt newest one: a fresh registry serves the newest good one,
    says so, keeps following, and the next good publish replaces the fallback."""
    for seed in range(9):
        publish(seeded_actor(seed), tmp_path, format="torchscript", keep=20)
    bad = publish_bad(tmp_path)
    registry = make_registry(tmp_path / "actor_latest.pt")
    assert action_of(registry.get_model()) == pytest.approx(expected_action(8))
    fallback = registry.status()["fallback"]
    assert fallback is not None and bad.name in fallback["reason"], fallback
    assert registry.fallback is not None and registry.fallback.checkpoint != bad.name

    newest = publish(seeded_actor(20), tmp_path, format="torchscript", keep=20)
    assert action_of(registry.get_model()) == pytest.approx(expected_action(20))
    assert registry.version.checkpoint == newest.name
    assert registry.status()["fallback"] is None


def test_the_fallback_search_tries_at_most_ten_candidates(tmp_path, make_registry):
    """A directory of bad checkpoints costs at most MAX_CANDIDATES loads, and not again."""
    for _ in range(MAX_CANDIDATES + 5):
        publish_bad(tmp_path)
    registry = make_registry(tmp_path / "actor_latest.pt", retry_after=0.0)
    with pytest.raises(ModelNotAvailable):
        registry.get_model()
    tried = len(registry.history)
    assert tried <= 1 + MAX_CANDIDATES, [a.checkpoint for a in registry.history]
    with pytest.raises(ModelNotAvailable):
        registry.get_model()  # the retry of the newest runs; the failed candidates are not tried
    assert len(registry.history) == tried + 1


@pytest.mark.parametrize("key", [None, "key"], ids=["unsigned", "signed"])
def test_a_fallback_beside_a_manifest_is_checked_through_its_own_record(
    tmp_path, make_registry, key
):
    """Beside a manifest an earlier checkpoint qualifies through the record publish() wrote for
    it (sha256, and the signature when signing): with its record it is served, without it not."""
    good = publish(seeded_actor(0), tmp_path, format="torchscript", signing_key=key)
    publish_bad(tmp_path, key)
    registry = make_registry(tmp_path, signing_key=key)
    assert action_of(registry.get_model()) == pytest.approx(expected_action(0))
    assert registry.fallback.checkpoint == good.name

    record_for(good).unlink()
    again = make_registry(tmp_path, signing_key=key)
    with pytest.raises(ModelNotAvailable):
        again.get_model()
    assert again.fallback is None


def test_an_intruder_in_place_of_a_recorded_checkpoint_is_never_a_fallback(tmp_path, make_registry):
    """A checkpoint replaced after publishing does not match its signed record: refused."""
    good = publish(seeded_actor(0), tmp_path, format="torchscript", signing_key="key")
    publish_bad(tmp_path, "key")
    write_atomic(good, _scripted_without_metadata(seeded_actor(7)))
    registry = make_registry(tmp_path, signing_key="key")
    with pytest.raises(ModelNotAvailable):
        registry.get_model()
    assert registry.fallback is None
    assert "from the manifest" in registry.history[-1].reason


# ---- the served shape is locked by the first live model -----------------------------------------


def test_a_candidate_with_another_action_shape_is_refused_unless_forced(ckpt_path, make_registry):
    """One action live, a two-action checkpoint published: refused (clients were built against
    one), also when its metadata declares two; a forced reload takes it."""
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    publish(seeded_actor(0), ckpt_path.parent, format="torchscript")
    registry = make_registry(ckpt_path.parent / "actor_latest.pt")
    live = registry.get()
    publish(seeded_actor(1, action_dim=2), ckpt_path.parent, format="torchscript")
    attempt = registry.check()
    assert attempt.result == "rejected" and "action_dim=2" in attempt.reason, attempt
    assert "--action-dim" in attempt.reason
    assert registry.current is live

    attempt = registry.check(force=True)
    assert attempt.result == "ok" and attempt.forced
    assert registry.current.expect.action_dim == 2


def test_with_nothing_live_a_two_action_model_is_served_with_its_shape(ckpt_path, make_registry):
    """No --action-dim and no metadata: the first model's output gives the shape."""
    ckpt_path.write_bytes(_scripted_without_metadata(Actor(action_dim=2)))
    registry = make_registry(ckpt_path)
    assert registry.get().expect.action_dim == 2


def test_a_model_nobody_states_the_observation_size_of_is_never_served(ckpt_path, make_registry):
    """No obs_dim anywhere and no 2-D first weight: the probe cannot run, so it is refused."""
    ckpt_path.write_bytes(_scripted_without_metadata(ConstantActor(float("nan"))))
    registry = make_registry(ckpt_path)
    with pytest.raises(ModelNotAvailable, match="--obs-dim"):
        registry.get_model()


def _scripted_without_metadata(model: torch.nn.Module) -> bytes:
    import io

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(model.eval()), buf)
    return buf.getvalue()


# ---- what is not a regular file, or leads out of the directory ---------------------------------


@pytest.mark.parametrize("swap", ["sync", "background"])
def test_a_fifo_in_place_of_the_checkpoint_never_hangs_a_load(tmp_path, make_registry, swap):
    """A FIFO where the checkpoint was: refused at once, and the next good publish still loads."""
    registry = make_registry(tmp_path / "actor_latest.pt", swap=swap, retry_after=0.0)
    publish(seeded_actor(0), tmp_path, format="torchscript")
    live = registry.get()
    link = tmp_path / "actor_latest.pt"
    fifo = tmp_path / "actor_fifo.pt"
    os.mkfifo(fifo)
    tmp = tmp_path / ".link"
    tmp.symlink_to(fifo.name)
    os.replace(tmp, link)
    done = threading.Event()
    threading.Thread(target=lambda: (registry.check(), done.set()), daemon=True).start()
    assert done.wait(10), "a load hung on the FIFO"
    assert registry.current is live
    assert "FIFO" in registry.last_error["reason"]
    publish(seeded_actor(1), tmp_path, format="torchscript")
    registry.check()
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))


def test_a_link_out_of_the_directory_shows_nothing_of_its_target(tmp_path, make_registry):
    """`actor_latest.pt` -> a file elsewhere: status and errors name the path inside the
    directory only, with no digest, size or inode of the target."""
    secret = tmp_path / "secret-file"
    secret.write_bytes(b"root:$6$not-a-checkpoint")
    models = tmp_path / "models"
    models.mkdir()
    (models / "actor_latest.pt").symlink_to(secret)
    registry = make_registry(models / "actor_latest.pt")
    with pytest.raises(ModelNotAvailable) as caught:
        registry.get_model()
    status = registry.status()
    shown = repr(status) + str(caught.value)
    assert "secret-file" not in shown, shown
    error = status["last_error"]
    assert error["checkpoint"] == "actor_latest.pt"
    assert error["sha256"] is None and error["key"] is None
    assert status["history"][-1]["sha256"] is None


def test_a_key_means_only_signed_manifests_are_followed(tmp_path, make_registry):
    """With a key but no require_signature, deleting the manifest and writing a plain checkpoint
    does not downgrade the source: the plain file is never served."""
    publish(seeded_actor(0), tmp_path, format="torchscript", signing_key="key")
    registry = make_registry(tmp_path, signing_key="key")
    live = registry.get()
    (tmp_path / "actor_latest.json").unlink()
    for link in tmp_path.glob("actor_latest.*"):
        link.unlink()
    intruder = tmp_path / "intruder.pt"
    intruder.write_bytes(_scripted_without_metadata(seeded_actor(5)))
    (tmp_path / "actor_latest.pt").symlink_to(intruder.name)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # past a rescan of the directory
        registry.check()
        time.sleep(0.05)
    assert registry.current is live
    assert registry.source.kind == "manifest"


# ---- a pin is verified like everything else -----------------------------------------------------


def test_a_pinned_checkpoint_replaced_by_an_intruder_is_never_served(tmp_path, make_registry):
    """Signed mode: pin an older signed checkpoint, then os.replace that file with an unsigned
    model: the pinned model keeps answering, and a reload of the pin refuses the intruder."""
    older = publish(seeded_actor(0), tmp_path, format="torchscript", signing_key="key")
    publish(seeded_actor(1), tmp_path, format="torchscript", signing_key="key")
    registry = make_registry(tmp_path, signing_key="key", require_signature=True)
    assert action_of(registry.get_model()) == pytest.approx(expected_action(1))
    registry.pin(older)
    assert action_of(registry.get_model()) == pytest.approx(expected_action(0))

    write_atomic(older, _scripted_without_metadata(seeded_actor(7)))
    for _ in range(3):
        assert action_of(registry.get_model()) == pytest.approx(expected_action(0))
    attempt = registry.check(reload=True)
    assert attempt.result == "failed" and "from the manifest" in attempt.reason, attempt
    assert action_of(registry.get_model()) == pytest.approx(expected_action(0))


def test_a_checkpoint_without_a_signed_record_cannot_be_pinned_in_signed_mode(
    tmp_path, make_registry
):
    """In signed mode only what a signed record vouches for can be pinned."""
    older = publish(seeded_actor(0), tmp_path, format="torchscript", signing_key="key")
    publish(seeded_actor(1), tmp_path, format="torchscript", signing_key="key")
    record_for(older).unlink()
    registry = make_registry(tmp_path, signing_key="key")
    live = registry.get()
    with pytest.raises(CheckpointError, match="no signed manifest record"):
        registry.pin(older)
    assert registry.current is live and registry.pinned is None
