"""Calling a policy: the one place that knows a SAC actor returns `(action, log_prob)`."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["act", "infer_obs_dim"]


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


def infer_obs_dim(model: Any) -> int | None:
    """The observation size a model takes, read from an exported program's input or from the
    width of a module's first weight matrix; None when neither says."""
    if isinstance(model, torch.export.ExportedProgram):
        for node in model.graph.nodes:
            if node.op == "placeholder" and node.name in model.graph_signature.user_inputs:
                return int(node.meta["val"].shape[-1])
        return None
    params = getattr(model, "parameters", None)
    if params is None:
        return None
    for p in params():
        return int(p.shape[-1]) if p.dim() == 2 else None
    return None
