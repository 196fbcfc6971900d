"""The registry judges a candidate before it swaps it in (bad marks, step order, shadow
comparison, guard), keeps the last good versions resident, and rolls back to one at once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ckptserve import publish
from ckptserve.rollout import BadMarks, Guard, Judge, StateBuffer
from policies import seeded_actor


class NanAwayFromZero(torch.nn.Module):
    """The actor's action, but NaN where the state's first value is above 0.5: the probe's zero
    state passes, real states do not."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        action = self.inner(state, deterministic)[0]
        return torch.where(state[:, :1] > 0.5, torch.full_like(action, float("nan")), action)


def flipped(seed: int) -> torch.nn.Module:
    """The seeded actor with its output negated: tanh(-x) = -tanh(x), every sign flipped."""
    actor = seeded_actor(seed)
    with torch.no_grad():
        actor.mu.weight.neg_()
        actor.mu.bias.neg_()
    return actor


def put(directory: Path, model: torch.nn.Module, **metadata: object) -> Path:
    return publish(model, directory, metadata=metadata, format="torchscript")


def real_states(n: int = 64) -> StateBuffer:
    """A buffer of n states in [-1, 1], as requests would leave them."""
    buffer = StateBuffer(256)
    for i in range(n):
        buffer.record([[math.sin(i * 0.37 + j) for j in range(4)]])
    return buffer


def test_a_step_regression_is_refused_and_the_live_model_stays(tmp_path, make_registry):
    """Run a at step 50,000 is live; run a at step 1,000 is refused as a regression (rejected,
    with both steps); run b at step 0 starts a new run and goes live."""
    put(tmp_path, seeded_actor(0), run_id="a", step=50_000)
    registry = make_registry(tmp_path)
    registry.check()
    put(tmp_path, seeded_actor(1), run_id="a", step=1_000)
    attempt = registry.check()
    assert attempt is not None and attempt.result == "rejected", attempt
    assert "step 1,000 is older than live step 50,000 (run 'a')" in (attempt.reason or "")
    assert registry.version.metadata["step"] == 50_000
    put(tmp_path, seeded_actor(2), run_id="b", step=0)
    attempt = registry.check()
    assert attempt is not None and attempt.result == "ok", attempt
    assert registry.version.metadata["run_id"] == "b"
    assert registry.judge.last is not None and "new run 'b'" in (registry.judge.last.note or "")


def test_a_forced_reload_or_a_pin_goes_back_on_purpose(tmp_path, make_registry):
    """force=True takes the regression through; so does pinning the older checkpoint."""
    old = put(tmp_path, seeded_actor(0), run_id="a", step=10)
    put(tmp_path, seeded_actor(1), run_id="a", step=20)
    registry = make_registry(tmp_path)
    registry.check()
    registry.pin(old)
    assert registry.version.metadata["step"] == 10
    registry.unpin()
    assert registry.version.metadata["step"] == 20
    put(tmp_path, seeded_actor(2), run_id="a", step=5)
    assert registry.check().result == "rejected"
    attempt = registry.check(force=True)
    assert attempt is not None and attempt.result == "ok" and attempt.forced
    assert registry.version.metadata["step"] == 5
    assert registry.judge.last is not None and registry.judge.last.forced


def test_a_sign_flipping_candidate_is_refused_under_the_guard(tmp_path, make_registry):
    """--max-sign-flips 0.2 with buffered states: the flipped policy is rejected, saying by how
    much; the live one keeps answering; status shows the verdict and its figures."""
    put(tmp_path, seeded_actor(0))
    judge = Judge(guard=Guard(max_sign_flips=0.2), buffer=real_states())
    registry = make_registry(tmp_path, judge=judge)
    registry.check()
    live = registry.current
    put(tmp_path, flipped(0))
    attempt = registry.check()
    assert attempt is not None and attempt.result == "rejected", attempt
    assert "shadow comparison: actions change sign on" in (attempt.reason or "")
    assert "over --max-sign-flips 0.2 by" in (attempt.reason or "")
    assert registry.current is live
    verdict = registry.status()["judged"][-1]
    assert not verdict["accepted"] and verdict["divergence"]["sign_flips"] > 0.2, verdict


