"""Whether `--device` can load models here: checked at start, so `--device gpu` or `cuda:0` on a
machine without CUDA is one line instead of a server whose every load fails. torch is imported
only for a device other than the CPU."""

from __future__ import annotations

__all__ = ["device_problem"]


def device_problem(device: str) -> str | None:
    """Why models could not be loaded on `device`, or None (torch's own parser decides what a
    device string means)."""
    if device == "cpu":
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device {device!r} is not a device torch knows: use cpu, cuda, cuda:N, mps, ..."
    kind = parsed.type
    if kind in ("cpu", "meta"):
        return None
    backend = getattr(torch, kind, None) if kind != "mps" else torch.backends.mps
    is_available = getattr(backend, "is_available", None)
    if is_available is not None and not is_available():
        if kind == "cuda" and torch.version.cuda is None:
            return f"--device {device}: this torch ({torch.__version__}) is built without CUDA"
        return f"--device {device}: no {kind} device is available on this machine"
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        return (
            f"--device {device}: this machine has {count()} {kind} device(s), "
            f"{kind}:0 to {kind}:{count() - 1}"
        )
    return None
