"""The pairs-trading environment: a valid, seeded Gymnasium env whose reward is PnL minus costs."""

from __future__ import annotations

import math

import numpy as np
from gymnasium.utils.env_checker import check_env

from ckptserve.demo.env import PairsTradingEnv


def _rollout(seed: int, actions: list[float]) -> list[tuple[np.ndarray, float]]:
    env = PairsTradingEnv()
    obs, _ = env.reset(seed=seed)
    out = [(obs, 0.0)]
    for a in actions:
        obs, reward, *_ = env.step(np.array([a], dtype=np.float32))
        out.append((obs, float(reward)))
    return out


def test_env_passes_the_gymnasium_checker() -> None:
    """gymnasium's env_checker accepts the environment without a warning."""
    check_env(PairsTradingEnv(), skip_render_check=True)


def test_same_seed_gives_the_same_episode() -> None:
    """Two resets with one seed replay the same spread; another seed does not."""
    actions = [math.sin(i) for i in range(50)]
    first, again, other = _rollout(7, actions), _rollout(7, actions), _rollout(8, actions)
    for (o1, r1), (o2, r2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2
    assert any(not np.array_equal(o1, o3) for (o1, _), (o3, _) in zip(first, other, strict=True))


def test_observation_is_zscore_window_and_position() -> None:
    """The observation is the last `window` z-scores and the position just taken."""
    env = PairsTradingEnv(window=5)
    obs, info = env.reset(seed=0)
    assert obs.shape == (6,) and env.obs_dim == 6
    assert obs[-1] == 0.0 and math.isclose(obs[-2], info["z"], rel_tol=1e-6)
    obs, *_ = env.step(np.array([-0.5], dtype=np.float32))
    assert obs[-1] == -0.5


def test_reward_is_pnl_minus_transaction_cost() -> None:
    """reward = position * (spread change) / stationary std - cost * |position change|."""
    env = PairsTradingEnv(cost=0.05)
    _, info = env.reset(seed=3)
    spread = info["spread"]
    for target, previous in ((1.0, 0.0), (-0.5, 1.0), (-0.5, -0.5)):
        _, reward, terminated, truncated, info = env.step(np.array([target], dtype=np.float32))
        expected = target * (info["spread"] - spread) / env.stationary_std - 0.05 * abs(
            target - previous
        )
        assert math.isclose(reward, expected, rel_tol=1e-9, abs_tol=1e-12)
        assert not terminated and not truncated
        spread = info["spread"]


def test_episode_truncates_after_episode_length() -> None:
    """An episode ends by truncation after `episode_length` steps, never by termination."""
    env = PairsTradingEnv(episode_length=10)
    env.reset(seed=0)
    flags = [env.step(np.zeros(1, dtype=np.float32))[2:4] for _ in range(10)]
    assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])


def test_trading_against_the_zscore_pays() -> None:
    """Mean reversion is there to learn: short when z > 0 earns well; flat earns nothing."""
    env = PairsTradingEnv()
    total = 0.0
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(
                np.array([-np.sign(obs[-2])], dtype=np.float32)
            )
            total += float(reward)
            done = terminated or truncated
    assert total / 5 > 20.0
