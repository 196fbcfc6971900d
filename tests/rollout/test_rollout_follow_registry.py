"""--follow max:<key> | min:<key> in the registry and in publish(): the best published
checkpoint is served, the registry moves when a better one arrives, and retention never prunes
the current best."""

from __future__ import annotations

import pytest

from ckptserve import publish
from ckptserve.naming import list_checkpoints
from ckptserve.rollout import BadMarks
from ckptserve.rollout.follow import published
from policies import seeded_actor


def put(directory, seed, **metadata):
    return publish(seeded_actor(seed), directory, metadata=metadata, format="torchscript")


@pytest.mark.parametrize(("rule", "key", "values", "best"),
                         [("max:eval_return", "eval_return", (1.0, 3.0, 2.0), 1),
                          ("min:loss", "loss", (0.5, 0.1, 0.3), 1)])  # fmt: skip
def test_the_registry_serves_the_best_published_and_moves_only_for_a_better_one(
    tmp_path, make_registry, rule, key, values, best
):
    """Three published, the middle one best: it is served, not the newest; a worse one
    published later changes nothing (no load); a better one is loaded and goes live."""
    paths = [put(tmp_path, i, **{key: v}) for i, v in enumerate(values)]
    registry = make_registry(tmp_path, follow=rule)
    registry.check()
    assert registry.version.checkpoint == paths[best].name
    assert registry.status()["follow"] == rule
    loads = registry.load_count
    worse = values[0]
    put(tmp_path, 7, **{key: worse})
    assert registry.check() is None and registry.load_count == loads
    better = (max(values) + 1) if rule.startswith("max") else (min(values) / 2)
    newest = put(tmp_path, 8, **{key: better})
    attempt = registry.check()
    assert attempt is not None and attempt.result == "ok", attempt
    assert registry.version.checkpoint == newest.name


def test_while_no_checkpoint_has_a_value_the_newest_is_served(tmp_path, make_registry):
    """A checkpoint without a number under the key is no candidate; with none at all, the
    newest is served (as `latest`), until one with a number is published."""
    put(tmp_path, 0)
    second = put(tmp_path, 1, eval_return="n/a")
    registry = make_registry(tmp_path, follow="max:eval_return")
    registry.check()
    assert registry.version.checkpoint == second.name
    scored = put(tmp_path, 2, eval_return=-5.0)
    put(tmp_path, 3)
    registry.check()
    assert registry.version.checkpoint == scored.name


def test_a_best_checkpoint_marked_bad_is_passed_over_for_the_next_best(tmp_path, make_registry):
    """The best checkpoint was rolled back before (marked bad in --state-dir): the registry
    serves the next best instead, with the refusal in its history."""
    models, state = tmp_path / "models", tmp_path / "state"
    put(models, 0, eval_return=1.0)
    second = put(models, 1, eval_return=2.0)
    best = put(models, 2, eval_return=3.0)
    sha = next(p.sha256 for p in published(models, "actor") if p.checkpoint == best.name)
    BadMarks(state, "actor").mark(sha, checkpoint=best.name, reason="NaN on live traffic")
    registry = make_registry(models, follow="max:eval_return", state_dir=str(state))
    registry.check()
    assert registry.version.checkpoint == second.name
    assert any(a.result == "rejected" and "marked bad" in (a.reason or "")
               for a in registry.history)  # fmt: skip


def test_following_the_best_does_not_refuse_an_older_step(tmp_path, make_registry):
    """With max:/min: the value orders the versions: a better checkpoint of a lower step of the
    same run is served (under `latest` it would be a regression)."""
    put(tmp_path, 0, run_id="a", step=100)  # no value: served as the newest
    registry = make_registry(tmp_path, follow="max:eval_return")
    registry.check()
    older = publish(seeded_actor(1), tmp_path, metadata={"run_id": "a", "step": 50,
                    "eval_return": 9.0}, format="torchscript")  # fmt: skip
    registry.check()
    assert registry.version.checkpoint == older.name


@pytest.mark.parametrize("given", ["argument", "environment"])
def test_retention_never_prunes_the_best_checkpoint(tmp_path, monkeypatch, given):
    """publish(keep=2, follow="max:eval_return") (or $CKPTSERVE_FOLLOW): the best one survives
    however many worse ones follow; without a rule it is pruned like any other."""
    kwargs = {"follow": "max:eval_return"} if given == "argument" else {}
    if given == "environment":
        monkeypatch.setenv("CKPTSERVE_FOLLOW", "max:eval_return")
    best = publish(seeded_actor(0), tmp_path, keep=2, metadata={"eval_return": 10.0},
                   format="torchscript", **kwargs)  # fmt: skip
    for i in range(1, 5):
        publish(seeded_actor(i), tmp_path, keep=2, metadata={"eval_return": float(i)},
                format="torchscript", **kwargs)  # fmt: skip
    kept = [p.name for p in list_checkpoints(tmp_path, "actor")]
    assert best.name in kept and len(kept) == 3, kept
    monkeypatch.delenv("CKPTSERVE_FOLLOW", raising=False)
    publish(seeded_actor(9), tmp_path, keep=2, metadata={"eval_return": 0.0}, format="torchscript")
    assert best.name not in [p.name for p in list_checkpoints(tmp_path, "actor")]


def test_published_reads_each_records_metadata_and_tolerates_a_bad_record(tmp_path):
    """`published` lists newest first with the record's metadata and sha256; a garbled record
    leaves its checkpoint without (no candidate), never an error."""
    first = put(tmp_path, 0, eval_return=1.0)
    second = put(tmp_path, 1, eval_return=2.0)
    from ckptserve.naming import record_for

    record_for(first).write_text("{not json")
    found = published(tmp_path, "actor")
    assert [p.checkpoint for p in found] == [second.name, first.name]
    assert found[0].metadata["eval_return"] == 2.0 and len(found[0].sha256 or "") == 64
    assert found[1].metadata == {} and found[1].sha256 is None
