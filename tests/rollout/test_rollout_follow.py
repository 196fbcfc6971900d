"""Follow the best: serve the checkpoint with the best metadata value, not only the newest."""

from __future__ import annotations

import pytest

from ckptserve.rollout.follow import FollowRule, Published


def published(*values):
    """Checkpoints newest first, `actor_<i>.pt` with eval_return/loss values (None: missing)."""
    n = len(values)
    return [
        Published(f"actor_{n - i}.pt", {} if v is None else {"eval_return": v, "loss": v})
        for i, v in enumerate(values)
    ]


def test_latest_serves_the_newest():
    """The default: the first of the newest-first list."""
    ckpts = published(1.0, 9.0, 5.0)
    assert FollowRule.parse("latest").best(ckpts) == ckpts[0]
    assert FollowRule().best([]) is None


def test_max_serves_the_highest_value_and_min_the_lowest():
    """max:eval_return picks 9.0; min:loss picks 1.0, wherever they are in the list."""
    ckpts = published(5.0, 9.0, 1.0)
    assert FollowRule.parse("max:eval_return").best(ckpts) == ckpts[1]
    assert FollowRule.parse("min:loss").best(ckpts) == ckpts[2]


def test_a_checkpoint_without_a_numeric_value_is_no_candidate():
    """Missing, strings, booleans and NaN are skipped; none left means nothing to serve."""
    ckpts = [
        Published("actor_5.pt", {"eval_return": "high"}),
        Published("actor_4.pt", {"eval_return": True}),
        Published("actor_3.pt", {"eval_return": float("nan")}),
        Published("actor_2.pt", {}),
        Published("actor_1.pt", {"eval_return": -3}),
    ]
    rule = FollowRule.parse("max:eval_return")
    assert rule.best(ckpts) == ckpts[-1]
    assert rule.best(ckpts[:-1]) is None


def test_between_equal_values_the_newer_wins():
    """Two checkpoints with the same best value: the newer one is served."""
    ckpts = published(7.0, 7.0, 3.0)
    assert FollowRule.parse("max:eval_return").best(ckpts) == ckpts[0]
    assert FollowRule.parse("min:loss").best(published(3.0, 3.0, 7.0)).checkpoint == "actor_3.pt"


def test_the_server_moves_only_when_a_better_one_arrives():
    """better(): strictly better moves; worse, equal or valueless stays; latest always moves."""
    rule = FollowRule.parse("max:eval_return")
    assert rule.better({"eval_return": 10}, {"eval_return": 9})
    assert not rule.better({"eval_return": 9}, {"eval_return": 9})
    assert not rule.better({"eval_return": 8}, {"eval_return": 9})
    assert not rule.better({}, {"eval_return": 9})
    assert rule.better({"eval_return": 1}, {})  # the live one has no value: any value is better
    assert rule.better({"eval_return": 1}, None) and not rule.better({}, None)
    assert FollowRule.parse("min:loss").better({"loss": 0.1}, {"loss": 0.2})
    assert FollowRule().better({}, {"step": 1})


def test_retention_never_prunes_the_current_best():
    """protected(): the best checkpoint, however old."""
    ckpts = published(1.0, 2.0, 9.0, 3.0)
    assert FollowRule.parse("max:eval_return").protected(ckpts) == {"actor_2.pt"}
    assert FollowRule().protected(ckpts) == {"actor_4.pt"}
    assert FollowRule.parse("max:eval_return").protected(published(None)) == set()


@pytest.mark.parametrize("text", ["", "best", "max", "max:", "avg:loss", "latest:x"])
def test_a_rule_that_is_not_latest_max_or_min_is_refused(text):
    """The flag's accepted forms are named in the error."""
    with pytest.raises(ValueError, match="'latest', 'max:<metadata key>' or 'min:<metadata key>'"):
        FollowRule.parse(text)


def test_a_rule_prints_as_the_flag_reads():
    """str() gives the flag's value back, for status."""
    assert [str(FollowRule.parse(t)) for t in ("latest", "max:eval_return", "min:loss")] == [
        "latest", "max:eval_return", "min:loss"
    ]  # fmt: skip
