"""The guard and the judge: a candidate too far from the live policy on real states is refused
like a failed probe, unless an admin forces it through; without limits it is only recorded."""

from __future__ import annotations

import logging
import math

import pytest
from rollout_helpers import Linear, NanAwayFromZero, live_model

from ckptserve import ValidationError
from ckptserve.rollout.guard import Guard
from ckptserve.rollout.judging import Judge
from ckptserve.rollout.marks import BadMarks
from ckptserve.rollout.shadow import StateBuffer

W = [0.5, -0.25, 1.0, 0.75]


def filled_buffer(n: int = 64) -> StateBuffer:
    """A buffer holding n real-looking states in [-1, 1]."""
    buffer = StateBuffer(256)
    for i in range(n):
        buffer.record([[math.sin(i * 0.37 + j) for j in range(4)]])
    return buffer


def test_a_sign_flipping_candidate_is_refused_under_the_guard_with_by_how_much():
    """--max-sign-flips 0.2: a policy that turned from long to short is refused, saying the
    share, the limit and the difference; the live model stays (the judge raises)."""
    live = live_model(Linear(W), "actor_1.pt", metadata={"step": 1})
    flipped = live_model(Linear(W, scale=-1.0), "actor_2.pt", metadata={"step": 2})
    judge = Judge(guard=Guard(max_sign_flips=0.2), buffer=filled_buffer())
    with pytest.raises(ValidationError) as info:
        judge.judge(flipped, live)
    verdict = judge.last
    assert verdict is not None and not verdict.accepted and verdict.divergence is not None
    share = verdict.divergence.sign_flips
    assert share > 0.8, verdict
    message = str(info.value)
    assert f"actions change sign on {share:.1%} of the compared states" in message
    assert f"over --max-sign-flips 0.2 by {(share - 0.2) * 100:.1f} points" in message


def test_a_sign_flipping_candidate_is_recorded_but_accepted_without_the_guard():
    """No limits configured: the same candidate passes, and its divergence is recorded."""
    live = live_model(Linear(W), "actor_1.pt")
    flipped = live_model(Linear(W, scale=-1.0), "actor_2.pt")
    judge = Judge(buffer=filled_buffer())
    verdict = judge.judge(flipped, live)
    assert verdict.accepted and not verdict.forced and verdict.reason is None
    assert verdict.divergence is not None and verdict.divergence.sign_flips > 0.8
    assert list(judge.history) == [verdict]


def test_a_candidate_beyond_max_divergence_is_refused_and_one_within_passes():
    """--max-divergence compares the mean absolute action difference; equal to it passes."""
    live = live_model(Linear(W), "actor_1.pt")
    nudged = live_model(Linear(W, scale=1.1), "actor_2.pt")
    judge = Judge(buffer=filled_buffer())
    measured = judge.judge(nudged, live).divergence
    assert measured is not None and measured.mean_abs is not None and measured.mean_abs > 0
    mean = measured.mean_abs
    assert Judge(guard=Guard(max_divergence=mean), buffer=filled_buffer()).judge(nudged, live)
    with pytest.raises(ValidationError, match=r"is over --max-divergence 0\.001 by "):
        Judge(guard=Guard(max_divergence=0.001), buffer=filled_buffer()).judge(nudged, live)


def test_a_candidate_nan_only_away_from_zero_is_refused_by_the_shadow_check():
    """The probe's zero state passes; non-finite actions on buffered states refuse it, with no
    limit configured."""
    live = live_model(Linear(W), "actor_1.pt")
    sick = live_model(NanAwayFromZero(W), "actor_2.pt")
    buffer = StateBuffer(16)
    for first in (0.9, 0.1, 0.2, 0.95):
        buffer.record([[first, 0.0, 0.0, 0.0]])
    with pytest.raises(ValidationError, match=r"non-finite actions \(NaN or infinite\) on 2 of 4"
                                              r" buffered states \(50\.0%\)"):  # fmt: skip
        Judge(buffer=buffer).judge(sick, live)


