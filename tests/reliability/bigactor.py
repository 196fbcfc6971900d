"""A ~100 MB actor whose forward pass stays cheap: most of its bytes are a table it reads one
slice of. `make_big_actor` is the factory for its weights formats (`--factory bigactor:...`)."""

from __future__ import annotations

import torch

OBS_DIM = 4
TABLE = 25_000_000  # float32: 100 MB


class BigActor(torch.nn.Module):
    def __init__(self, table: int = TABLE) -> None:
        super().__init__()
        self.body = torch.nn.Linear(OBS_DIM, 8)
        self.mu = torch.nn.Linear(8, 1)
        self.table = torch.nn.Parameter(torch.zeros(table))

    def forward(
        self, state: torch.Tensor, deterministic: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.body(state)) + self.table[:8]
        return torch.tanh(self.mu(hidden)), torch.zeros(state.shape[0], 1)


def make_big_actor() -> BigActor:
    return BigActor()


def seeded_big(seed: int, table: int = TABLE) -> BigActor:
    torch.manual_seed(seed)
    actor = BigActor(table)
    with torch.no_grad():
        actor.table.normal_(0, 0.01)
    return actor.eval()
