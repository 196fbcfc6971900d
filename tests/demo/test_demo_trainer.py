"""The SAC trainer: it publishes checkpoints the registry loads, and the policy it publishes learns."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ckptserve import ModelRegistry, list_checkpoints
from ckptserve.demo.sac import SAC, Actor
from ckptserve.demo.trainer import Published, evaluate, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Train and evaluate on one thread, as the trainer does (tiny batches, 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Published]]:
    """One short fixed-seed training run (about 7 s on 2 cores), shared by the tests below."""
    directory = tmp_path_factory.mktemp("trainer")
    return directory, train(directory, steps=2_000, publish_every=1_000, seed=0)


def test_trainer_publishes_checkpoints_the_registry_loads(
    run: tuple[Path, list[Published]],
) -> None:
    """Every publish is a checkpoint the registry loads, with its step and eval_return in metadata."""
    directory, published = run
    assert [p.step for p in published] == [0, 1_000, 2_000]
    assert sorted(list_checkpoints(directory)) == sorted(p.path for p in published)
    states = torch.zeros(4, 9)
    for record in published:
        with ModelRegistry(record.path) as registry:
            model = registry.get_model()
            version = registry.version
        assert version is not None and version.sha256 == record.sha256
        assert version.metadata["step"] == record.step
        assert version.metadata["eval_return"] == pytest.approx(record.eval_return, abs=1e-3)
        assert version.metadata["obs_dim"] == 9 and version.metadata["action_dim"] == 1
        assert (version.metadata["action_low"], version.metadata["action_high"]) == (-1.0, 1.0)
        action, _ = model(states, True)
        assert action.shape == (4, 1) and bool((action.abs() <= 1).all())
    with ModelRegistry(directory) as registry:
        registry.get_model()
        assert registry.version is not None
        assert registry.version.metadata["step"] == published[-1].step


def test_agent_learns(run: tuple[Path, list[Published]]) -> None:
    """The published policy's evaluation return rises well above the untrained policy's."""
    _, published = run
    untrained, trained = published[0].eval_return, published[-1].eval_return
    assert abs(untrained) < 10.0
    assert trained > untrained + 10.0
    assert trained > 15.0


def test_trained_policy_is_short_when_the_spread_is_high(
    run: tuple[Path, list[Published]],
) -> None:
    """The learned policy is short at z = +2 and long at z = -2 (the served probe states)."""
    directory, _ = run
    with ModelRegistry(directory) as registry:
        action, _ = registry.get_model()(
            torch.tensor([[2.0] * 8 + [0.0], [-2.0] * 8 + [0.0]]), True
        )
    assert action[0, 0] < -0.5 and action[1, 0] > 0.5


def test_evaluation_is_deterministic() -> None:
    """The same policy gets the same evaluation return: the episode set is fixed."""
    torch.manual_seed(0)
    actor = Actor(9)
    assert evaluate(actor, 3) == evaluate(actor, 3)


def test_actor_deterministic_branch_ignores_the_rng_and_samples_otherwise() -> None:
    """deterministic=True is tanh(mean) whatever the RNG; the stochastic branch varies, in [-1, 1]."""
    torch.manual_seed(0)
    agent = SAC(9)
    states = torch.randn(64, 9)
    a1, lp1 = agent.actor(states, True)
    a2, lp2 = agent.actor(states, True)
    assert torch.equal(a1, a2) and torch.equal(lp1, lp2)
    s1, slp = agent.actor(states, False)
    s2, _ = agent.actor(states, False)
    assert not torch.equal(s1, s2)
    assert bool(torch.isfinite(slp).all()) and bool((s1.abs() <= 1).all())


def test_exported_actor_takes_any_batch_size() -> None:
    """torch.export captures the actor with a dynamic batch dimension, matching eager results."""
    actor = Actor(9).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(actor, (torch.zeros(2, 9),), dynamic_shapes={"state": {0: batch}})
    for n in (1, 5):
        x = torch.randn(n, 9)
        torch.testing.assert_close(program.module()(x)[0], actor(x)[0])


def test_cli_prints_one_line_per_publish(tmp_path: Path) -> None:
    """`python -m ckptserve.demo.trainer` publishes at step 0 and every --publish-every steps."""
    result = subprocess.run(
        [
            sys.executable, "-m", "ckptserve.demo.trainer", "--dir", str(tmp_path),
            "--steps", "4", "--publish-every", "2", "--warmup", "2", "--eval-episodes", "1",
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["0", "2", "4"]
    assert len(list_checkpoints(tmp_path)) == 3
