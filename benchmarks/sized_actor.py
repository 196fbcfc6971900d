"""An actor of a chosen checkpoint size whose forward pass stays cheap: the benchmark's
observation size (32), a small body, and a table of `table` float32 parameters of which the
forward reads one slice. `bench_sizes.py` and `bench_gpu.py` use it so that a curve over sizes
measures the cost of the bytes (read, hash, load, copy, swap) and not of a bigger forward pass.

`build` is the factory for its weights formats: `--factory sized_actor:build` (it reads the table
size from the checkpoint's metadata, which `publish(..., metadata=meta(table))` writes).
"""

from __future__ import annotations

from typing import Any

import torch

OBS_DIM = 32
HIDDEN = 8


class SizedActor(torch.nn.Module):
    def __init__(self, table: int) -> None:
        super().__init__()
        self.body = torch.nn.Linear(OBS_DIM, HIDDEN)
        self.mu = torch.nn.Linear(HIDDEN, 1)
        self.table = torch.nn.Parameter(torch.zeros(max(table, HIDDEN)))

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = (
            torch.relu(self.body(state)) + self.table[:8]
        )  # HIDDEN (TorchScript takes no globals)
        return torch.tanh(self.mu(hidden)), torch.zeros(state.shape[0], 1)


SMALL = OBS_DIM * HIDDEN + HIDDEN + HIDDEN + 1  # parameters besides the table


def table_for(megabytes: float) -> int:
    """The table length that makes the weights `megabytes` MB (10^6 bytes) in float32."""
    return max(HIDDEN, round(megabytes * 1e6 / 4) - SMALL)


def meta(table: int) -> dict[str, Any]:
    return {"obs_dim": OBS_DIM, "action_dim": 1, "table": table}


def build(metadata: dict[str, Any]) -> SizedActor:
    """The factory for state_dict / safetensors checkpoints of this actor."""
    return SizedActor(int(metadata["table"]))


def seeded(table: int, seed: int) -> SizedActor:
    torch.manual_seed(seed)
    actor = SizedActor(table)
    with torch.no_grad():
        actor.table.normal_(0, 0.01)
    return actor.eval()


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
