"""Resident versions: the last K good versions stay loaded and can be named by a request."""

from __future__ import annotations

import pytest
import torch
from rollout_helpers import live_model

from ckptserve import load_checkpoint
from ckptserve.rollout.resident import ResidentVersions, model_bytes, parse_version_ref
from policies import seeded_actor


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_a_version_is_found_by_sha256_prefix_or_tag():
    """The full sha256, any 12+ hex prefix (any case) and the X-Model-Version tag all name it."""
    a = live_model(seeded_actor(0), "actor_a.pt")
    resident = ResidentVersions(keep=2)
    resident.add(a)
    sha = a.version.sha256
    for ref in (sha, sha[:12], sha[:20].upper(), a.version.tag, f"@{sha[:12]}"):
        assert resident.find(ref) is a, ref
    assert a.version.tag == f"actor_a.pt@{sha[:12]}"


def test_a_version_that_is_not_resident_is_not_found():
    """An unknown prefix, or the right digits with another checkpoint's name, find nothing."""
    a = live_model(seeded_actor(0), "actor_a.pt")
    resident = ResidentVersions(keep=2)
    resident.add(a)
    other = ("1" if a.version.sha256[0] == "0" else "0") * 12
    assert resident.find(other) is None
    assert resident.find(f"actor_b.pt@{a.version.sha256[:12]}") is None


@pytest.mark.parametrize("ref", ["", "abc", "a" * 11, "g" * 12, "actor.pt@xyz", "a" * 65])
def test_a_malformed_version_reference_is_refused_with_the_accepted_forms(ref):
    """Fewer than 12 hex digits, or anything but hex, is a mistake the caller is told about."""
    with pytest.raises(ValueError, match="a prefix of 12 or more hex digits"):
        parse_version_ref(ref)
    with pytest.raises(ValueError):
        ResidentVersions().find(ref)


def test_the_version_live_longest_ago_is_evicted_first_and_the_live_one_never():
    """keep=2: adding a third evicts the first; the newest (live) one always stays."""
    a, b, c = (live_model(seeded_actor(i), f"actor_{n}.pt") for i, n in enumerate("abc"))
    resident = ResidentVersions(keep=2)
    assert resident.add(a) == []
    assert resident.add(b) == []
    assert resident.add(c) == [a]
    assert resident.versions() == [b, c]
    assert resident.find(a.version.sha256) is None
    assert resident.tags() == [c.version.tag, b.version.tag]
    only_live = ResidentVersions(keep=1)
    only_live.add(a)
    assert only_live.add(b) == [a] and only_live.versions() == [b]


def test_going_back_to_a_resident_version_makes_it_the_newest_again():
    """A rollback to b re-adds it: c is then the older one, evicted by the next version."""
    a, b, c = (live_model(seeded_actor(i), f"actor_{n}.pt") for i, n in enumerate("abc"))
    resident = ResidentVersions(keep=2)
    for v in (a, b, c):
        resident.add(v)
    assert resident.previous(c.version.sha256) is b
    assert resident.add(b) == []
    assert resident.versions() == [c, b]
    assert resident.add(a) == [c]


def test_a_version_marked_bad_can_be_removed():
    """remove() drops it; previous() then skips it."""
    a, b = (live_model(seeded_actor(i), f"actor_{n}.pt") for i, n in enumerate("ab"))
    resident = ResidentVersions(keep=3)
    resident.add(a)
    resident.add(b)
    assert resident.remove(b.version.sha256) is b
    assert b.version.sha256 not in resident and len(resident) == 1
    assert resident.previous(b.version.sha256) is a
    assert resident.remove(b.version.sha256) is None


def test_memory_is_the_bytes_of_parameters_per_device_with_tied_weights_once():
    """An actor's bytes are its parameters'; a weight used twice is counted once."""
    actor = seeded_actor(0)
    assert model_bytes(actor) == {"cpu": param_bytes(actor)}

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = torch.nn.Linear(4, 4, bias=False)
            self.second = torch.nn.Linear(4, 4, bias=False)
            self.second.weight = self.first.weight
            self.register_buffer("scale", torch.ones(3))

    assert model_bytes(Tied()) == {"cpu": 16 * 4 + 3 * 4}
    assert model_bytes(object()) == {}


def test_an_exported_checkpoint_counts_its_weights_once(tmp_path, checkpoint_bytes):
    """A loaded torch.export checkpoint holds the actor's weights (lifted, shared on the CPU)."""
    path = tmp_path / "actor.pt"
    path.write_bytes(checkpoint_bytes("export", 0))
    loaded = load_checkpoint(path)
    assert model_bytes(loaded.model) == {"cpu": param_bytes(seeded_actor(0))}


def test_status_shows_each_versions_bytes_and_the_total_newest_first():
    """to_dict(): what is resident, how much memory each holds, and which one is live."""
    a = live_model(seeded_actor(0), "actor_a.pt", metadata={"step": 10})
    b = live_model(seeded_actor(1), "actor_b.pt", metadata={"step": 20})
    resident = ResidentVersions(keep=2)
    resident.add(a)
    resident.add(b)
    status = resident.to_dict(live_sha256=b.version.sha256)
    each = param_bytes(seeded_actor(0))
    assert status["keep"] == 2 and status["bytes"] == 2 * each == resident.total_bytes
    assert [(v["tag"], v["step"], v["bytes"], v["live"]) for v in status["versions"]] == [
        (b.version.tag, 20, each, True),
        (a.version.tag, 10, each, False),
    ]
    assert status["versions"][0]["bytes_by_device"] == {"cpu": each}


def test_keep_must_hold_at_least_the_live_version():
    """keep=0 would evict the live version: refused."""
    with pytest.raises(ValueError, match="at least 1"):
        ResidentVersions(keep=0)
