"""Calling a model: the one place that knows a SAC actor returns `(action, log_prob)`, and how a
model with named inputs (a critic's `forward(state, action) -> q`) is called."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["act", "as_policy", "call_named", "infer_obs_dim", "on_device"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _StateOnly(torch.nn.Module):
    """A model whose forward takes the state alone, callable as `model(state, deterministic)`."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, state: torch.Tensor | None = None, deterministic: bool = True,
                **named: torch.Tensor) -> Any:  # fmt: skip
        return self.inner(state) if state is not None else self.inner(**named)


class _OnDevice(torch.nn.Module):
    """A model on an accelerator, called with CPU states: they go to its device, and what it
    answers comes back to the CPU (requests and the probe build their tensors there)."""

    def __init__(self, inner: Any, device: str) -> None:
        super().__init__()
        self.inner = inner
        self.device = torch.device(device)

    def forward(self, *args: Any, **named: torch.Tensor) -> Any:
        to = self.device
        out = self.inner(*(a.to(to, non_blocking=True) if isinstance(a, torch.Tensor) else a
                           for a in args),
                         **{k: t.to(to, non_blocking=True) for k, t in named.items()})  # fmt: skip
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


def call_named(
    model: Any, inputs: Mapping[str, torch.Tensor], outputs: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Run `model(**inputs)` without autograd (each input passed by its name, as `forward` calls
    its arguments) and name what it returns: a dict by its keys, a lone tensor by the one name
    in `outputs`. Each output is `[batch, size]` (a `[batch]` tensor: one value per row)."""
    with torch.inference_mode():
        out = model(**inputs)
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    if isinstance(out, Mapping):
        missing = [name for name in outputs if name not in out]
        if missing:
            raise TypeError(f"model returned {sorted(out)}, without {', '.join(missing)}")
        got = {name: out[name] for name in outputs}
    elif isinstance(out, torch.Tensor) and len(outputs) == 1:
        got = {outputs[0]: out}
    else:
        what = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
        raise TypeError(
            f"model returned {what}, expected {', '.join(outputs)}: a model with several "
            "outputs returns a dict of them by name"
        )
    for name, t in got.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"model returned {type(t).__name__} for {name}, not a tensor")
    return {name: t.unsqueeze(-1) if t.dim() == 1 else t for name, t in got.items()}


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