def test_force_takes_a_refused_candidate_through_and_says_what_it_skipped(caplog):
    """A forced reload passes the guard (and the order), logged as an audit line; the figures
    are still recorded."""
    live = live_model(Linear(W), "actor_1.pt", metadata={"run_id": "a", "step": 9})
    flipped = live_model(Linear(W, scale=-1.0), "actor_2.pt", metadata={"run_id": "a", "step": 1})
    judge = Judge(guard=Guard(max_sign_flips=0.1), buffer=filled_buffer())
    with caplog.at_level(logging.WARNING, logger="ckptserve.rollout"):
        verdict = judge.judge(flipped, live, force=True)
    assert verdict.accepted and verdict.forced
    assert verdict.reason is not None
    assert "step 1 is older than live step 9" in verdict.reason
    assert "--max-sign-flips 0.1" in verdict.reason
    assert verdict.divergence is not None and verdict.divergence.sign_flips > 0.8
    assert [r.audit for r in caplog.records] == ["force"]  # type: ignore[attr-defined]


def test_a_step_regression_is_refused_and_a_new_run_accepted_with_a_log_line(caplog):
    """Same run, lower step: refused. Another run at step 0: accepted, and the log says so."""
    live = live_model(Linear(W), "actor_1.pt", metadata={"run_id": "a", "step": 50_000})
    old = live_model(Linear(W), "actor_0.pt", metadata={"run_id": "a", "step": 1_000})
    fresh = live_model(Linear(W), "actor_2.pt", metadata={"run_id": "b", "step": 0})
    judge = Judge()
    with pytest.raises(ValidationError, match="step 1,000 is older than live step 50,000"):
        judge.judge(old, live)
    with caplog.at_level(logging.INFO, logger="ckptserve.rollout"):
        verdict = judge.judge(fresh, live)
    assert verdict.accepted and verdict.note is not None and "new run 'b'" in verdict.note
    assert any("new run 'b'" in r.getMessage() for r in caplog.records)
    assert Judge(ordered=False).judge(old, live).accepted


def test_nothing_live_or_no_buffer_means_no_comparison():
    """The first model, or --shadow-states 0: judged by order and marks only."""
    candidate = live_model(NanAwayFromZero(W), "actor_1.pt")
    assert Judge(buffer=filled_buffer()).judge(candidate, None).divergence is None
    live = live_model(Linear(W), "actor_0.pt")
    assert Judge(buffer=StateBuffer(0)).judge(candidate, live).divergence is None
    assert Judge().judge(candidate, live).divergence is None


def test_a_version_marked_bad_is_refused_unless_forced(tmp_path):
    """The marks keep a bad version out: the watch does not load it again."""
    marks = BadMarks(tmp_path / "state", "actor")
    bad = live_model(Linear(W), "actor_7.pt")
    marks.mark(bad.version.sha256, checkpoint="actor_7.pt", reason="NaN actions on live traffic")
    judge = Judge(marks=marks)
    with pytest.raises(ValidationError, match=r"marked bad at .*: NaN actions on live traffic"):
        judge.judge(bad, None)
    assert judge.judge(bad, None, force=True).forced


def test_a_candidate_that_fails_on_buffered_states_is_refused():
    """An exception on real states is a refusal, like a probe that fails."""

    class Picky(Linear):
        def forward(self, state, deterministic=True):  # type: ignore[no-untyped-def]
            if state.shape[0] > 2:
                raise RuntimeError("batch too large")
            return super().forward(state)

    live = live_model(Linear(W), "actor_1.pt")
    with pytest.raises(ValidationError, match="candidate fails on 64 buffered states"):
        Judge(buffer=filled_buffer()).judge(live_model(Picky(W), "actor_2.pt"), live)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_divergence": -1.0}, "--max-divergence"),
        ({"max_divergence": math.inf}, "--max-divergence"),
        ({"max_sign_flips": 1.5}, "between 0 and 1"),
    ],
)
def test_limits_out_of_range_are_refused_when_configured(kwargs, message):
    """A negative divergence or a share outside 0-1 is a configuration mistake."""
    with pytest.raises(ValueError, match=message):
        Guard(**kwargs)
