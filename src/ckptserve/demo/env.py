"""A cointegrated pair to trade: the spread is an Ornstein-Uhlenbeck process.

Leg B's log-price is a random walk and leg A is cointegrated with it, `A = beta * B + s`, where the
spread `s` mean-reverts. The agent holds a position in the spread (long one A, short `beta` B; a
negative position is the reverse) and each step chooses a target position in [-1, 1]:

    s[t+1] = mu + (s[t] - mu) * exp(-theta) + sigma * sqrt((1 - exp(-2 theta)) / (2 theta)) * eps
    z[t]   = (s[t] - mu) / sigma_inf,       sigma_inf = sigma / sqrt(2 theta)
    reward = p[t] * (s[t+1] - s[t]) / sigma_inf - cost * |p[t] - p[t-1]|

The update is the OU process sampled exactly at unit time steps; the observation is the last
`window` z-scores and the current position. Rewards are in units of the spread's stationary
standard deviation, so a policy that is short when `z` is high and long when it is low earns
about `(1 - exp(-theta)) * E|z|` a step before costs.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["PairsTradingEnv"]

Obs = np.ndarray[Any, np.dtype[np.float32]]


class PairsTradingEnv(gym.Env[Obs, Obs]):
    """Trade a mean-reverting spread; observation = recent z-scores + position.

    Args:
        window: how many recent z-scores the agent sees.
        episode_length: steps per episode (then `truncated`).
        theta: mean-reversion speed per step (half-life `ln 2 / theta` steps).
        sigma: OU volatility; the spread's stationary std is `sigma / sqrt(2 theta)`.
        mu: the spread's long-run mean.
        cost: transaction cost per unit of position change, in stationary-std units.
        beta: hedge ratio of leg A on leg B (for the simulated prices in `info`).

    Example:
        env = PairsTradingEnv()
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(np.array([-1.0], np.float32))
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        *,
        window: int = 8,
        episode_length: int = 200,
        theta: float = 0.25,
        sigma: float = 0.5,
        mu: float = 0.0,
        cost: float = 0.02,
        beta: float = 1.5,
    ) -> None:
        if window < 1 or episode_length < 1 or theta <= 0 or sigma <= 0:
            raise ValueError("window, episode_length, theta and sigma must be positive")
        self.window = window
        self.episode_length = episode_length
        self.theta = theta
        self.sigma = sigma
        self.mu = mu
        self.cost = cost
        self.beta = beta
        self.phi = math.exp(-theta)
        self.step_std = sigma * math.sqrt((1.0 - math.exp(-2.0 * theta)) / (2.0 * theta))
        self.stationary_std = sigma / math.sqrt(2.0 * theta)
        self.z_clip = 10.0
        high = np.full(window + 1, self.z_clip, dtype=np.float32)
        high[-1] = 1.0
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._spreads: list[float] = []
        self._position = 0.0
        self._log_b = 0.0
        self._t = 0

    @property
    def obs_dim(self) -> int:
        """The observation's length: `window` z-scores plus the position."""
        return self.window + 1

    def _z(self, s: float) -> float:
        return float(np.clip((s - self.mu) / self.stationary_std, -self.z_clip, self.z_clip))

    def _next_spread(self, s: float) -> float:
        return self.mu + (s - self.mu) * self.phi + self.step_std * float(self.np_random.normal())

    def _obs(self) -> Obs:
        z = [self._z(s) for s in self._spreads[-self.window :]]
        return np.asarray([*z, self._position], dtype=np.float32)

    def _info(self) -> dict[str, Any]:
        s = self._spreads[-1]
        price_b = 100.0 * math.exp(self._log_b)
        return {
            "spread": s,
            "z": self._z(s),
            "position": self._position,
            "price_a": self.beta * price_b + s,
            "price_b": price_b,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        # Start from the stationary distribution and run the window's worth of history.
        s = self.mu + self.stationary_std * float(self.np_random.normal())
        self._spreads = [s]
        for _ in range(self.window - 1):
            self._spreads.append(self._next_spread(self._spreads[-1]))
        self._position = 0.0
        self._log_b = 0.0
        self._t = 0
        return self._obs(), self._info()

    def step(self, action: Obs) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        target = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        s = self._spreads[-1]
        s_next = self._next_spread(s)
        self._log_b += 0.01 * float(self.np_random.normal())
        pnl = target * (s_next - s) / self.stationary_std
        fee = self.cost * abs(target - self._position)
        self._position = target
        self._spreads.append(s_next)
        del self._spreads[: -self.window]
        self._t += 1
        truncated = self._t >= self.episode_length
        info = self._info()
        info["pnl"] = pnl
        info["cost"] = fee
        return self._obs(), pnl - fee, False, truncated, info
