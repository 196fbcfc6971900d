"""Calling a policy: the one place that knows a SAC actor returns `(action, log_prob)`."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["act"]


def act(model: Any, states: torch.Tensor) -> torch.Tensor:
    """Run `model(states, True)` without autograd and return the action tensor.

    The policy convention is `forward(state, deterministic=True) -> (action, log_prob)`; a model
    that returns a bare tensor is accepted too.
    """
    with torch.inference_mode():
        out = model(states, True)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model returned {type(out).__name__}, expected a tensor or (action, ...)")
    return out
