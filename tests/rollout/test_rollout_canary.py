"""Canary: a new version answers a fraction of requests (sticky per session), then all of them,
unless it fails on live traffic or its rewards are worse than the incumbent's."""

from __future__ import annotations

import random

import pytest
from rollout_helpers import Linear, live_model

from ckptserve.rollout.canary import Canary, CanaryConfig
from ckptserve.rollout.feedback import FeedbackStore, RequestIds

W = [0.5, -0.25, 1.0, 0.75]


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pair():
    """An incumbent and a candidate with the same policy (the canary judges behaviour on live
    traffic and rewards, not weights)."""
    return live_model(Linear(W), "actor_old.pt"), live_model(Linear(W), "actor_new.pt")


def test_a_canary_at_half_answers_about_half_of_the_requests_then_all_of_them():
    """fraction 0.5: of 1,000 requests without a session, 500 ± 5 go to the canary; after a
    clean window it is promoted and the canary no longer routes (the live version answers)."""
    clock = Clock()
    old, new = pair()
    canary: Canary = Canary(CanaryConfig(fraction=0.5, seconds=60), clock=clock)
    canary.start(new, old)
    answered = [canary.route() for _ in range(1000)]
    to_canary = sum(1 for v in answered if v is new)
    assert abs(to_canary - 500) <= 5, to_canary
    assert all(v is new or v is old for v in answered)
    clock.now += 59.9
    assert canary.poll() is None
    clock.now += 0.1
    decision = canary.poll()
    assert decision is not None and decision.action == "promote", decision
    assert (decision.canary, decision.incumbent) == (new.version.tag, old.version.tag)
    assert "clean for its 60 s window at 50%" in decision.reason
    assert canary.route() is None and canary.route("episode-1") is None


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_the_share_without_sessions_is_close_to_the_fraction_over_any_stretch(fraction):
    """Any 200 consecutive requests send the fraction, within 3 requests."""
    old, new = pair()
    canary: Canary = Canary(CanaryConfig(fraction=fraction))
    canary.start(new, old)
    for _ in range(5):
        n = sum(1 for _ in range(200) if canary.route() is new)
        assert abs(n - 200 * fraction) <= 3, (fraction, n)


def test_a_session_stays_on_one_side_for_the_whole_window():
    """Every request of a session goes to the same version; about half the sessions to each."""
    old, new = pair()
    canary: Canary = Canary(CanaryConfig(fraction=0.5))
    canary.start(new, old)
    sides = {}
    for session in (f"episode-{i}" for i in range(400)):
        seen = {canary.route(session) is new for _ in range(5)}
        assert len(seen) == 1, session
        sides[session] = seen.pop()
    on_canary = sum(sides.values())
    assert 160 <= on_canary <= 240, on_canary


def test_every_worker_sends_a_session_to_the_same_side():
    """Two canaries of the same version (two workers) agree on each session."""
    old, new = pair()
    one: Canary = Canary(CanaryConfig(fraction=0.3))
    two: Canary = Canary(CanaryConfig(fraction=0.3))
    one.start(new, old)
    two.start(new, old)
    sessions = [f"s{i}" for i in range(200)]
    assert [one.route(s) is new for s in sessions] == [two.route(s) is new for s in sessions]


def test_a_failure_on_live_traffic_rolls_the_canary_back_at_once():
    """A non-finite action from the canary ends it there: rolled back, with the reason; a
    failure of the incumbent is not the canary's."""
    old, new = pair()
    canary: Canary = Canary(CanaryConfig(fraction=0.1, seconds=60))
    canary.start(new, old)
    assert canary.failed(old.version.sha256, "non-finite action") is None
    decision = canary.failed(new.version.sha256, "non-finite action")
    assert decision is not None and decision.action == "roll_back"
    assert decision.reason == "on live traffic: non-finite action"
    assert canary.route() is None and canary.poll() is None
    assert [d.action for d in canary.history] == ["roll_back"]


def test_a_newer_candidate_replaces_the_running_canary():
    """A publish during the window: the old canary is dropped, the new one starts its window."""
    old, new = pair()
    newer = live_model(Linear(W), "actor_newer.pt")
    canary: Canary = Canary(CanaryConfig(fraction=0.5))
    canary.start(new, old)
    replaced = canary.start(newer, old)
    assert replaced is not None and replaced.action == "roll_back"
    assert "replaced by actor_newer.pt@" in replaced.reason
    assert canary.canary is newer and canary.incumbent is old


def rewarded(clock, ids, store, version, rewards):
    """Answer one request per reward with `version` and report the reward for it."""
    for reward in rewards:
        store.add(ids.issue(version.version.sha256), reward)


def reward_canary(clock):
    old, new = pair()
    ids = RequestIds(b"secret", clock=clock)
    store = FeedbackStore(ids, clock=clock)
    canary: Canary = Canary(
        CanaryConfig(fraction=0.5, seconds=60, metric="reward", min_rewards=30), clock=clock
    )
    canary.start(new, old)
    return old, new, ids, store, canary


