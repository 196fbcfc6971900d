"""Ordered versions: within a run steps only go forward; a new run starts a new sequence."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from ckptserve import ValidationError, publish
from ckptserve.rollout.ordering import (
    Position,
    check_order,
    current_run_id,
    run_id_for,
    versions_behind,
)
from policies import seeded_actor


def test_step_regression_in_the_same_run_is_refused_with_both_steps():
    """A candidate from the live run with a lower step is refused, naming both steps."""
    with pytest.raises(ValidationError) as info:
        check_order({"run_id": "a", "step": 1_000}, {"run_id": "a", "step": 50_000})
    assert "step 1,000 is older than live step 50,000 (run 'a')" in str(info.value)


def test_a_new_run_is_accepted_and_says_so():
    """A candidate from another run starts a new sequence: accepted, with a note for the log."""
    note = check_order({"run_id": "b", "step": 0}, {"run_id": "a", "step": 50_000})
    assert note is not None
    assert "new run 'b' at step 0" in note and "'a' was at step 50,000" in note


@pytest.mark.parametrize(
    ("candidate", "live"),
    [
        ({"run_id": "a", "step": 50_001}, {"run_id": "a", "step": 50_000}),  # forward
        ({"run_id": "a", "step": 50_000}, {"run_id": "a", "step": 50_000}),  # same step
        ({"run_id": "a"}, {"run_id": "a", "step": 50_000}),  # candidate has no step
        ({"run_id": "a", "step": 3}, {"run_id": "a"}),  # live has no step
        ({"run_id": "a", "step": True}, {"run_id": "a", "step": 5}),  # a bool is no step
        ({"run_id": "a", "step": 2.5}, {"run_id": "a", "step": 5}),  # nor is a fraction
    ],
)
def test_nothing_is_refused_or_noted_when_the_order_is_forward_or_unknown(candidate, live):
    """Later or equal steps pass silently, and so does anything without two steps to compare."""
    assert check_order(candidate, live) is None


def test_nothing_live_orders_nothing():
    """The first checkpoint is never a regression."""
    assert check_order({"run_id": "a", "step": 0}, None) is None


def test_checkpoints_without_a_run_id_are_one_run():
    """Without run ids, steps of old checkpoints are still ordered among themselves."""
    with pytest.raises(ValidationError, match="step 10 is older than live step 20"):
        check_order({"step": 10}, {"step": 20})
    assert check_order({"step": 10, "run_id": "new"}, {"step": 20}) is not None


def test_position_reads_iso_and_numeric_publication_times():
    """`created_at` may be publish()'s ISO time or seconds since the epoch."""
    iso = Position.of({"created_at": "2026-04-12T14:30:22+00:00", "step": 7.0, "run_id": 3})
    when = datetime(2026, 4, 12, 14, 30, 22, tzinfo=timezone.utc).timestamp()
    assert iso == Position(run_id="3", step=7, created_at=when)
    assert Position.of({"created_at": 12.5}).created_at == 12.5
    assert Position.of({"created_at": "yesterday"}).created_at is None


def test_versions_behind_counts_later_steps_of_the_run_and_later_runs():
    """Live at step 2 of run a: steps 3 and 4 of run a, and run b published later, are ahead."""
    live = {"run_id": "a", "step": 2, "created_at": 100.0}
    published = [
        {"run_id": "a", "step": 1, "created_at": 90.0},
        live,
        {"run_id": "a", "step": 3, "created_at": 110.0},
        {"run_id": "a", "step": 4, "created_at": 120.0},
        {"run_id": "b", "step": 0, "created_at": 130.0},
        {"run_id": "old", "step": 900, "created_at": 10.0},  # another run, published earlier
        {"created_at": 140.0},  # no run, no step: published later
        {},  # nothing to tell: not counted
    ]
    assert versions_behind(live, published) == 4
    assert versions_behind(published[-2], published) == 0


def test_run_id_for_keeps_the_directorys_run_across_a_restarted_trainer(tmp_path):
    """The manifest's run id is kept, so a restarted trainer's step 0 is a regression."""
    first = run_id_for(tmp_path, "actor")
    publish(seeded_actor(0), tmp_path, metadata={"run_id": first, "step": 50_000},
            format="state_dict")  # fmt: skip
    assert current_run_id(tmp_path, "actor") == first
    assert run_id_for(tmp_path, "actor") == first
    restarted = {"run_id": run_id_for(tmp_path, "actor"), "step": 0}
    with pytest.raises(ValidationError, match="step 0 is older than live step 50,000"):
        check_order(restarted, {"run_id": first, "step": 50_000})


def test_run_id_for_starts_a_new_run_when_asked_or_when_there_is_none(tmp_path):
    """`new_run=True`, an explicit `run_id=`, no manifest, or an unreadable one: not the old id."""
    assert current_run_id(tmp_path, "actor") is None
    fresh = run_id_for(tmp_path, "actor")
    assert fresh and fresh != run_id_for(tmp_path, "actor")  # nothing kept yet: new each time
    publish(seeded_actor(0), tmp_path, metadata={"run_id": "kept", "step": 1}, format="state_dict")
    assert run_id_for(tmp_path, "actor") == "kept"
    assert run_id_for(tmp_path, "actor", new_run=True) not in ("kept", "")
    assert run_id_for(tmp_path, "actor", run_id="chosen") == "chosen"
    assert run_id_for(tmp_path, "other") != "kept"  # another name, another manifest
    (tmp_path / "actor_latest.json").write_text(json.dumps({"checkpoint": "x"}))
    assert run_id_for(tmp_path, "actor") != "kept"


def test_run_id_for_refuses_contradictory_arguments(tmp_path):
    """Both `run_id=` and `new_run=True`, or an empty run id, are mistakes."""
    with pytest.raises(ValueError, match="not both"):
        run_id_for(tmp_path, run_id="a", new_run=True)
    with pytest.raises(ValueError, match="non-empty"):
        run_id_for(tmp_path, run_id="")
