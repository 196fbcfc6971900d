"""A compact Soft Actor-Critic (Haarnoja et al., 2018) in plain PyTorch.

Tanh-squashed Gaussian actor, twin Q critics with Polyak-averaged targets, automatic entropy
tuning (target entropy `-action_dim`) and a uniform replay buffer. The actor follows the serving
convention `forward(state, deterministic=True) -> (action, log_prob)`, and its deterministic branch
uses no randomness, so `torch.export` (what `publish()` does) captures it with a dynamic batch.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SAC", "Actor", "Critic", "ReplayBuffer", "SACConfig"]

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
    )


class Actor(nn.Module):
    """Tanh-Gaussian policy: `forward(state, deterministic=True) -> (action, log_prob)`.

    The deterministic action is `tanh(mean)`; its `log_prob` is the density at that point, so it
    is well defined without sampling. Actions lie in [-1, 1].
    """

    def __init__(self, obs_dim: int, action_dim: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mean = nn.Linear(hidden, action_dim)
        self.log_std = nn.Linear(hidden, action_dim)

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(state)
        mean = self.mean(h)
        log_std = self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)
        if deterministic:
            u = mean
            gaussian = -log_std - _HALF_LOG_2PI
        else:
            noise = torch.randn_like(mean)
            u = mean + log_std.exp() * noise
            gaussian = -0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI
        action = torch.tanh(u)
        # log(1 - tanh(u)^2), written to stay finite for large |u|.
        squash = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        return action, (gaussian - squash).sum(dim=-1, keepdim=True)


class Critic(nn.Module):
    """Twin Q networks: `forward(state, action) -> (q1, q2)`."""

    def __init__(self, obs_dim: int, action_dim: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.q1 = _mlp(obs_dim + action_dim, hidden, 1)
        self.q2 = _mlp(obs_dim + action_dim, hidden, 1)

    def forward(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([state, action], dim=-1)
        return self.q1(x), self.q2(x)


class ReplayBuffer:
    """A fixed-size ring of transitions `(s, a, r, s', done)`, sampled uniformly."""

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.states = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, action_dim), dtype=np.float32)
        self.rewards = np.zeros((capacity, 1), dtype=np.float32)
        self.next_states = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.dones = np.zeros((capacity, 1), dtype=np.float32)
        self._rng = np.random.default_rng(seed)
        self._next = 0
        self.size = 0

    def add(
        self,
        state: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_state: np.ndarray,
        done: bool,
    ) -> None:
        i = self._next
        self.states[i] = state
        self.actions[i] = action
        self.rewards[i] = reward
        self.next_states[i] = next_state
        self.dones[i] = float(done)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        idx = self._rng.integers(0, self.size, size=batch_size)
        return tuple(
            torch.from_numpy(a[idx])
            for a in (self.states, self.actions, self.rewards, self.next_states, self.dones)
        )


@dataclass(frozen=True, slots=True)
class SACConfig:
    """SAC hyper-parameters; the defaults are tuned for the pairs-trading demo on a CPU."""

    hidden: int = 64
    gamma: float = 0.9
    tau: float = 0.01
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    initial_alpha: float = 0.1
    batch_size: int = 128
    buffer_size: int = 100_000


class SAC:
    """The agent: actor, twin critics and their targets, entropy temperature, optimisers.

    Example:
        agent = SAC(obs_dim=9, action_dim=1)
        action = agent.act(obs)                     # sampled, for exploration
        agent.update(buffer.sample(agent.config.batch_size))
    """

    def __init__(self, obs_dim: int, action_dim: int = 1, config: SACConfig | None = None) -> None:
        self.config = config or SACConfig()
        c = self.config
        self.actor = Actor(obs_dim, action_dim, c.hidden)
        self.critic = Critic(obs_dim, action_dim, c.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(c.initial_alpha), requires_grad=True)
        self.target_entropy = -float(action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=c.alpha_lr)

    @property
    def alpha(self) -> float:
        """The current entropy temperature."""
        return float(self.log_alpha.exp())

    def act(self, state: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """One action for one observation, as a numpy array."""
        with torch.no_grad():
            action, _ = self.actor(torch.as_tensor(state).unsqueeze(0), deterministic)
        result: np.ndarray = action[0].numpy()
        return result

    def update(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """One gradient step on critics, actor and temperature; returns the losses."""
        states, actions, rewards, next_states, dones = batch
        c = self.config
        alpha = self.log_alpha.exp().detach()

        with torch.no_grad():
            next_actions, next_log_prob = self.actor(next_states, False)
            tq1, tq2 = self.critic_target(next_states, next_actions)
            soft_value = torch.min(tq1, tq2) - alpha * next_log_prob
            target = rewards + c.gamma * (1.0 - dones) * soft_value
        q1, q2 = self.critic(states, actions)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        new_actions, log_prob = self.actor(states, False)
        self.critic.requires_grad_(False)
        pq1, pq2 = self.critic(states, new_actions)
        self.critic.requires_grad_(True)
        actor_loss = (alpha * log_prob - torch.min(pq1, pq2)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p, tp in zip(
                self.critic.parameters(), self.critic_target.parameters(), strict=True
            ):
                tp.lerp_(p, c.tau)
        return {
            "critic_loss": float(critic_loss.detach()),
            "actor_loss": float(actor_loss.detach()),
            "alpha": float(alpha),
        }