def test_a_sign_flipping_candidate_is_recorded_without_the_guard(tmp_path, make_registry):
    """No limits: the same candidate goes live, and its divergence is in status."""
    put(tmp_path, seeded_actor(0))
    registry = make_registry(tmp_path, judge=Judge(buffer=real_states()))
    registry.check()
    put(tmp_path, flipped(0))
    assert registry.check().result == "ok"
    verdict = registry.status()["judged"][-1]
    assert verdict["accepted"] and verdict["divergence"]["flipped_states"] > 0, verdict


def test_a_candidate_nan_only_away_from_zero_is_refused_by_the_shadow_check(
    tmp_path, make_registry
):
    """The probe's zero state passes it; buffered states with a first value above 0.5 do not."""
    put(tmp_path, seeded_actor(0))
    buffer = StateBuffer(8)
    for first in (0.9, 0.1, 0.7, -0.3):
        buffer.record([[first, 0.2, 0.3, 0.4]])
    registry = make_registry(tmp_path, judge=Judge(buffer=buffer))
    registry.check()
    put(tmp_path, NanAwayFromZero(seeded_actor(1)))
    attempt = registry.check()
    assert attempt is not None and attempt.result == "rejected", attempt
    assert "non-finite actions (NaN or infinite) on 2 of 4 buffered states" in (
        attempt.reason or ""
    )


def test_a_pinned_version_stays_resident_after_a_swap_until_it_is_evicted(tmp_path, make_registry):
    """keep_versions=2: after one swap the old version is still found by its tag (a client can
    finish its episode on it); after the next, it is gone."""
    put(tmp_path, seeded_actor(0))
    registry = make_registry(tmp_path, keep_versions=2)
    registry.check()
    first = registry.current
    put(tmp_path, seeded_actor(1))
    registry.check()
    assert registry.resident.find(first.version.tag) is first
    assert registry.current is not first
    put(tmp_path, seeded_actor(2))
    registry.check()
    assert registry.resident.find(first.version.tag) is None
    status = registry.status()["resident"]
    assert [v["live"] for v in status["versions"]] == [True, False]
    assert status["bytes"] == sum(v["bytes"] for v in status["versions"]) > 0


def test_roll_back_serves_the_previous_version_at_once_and_the_mark_survives_a_restart(
    tmp_path, make_registry
):
    """The live version misbehaves on live traffic: roll_back goes back to the previous resident
    one and marks it bad; it is refused when seen again, and after a restart the start-up
    fallback serves the earlier checkpoint instead of it."""
    models, state = tmp_path / "models", tmp_path / "state"
    put(models, seeded_actor(0))
    registry = make_registry(models, judge=Judge(marks=BadMarks(state, "actor", model_dir=models)))
    registry.check()
    good = registry.current
    put(models, seeded_actor(1))
    registry.check()
    bad = registry.current
    assert registry.roll_back(good.version.sha256, "not live") is None  # not the live one
    assert registry.roll_back(bad.version.sha256, "NaN actions on live traffic") is good
    assert registry.current is good
    assert bad.version.sha256 not in registry.resident
    assert registry.roll_back(bad.version.sha256, "again") is None  # already done
    attempt = registry.check(reload=True)  # the bad bytes are still what the source names
    assert attempt is not None and attempt.result == "rejected", attempt
    assert "marked bad" in (attempt.reason or "")

    restarted = make_registry(models, judge=Judge(marks=BadMarks(state, "actor")))
    restarted.check()
    assert restarted.current is not None and restarted.version.sha256 == good.version.sha256
    assert restarted.fallback is not None


def test_roll_back_needs_another_resident_version(tmp_path, make_registry):
    """keep_versions=1, or the first version: nothing to go back to, the live one stays."""
    put(tmp_path, seeded_actor(0))
    registry = make_registry(tmp_path, keep_versions=1)
    registry.check()
    live = registry.current
    assert registry.roll_back(live.version.sha256, "NaN") is None
    assert registry.current is live


@pytest.mark.parametrize("swap", ["sync", "background"])
def test_ordering_applies_in_both_swap_modes(tmp_path, make_registry, swap):
    """The judge sits in the one load path both swap modes use."""
    put(tmp_path, seeded_actor(0), run_id="a", step=2)
    registry = make_registry(tmp_path, swap=swap)
    registry.get()
    assert registry.wait_idle(30)
    put(tmp_path, seeded_actor(1), run_id="a", step=1)
    registry.get()
    assert registry.wait_idle(30)
    registry.get()
    assert registry.version.metadata["step"] == 2
    assert registry.history[-1].result == "rejected"


