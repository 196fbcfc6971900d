"""Calling a policy: the one place that knows a SAC actor returns `(action, log_prob)`."""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["act", "as_policy", "infer_obs_dim", "on_device"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _StateOnly(torch.nn.Module):
    """A model whose forward takes the state alone, callable as `model(state, deterministic)`."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> Any:
        return self.inner(state)


class _OnDevice(torch.nn.Module):
    """A model on an accelerator, called with CPU states: they go to its device, and what it
    answers comes back to the CPU (requests and the probe build their tensors there)."""

    def __init__(self, inner: Any, device: str) -> None:
        super().__init__()
        self.inner = inner
        self.device = torch.device(device)

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> Any:
        out = self.inner(state.to(self.device, non_blocking=True), deterministic)
        if isinstance(out, (tuple, list)):
            return tuple(o.cpu() if isinstance(o, torch.Tensor) else o for o in out)
        return out.cpu() if isinstance(out, torch.Tensor) else out


def on_device(model: Any, device: str) -> Any:
    """`model` (loaded onto `device`), callable with CPU states; itself on the CPU."""
    return model if torch.device(device).type == "cpu" else _OnDevice(model, device)


def as_policy(model: Any) -> Any:
    """`model`, callable as `model(states, deterministic)`: a module whose forward takes the state
    alone (a CleanRL-style `forward(x)` actor) is wrapped; anything else is returned as it is."""
    forward = getattr(model, "forward", None)
    if forward is None:
        return model
    schema = getattr(forward, "schema", None)  # a TorchScript method: its arguments include self
    if schema is not None:
        n = len(schema.arguments) - 1
    else:
        try:
            params = list(inspect.signature(forward).parameters.values())
        except (TypeError, ValueError):
            return model
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            return model
        n = sum(1 for p in params if p.kind in _POSITIONAL)
    return _StateOnly(model) if n == 1 else model


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
