"""Tiny policies for the core tests, importable as `policies:make_actor` (tests/ is on sys.path)."""

from __future__ import annotations

from typing import Any

import torch

OBS_DIM = 4


class Actor(torch.nn.Module):
    """A SAC-style actor: `forward(state, deterministic=True) -> (action, log_prob)`."""

    def __init__(self, obs_dim: int = OBS_DIM, hidden: int = 8, action_dim: int = 1) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(obs_dim, hidden), torch.nn.ReLU())
        self.mu = torch.nn.Linear(hidden, action_dim)

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        action = torch.tanh(self.mu(self.body(state)))
        return action, torch.zeros(state.shape[0], 1)


def make_actor() -> Actor:
    """Factory for state_dict_loader: the architecture, weights filled in by the loader."""
    return Actor()


def make_actor_from(metadata: dict[str, Any]) -> Actor:
    """Factory that sizes the actor from the checkpoint's metadata."""
    return Actor(obs_dim=int(metadata["obs_dim"]), action_dim=int(metadata["action_dim"]))


def seeded_actor(seed: int, **kwargs: Any) -> Actor:
    """An actor with deterministic, seed-dependent weights."""
    torch.manual_seed(seed)
    return Actor(**kwargs).eval()


class ConstantActor(torch.nn.Module):
    """Answers `value` for every state (NaN, or outside the bounds, makes a model to reject)."""

    def __init__(self, value: float = 0.0, action_dim: int = 1) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.full((action_dim,), float(value)))

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        action = state[:, :1] * 0.0 + self.value
        return action, torch.zeros(state.shape[0], 1)


#: The critics' state and action sizes.
OBS, ACT = 8, 1


class Critic(torch.nn.Module):
    """A Q(s, a) critic: not a policy, its inputs named (`publish(..., example_inputs=...)`)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(OBS + ACT, 1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], -1))


class TwinCritic(torch.nn.Module):
    """SAC's twin Q networks, its outputs named by the dict it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.q1 = torch.nn.Linear(OBS + ACT, 1)
        self.q2 = torch.nn.Linear(OBS + ACT, 1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.cat([state, action], -1)
        return {"q1": self.q1(x), "q2": self.q2(x)}


def examples(batch: int = 1) -> dict[str, torch.Tensor]:
    """`example_inputs` for the critics: zeros of each input."""
    return {"state": torch.zeros(batch, OBS), "action": torch.zeros(batch, ACT)}