def test_a_registry_with_a_state_dir_keeps_its_marks_there(tmp_path, make_registry):
    """options.state_dir (--state-dir): the default judge marks and refuses there; nothing is
    written before the first mark."""
    models, state = tmp_path / "models", tmp_path / "state"
    put(models, seeded_actor(0))
    registry = make_registry(models, state_dir=str(state))
    assert registry.judge.marks is not None and not state.exists()
    registry.check()
    put(models, seeded_actor(1))
    registry.check()
    bad = registry.current
    registry.roll_back(bad.version.sha256, "NaN actions on live traffic")
    assert BadMarks(state, registry.name).is_bad(bad.version.sha256)


def test_the_registry_builds_its_judge_from_the_options(tmp_path, make_registry):
    """--max-divergence, --max-sign-flips, --shadow-states, --sign-dead-band, --state-dir and
    --keep-versions reach the judge and the resident versions (no keyword arguments needed)."""
    models, state = tmp_path / "models", tmp_path / "state"
    put(models, seeded_actor(0))
    registry = make_registry(
        models, max_divergence=0.5, max_sign_flips=0.2, shadow_states=8, sign_dead_band=0.1,
        state_dir=str(state), keep_versions=3,
    )  # fmt: skip
    judge = registry.judge
    assert (judge.guard.max_divergence, judge.guard.max_sign_flips) == (0.5, 0.2)
    assert judge.buffer is not None and judge.buffer.size == 8 and judge.dead_band == 0.1
    assert judge.marks is not None and judge.marks.directory == state
    assert registry.resident.keep == 3
    off = make_registry(models, shadow_states=0)
    assert off.judge.buffer is None and off.judge.marks is None


def test_an_empty_shadow_buffer_records_no_divergence(tmp_path, make_registry):
    """Before any request was recorded there is nothing to compare on: the verdict carries no
    figures (rather than figures over zero states)."""
    put(tmp_path, seeded_actor(0))
    registry = make_registry(tmp_path)
    registry.check()
    put(tmp_path, flipped(0))
    assert registry.check().result == "ok"
    assert registry.judge.last is not None and registry.judge.last.divergence is None


