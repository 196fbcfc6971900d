"""Helpers for the rollout tests: live handles without a registry, and policies that misbehave
in chosen ways."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ckptserve.loading import LiveModel
from ckptserve.validation import Expectations
from ckptserve.versions import ModelVersion


def live_model(
    model: Any, name: str, *, metadata: dict[str, Any] | None = None, obs_dim: int = 4
) -> LiveModel:
    """A handle for `model` as if checkpoint `name` had been loaded (sha256 of the name)."""
    sha = hashlib.sha256(name.encode()).hexdigest()
    version = ModelVersion(
        path=f"/models/{name}", resolved=f"/models/{name}", key=None, mtime=0.0, size=1,
        sha256=sha, format="export", metadata=dict(metadata or {}),
    )  # fmt: skip
    return LiveModel(model, version, Expectations(obs_dim, None, None, None))


class Linear(torch.nn.Module):
    """`action = tanh(state @ w)`, one action; `scale=-1` flips every sign."""

    def __init__(self, weights: list[float], scale: float = 1.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(weights).unsqueeze(1) * scale)

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(state @ self.w)


class NanAwayFromZero(torch.nn.Module):
    """Like `Linear`, but NaN wherever the state's first value is above 0.5: the probe's zero
    state passes, real states do not."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.inner = Linear(weights)

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        action = self.inner(state)
        return torch.where(state[:, :1] > 0.5, torch.full_like(action, float("nan")), action)