def test_a_canary_with_worse_rewards_is_rolled_back_with_the_tests_figures():
    """Canary rewards ~N(-1, 1) against the incumbent's ~N(0, 1), 60 each (seeded): the
    one-sided U test finds them worse at 0.05, and the decision carries U, z and p."""
    clock = Clock()
    old, new, ids, store, canary = reward_canary(clock)
    rng = random.Random(7)
    rewarded(clock, ids, store, new, [rng.gauss(-1.0, 1) for _ in range(60)])
    rewarded(clock, ids, store, old, [rng.gauss(0.0, 1) for _ in range(60)])
    clock.now += 60
    decision = canary.poll(store)
    assert decision is not None and decision.action == "roll_back", decision
    assert decision.test is not None and decision.test.p < 0.05
    assert (decision.test.n_x, decision.test.n_y) == (60, 60)
    assert f"p={decision.test.p:.3g} < 0.05" in decision.reason
    assert decision.rewards is not None and decision.rewards["canary"]["count"] == 60
    assert decision.to_dict()["test"]["u"] == decision.test.u


def test_a_canary_with_equal_rewards_is_promoted():
    """The same 60 rewards on both sides, in another order: not worse, so it is promoted.
    (Two samples of one distribution would be rolled back by chance 5% of the time at 0.05:
    that is the level.)"""
    clock = Clock()
    old, new, ids, store, canary = reward_canary(clock)
    rng = random.Random(11)
    rewards = [rng.gauss(0.0, 1) for _ in range(60)]
    rewarded(clock, ids, store, new, rewards)
    rewarded(clock, ids, store, old, rng.sample(rewards, len(rewards)))
    clock.now += 60
    decision = canary.poll(store)
    assert decision is not None and decision.action == "promote", decision
    assert decision.test is not None and decision.test.p >= 0.05
    assert "rewards not worse than the incumbent's" in decision.reason


def test_rewards_from_before_the_window_do_not_count():
    """The incumbent's rewards for requests answered before the canary started are left out."""
    clock = Clock()
    old, new = pair()
    ids = RequestIds(b"secret", clock=clock)
    store = FeedbackStore(ids, clock=clock)
    rewarded(clock, ids, store, old, [100.0] * 50)  # a great past, before the canary
    clock.now += 10
    canary: Canary = Canary(
        CanaryConfig(fraction=0.5, seconds=60, metric="reward", min_rewards=20), clock=clock
    )
    canary.start(new, old)
    rewarded(clock, ids, store, new, [1.0 + i / 100 for i in range(20)])
    rewarded(clock, ids, store, old, [1.0 + i / 100 for i in range(20)])
    clock.now += 60
    decision = canary.poll(store)
    assert decision is not None and decision.action == "promote", decision
    assert decision.rewards is not None and decision.rewards["incumbent"]["count"] == 20


def test_the_canary_waits_for_enough_rewards_then_gives_up():
    """Too few rewards at the window's end: it keeps running; after `patience` windows still
    too few, it is rolled back, saying how many there were."""
    clock = Clock()
    _, new, ids, store, canary = reward_canary(clock)
    rewarded(clock, ids, store, new, [1.0] * 5)
    clock.now += 60
    assert canary.poll(store) is None and canary.canary is new
    clock.now += 9 * 60
    decision = canary.poll(store)
    assert decision is not None and decision.action == "roll_back"
    assert "not enough rewards to judge after 600 s: canary 5, incumbent 0, 30 needed" in (
        decision.reason
    )


def test_status_shows_the_running_canary_and_the_decisions():
    """to_dict(): what runs, until when, and what was decided before."""
    clock = Clock()
    old, new = pair()
    canary: Canary = Canary(CanaryConfig(fraction=0.25, seconds=30), clock=clock)
    canary.start(new, old)
    running = canary.to_dict()["running"]
    assert running == {"canary": new.version.tag, "incumbent": old.version.tag,
                       "fraction": 0.25, "started": clock.now, "ends": clock.now + 30,
                       "metric": "none"}  # fmt: skip
    clock.now += 30
    canary.poll()
    status = canary.to_dict()
    assert status["running"] is None and status["decisions"][0]["action"] == "promote"


@pytest.mark.parametrize(
    "kwargs",
    [{"fraction": 1.5}, {"fraction": 0.1, "seconds": 0}, {"fraction": 0.1, "metric": "loss"}],
)
def test_a_canary_configuration_out_of_range_is_refused(kwargs):
    """A fraction outside 0-1, an empty window or an unknown metric is a mistake."""
    with pytest.raises(ValueError):
        CanaryConfig(**kwargs)


def test_no_canary_starts_when_the_fraction_is_zero():
    """--canary-fraction 0 (the default): candidates are swapped in directly."""
    old, new = pair()
    with pytest.raises(ValueError, match="canaries are off"):
        Canary(CanaryConfig()).start(new, old)


def test_a_session_keeps_its_side_after_the_session_cache_is_cleared():
    """The remembered sides are a bounded cache; the keyed hash decides the same way again."""
    old, new = pair()
    canary: Canary = Canary(CanaryConfig(fraction=0.5))
    canary.start(new, old)
    first = canary.route("episode-0")
    for i in range(70_000):
        canary.route(f"other-{i}")
    assert canary.route("episode-0") is first