def wait_until(check, timeout: float = 20.0, what: str = "a condition"):
    """Poll `check` until it returns something true, or fail after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_candidate_that_passed_the_judge_goes_to_the_canary_then_live(tmp_path, make_registry):
    """--canary-fraction 0.5: the new version answers a share first (registry.current stays the
    incumbent, the default handle); when its window ends cleanly, poll() promotes it."""
    put(tmp_path, seeded_actor(0))
    registry = make_registry(tmp_path, canary_fraction=0.5, canary_seconds=0.2)
    registry.check()
    first = registry.current
    assert registry.rollout.poll() is None  # nothing runs
    put(tmp_path, seeded_actor(1))
    attempt = registry.check()
    assert attempt is not None and attempt.result == "ok", attempt
    canary = registry.rollout.canary
    assert registry.current is first and canary.canary is not None and canary.incumbent is first
    assert registry.rollout.find(canary.canary.version.tag) is canary.canary
    assert registry.status()["canary"]["running"]["fraction"] == 0.5
    decision = wait_until(registry.rollout.poll, what="the canary's window to end")
    assert decision.action == "promote" and "clean for its 0.2 s window" in decision.reason
    assert registry.current is decision.subject and registry.current is not first
    assert registry.resident.versions()[-1] is registry.current
    assert registry.status()["canary"]["decisions"][-1]["action"] == "promote"


def test_a_canary_that_misbehaves_is_rolled_back_and_marked_bad(tmp_path, make_registry):
    """misbehaved(canary) ends the canary at once; the incumbent stays live; the canary's
    version is marked bad in --state-dir, so the same bytes are refused when seen again."""
    models, state = tmp_path / "models", tmp_path / "state"
    put(models, seeded_actor(0))
    registry = make_registry(models, canary_fraction=0.1, state_dir=str(state))
    registry.check()
    incumbent = registry.current
    put(models, seeded_actor(1))
    registry.check()
    canary = registry.rollout.canary.canary
    assert registry.rollout.misbehaved(canary, "NaN actions on live traffic") is incumbent
    assert registry.rollout.canary.canary is None and registry.current is incumbent
    assert BadMarks(state, registry.name).is_bad(canary.version.sha256)
    attempt = registry.check(reload=True)
    assert attempt is not None and attempt.result == "rejected" and "marked bad" in attempt.reason


def test_a_forced_reload_goes_live_without_a_canary_and_ends_the_running_one(
    tmp_path, make_registry
):
    """An admin's forced reload (or pin) is going live on purpose: no canary, and a canary that
    runs is stopped (not marked bad)."""
    models, state = tmp_path / "models", tmp_path / "state"
    put(models, seeded_actor(0))
    registry = make_registry(models, canary_fraction=0.5, state_dir=str(state))
    registry.check()
    put(models, seeded_actor(1))
    registry.check()
    canary = registry.rollout.canary.canary
    assert canary is not None
    put(models, seeded_actor(2))
    assert registry.check(force=True).result == "ok"
    assert registry.rollout.canary.canary is None
    assert registry.current.version.sha256 != canary.version.sha256
    assert not BadMarks(state, registry.name).is_bad(canary.version.sha256)
    decision = registry.rollout.canary.history[-1]
    assert decision.action == "roll_back" and "went live without a canary" in decision.reason


@pytest.mark.parametrize(("canary_reward", "promoted"), [(0.0, False), (1.0, True)],
                         ids=["worse", "equal"])  # fmt: skip
def test_with_the_reward_metric_a_worse_canary_is_rolled_back_and_an_equal_one_promoted(
    tmp_path, make_registry, canary_reward, promoted
):
    """--canary-metric reward: at the window's end both sides have 30 rewards; rewards of 0
    against the incumbent's 1 roll it back (with the test's figures), equal ones promote it."""
    from ckptserve.rollout import FeedbackStore, RequestIds

    put(tmp_path, seeded_actor(0))
    registry = make_registry(tmp_path, canary_fraction=0.5, canary_seconds=0.3,
                             canary_metric="reward")  # fmt: skip
    registry.check()
    incumbent = registry.current
    put(tmp_path, seeded_actor(1))
    registry.check()
    canary = registry.rollout.canary.canary
    ids = RequestIds(b"k")
    store = FeedbackStore(ids)
    for i in range(30):
        store.add(ids.issue(canary.version.sha256), canary_reward + (i % 3) * 0.01)
        store.add(ids.issue(incumbent.version.sha256), 1.0 + (i % 3) * 0.01)
    decision = wait_until(lambda: registry.rollout.poll(store), what="the canary's judgement")
    assert (decision.action == "promote") is promoted, decision
    assert decision.test is not None and decision.rewards["canary"]["count"] == 30
    if promoted:
        assert registry.current is canary
    else:
        assert registry.current is incumbent and "rewards worse" in decision.reason


def test_each_judged_attempt_carries_its_shadow_figures_in_history_and_the_load_line(
    tmp_path, make_registry, caplog
):
    """The shadow comparison's figures are in the load attempt (status history, the status
    page's timeline) and its log line, for a candidate refused and one accepted alike."""
    put(tmp_path, seeded_actor(0))
    registry = make_registry(tmp_path, judge=Judge(guard=Guard(max_sign_flips=0.2),
                                                   buffer=real_states()))  # fmt: skip
    registry.check()
    assert registry.history[-1].divergence is None  # nothing live to compare with
    put(tmp_path, flipped(0))
    with caplog.at_level("INFO", logger="ckptserve.registry"):
        rejected = registry.check()
    assert rejected.result == "rejected" and rejected.divergence["sign_flips"] > 0.2, rejected
    assert registry.status()["history"][-1]["divergence"] == rejected.divergence
    line = next(r for r in caplog.records if r.getMessage().startswith("load rejected"))
    assert "; shadow over 64 buffered states: mean |Δaction|" in line.getMessage(), line
    assert line.divergence == rejected.divergence
    nudged = seeded_actor(0)
    with torch.no_grad():
        nudged.mu.bias.add_(0.001)  # the same policy, nearly: passes the guard
    put(tmp_path, nudged)
    accepted = registry.check()
    assert accepted.result == "ok" and accepted.divergence["states"] == 64, accepted
