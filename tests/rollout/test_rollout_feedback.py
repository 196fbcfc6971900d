"""Outcomes: request ids name the version that answered and are signed; rewards for them are
attributed once, in bounded memory."""

from __future__ import annotations

import hashlib

import pytest

from ckptserve.rollout.feedback import FeedbackRefused, FeedbackStore, RequestIds

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_request_id_names_the_version_and_when_it_answered():
    """read() gives back the version's 12 hex digits and the issue time (ms resolution)."""
    clock = Clock(1_234_567.891)
    ids = RequestIds(b"secret", clock=clock)
    issued = ids.read(ids.issue(SHA_A))
    assert issued.version == SHA_A[:12]
    assert issued.issued_at == pytest.approx(1_234_567.891, abs=1e-3)


def test_every_id_is_unique_and_readable():
    """Ids of the same version at the same instant still differ, across blocks of 256."""
    ids = RequestIds(b"secret", clock=Clock())
    issued = [ids.issue(SHA_A) for _ in range(1000)]
    assert len(set(issued)) == 1000
    assert {ids.read(i).version for i in issued} == {SHA_A[:12]}


def test_another_worker_with_the_same_secret_reads_the_id_and_another_secret_does_not():
    """Replicas sharing the secret attribute each other's ids; others refuse them."""
    issued = RequestIds(b"shared").issue(SHA_A)
    assert RequestIds(b"shared").read(issued).version == SHA_A[:12]
    with pytest.raises(FeedbackRefused) as info:
        RequestIds(b"other").read(issued)
    assert info.value.reason == "unknown_id"


@pytest.mark.parametrize(
    "change", ["version", "time", "block", "slot", "tag", "junk", "long", "type"]
)
def test_an_id_that_was_never_issued_is_refused(change):
    """Altering any part of an id (another slot of the same block included: its tag cannot be
    derived from the tags handed out), or sending something else, is refused as unknown."""
    ids = RequestIds(b"secret")
    good = ids.issue(SHA_A)
    version, issued, block, slot, tag = good.split(".")
    assert ids.read(good).version == version
    forged: object = {
        "version": ".".join([SHA_B[:12], issued, block, slot, tag]),
        "time": ".".join([version, f"{int(issued, 16) + 1:x}", block, slot, tag]),
        "block": ".".join([version, issued, block + "0", slot, tag]),
        "slot": ".".join([version, issued, block, "01", tag]),
        "tag": ".".join([version, issued, block, slot, "0" * 16]),
        "junk": "not-an-id",
        "long": good + "0" * 200,
        "type": 12345,
    }[change]
    with pytest.raises(FeedbackRefused, match="not a request id this server issued"):
        ids.read(forged)


def test_an_ids_time_is_at_most_a_second_before_the_response():
    """Ids come in blocks of one issue time; a block is used for one second at most."""
    clock = Clock(500.0)
    ids = RequestIds(b"secret", clock=clock)
    ids.issue(SHA_A)
    clock.now = 500.9
    assert ids.read(ids.issue(SHA_A)).issued_at == 500.0
    clock.now = 501.5
    assert ids.read(ids.issue(SHA_A)).issued_at == 501.5
    assert ids.read(ids.issue(SHA_B)).version == SHA_B[:12]  # another version: its own block


def test_a_reward_is_attributed_to_the_version_that_answered():
    """Count and mean per version: the metrics' figures."""
    ids = RequestIds(b"secret")
    store = FeedbackStore(ids)
    for reward in (1.0, 2.0, 6.0):
        store.add(ids.issue(SHA_A), reward)
    store.add(ids.issue(SHA_B), -1)
    stats = store.stats()
    assert (stats[SHA_A[:12]].count, stats[SHA_A[:12]].mean) == (3, 3.0)
    assert (stats[SHA_B[:12]].count, stats[SHA_B[:12]].mean) == (1, -1.0)


def test_a_request_rewarded_twice_counts_once_and_the_refusal_is_counted():
    """The second reward for the same id is refused as a duplicate."""
    ids = RequestIds(b"secret")
    store = FeedbackStore(ids)
    request_id = ids.issue(SHA_A)
    store.add(request_id, 1.0)
    with pytest.raises(FeedbackRefused) as info:
        store.add(request_id, 5.0)
    assert info.value.reason == "duplicate"
    assert store.stats()[SHA_A[:12]].count == 1
    assert store.refused["duplicate"] == 1


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), True, "1.0", None])
def test_a_reward_that_is_not_a_finite_number_is_refused(reward):
    """NaN, infinity, booleans and strings are no reward."""
    ids = RequestIds(b"secret")
    store = FeedbackStore(ids)
    with pytest.raises(FeedbackRefused) as info:
        store.add(ids.issue(SHA_A), reward)
    assert info.value.reason == "bad_reward" and store.refused["bad_reward"] == 1
    assert store.stats() == {}


def test_refused_ids_are_counted_by_reason():
    """Unknown and expired ids are counted; status shows them."""
    clock = Clock()
    ids = RequestIds(b"secret", clock=clock)
    store = FeedbackStore(ids, max_age=60, clock=clock)
    old = ids.issue(SHA_A)
    clock.now += 61
    for request_id in (old, "forged"):
        with pytest.raises(FeedbackRefused):
            store.add(request_id, 1.0)
    assert store.to_dict()["refused"] == {
        "unknown_id": 1, "expired": 1, "duplicate": 0, "bad_reward": 0
    }  # fmt: skip


def test_memory_is_bounded_however_many_rewards_arrive():
    """capacity=10, versions=2: at most 10 rewards and 10 rewarded ids kept, stats for the 2
    versions rewarded last."""
    ids = RequestIds(b"secret")
    store = FeedbackStore(ids, capacity=10, versions=2)
    shas = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    for i in range(100):
        store.add(ids.issue(shas[i // 20]), float(i))
    status = store.to_dict()
    assert status["kept"] == 10 and len(store._seen) == 10
    assert sorted(status["versions"]) == sorted(s[:12] for s in shas[3:])
    assert status["versions"][shas[4][:12]] == {"count": 20, "mean": sum(range(80, 100)) / 20}


def test_rewards_are_kept_with_the_time_their_request_was_answered():
    """The canary asks for one version's rewards over its window, by issue time."""
    clock = Clock(100.0)
    ids = RequestIds(b"secret", clock=clock)
    store = FeedbackStore(ids, clock=clock)
    early = ids.issue(SHA_A)
    clock.now = 200.0
    late = ids.issue(SHA_A)
    other = ids.issue(SHA_B)
    store.add(late, 2.0)
    store.add(early, 1.0)
    store.add(other, 9.0)
    assert store.rewards(SHA_A, since=150.0) == [2.0]
    assert sorted(store.rewards(SHA_A, since=0.0)) == [1.0, 2.0]
    assert store.rewards(SHA_A, since=0.0, until=150.0) == [1.0]


def test_an_empty_secret_is_refused():
    """An empty key would sign nothing."""
    with pytest.raises(ValueError, match="empty"):
        RequestIds(b"")
