"""Models with named inputs and outputs (a critic's `forward(state, action) -> q`), as both model
routes take them: `POST {prefix}/predict` with `{"inputs": {"state": [...], "action": [...]}}`
(one row each, or a list of rows each) and OIP v2 `infer` with one input tensor per name.

The checkpoint's metadata names them (`"inputs": {"state": 8, "action": 1}`, `"outputs":
{"q": 1}`; `publish(..., example_inputs=...)` writes it). The inputs are checked as a policy's
state is (finite float32 numbers, the sizes the metadata states, one batch size for all), the
outputs must be finite and of the stated sizes. The rollout's policy machinery (shadow
comparison on live states, rollback on non-finite actions, dynamic batching) is for policies:
a named-input model is answered directly, off the event loop for passes that take long.
"""

from __future__ import annotations

import math
from typing import Any

import anyio.to_thread
import numpy as np
import torch

from ..inference import call_named
from ..registry import LiveModel
from ..validation import Expectations
from .batching import FORWARD_COST, pass_clock
from .errors import ApiError
from .modelcall import check_row, json_type

__all__ = ["forward_named", "rows_of"]


def rows_of(
    inputs: Any, expect: Expectations, max_batch: int
) -> tuple[dict[str, torch.Tensor], bool]:
    """`{"state": [...], "action": [...]}` (one row each) or `{"state": [[...], ...], ...}` (a
    batch each) as one `[batch, size]` tensor per input, and whether it was a batch."""
    declared = dict(expect.inputs or ())
    if type(inputs) is not dict:
        raise ApiError(422, f'"inputs" must be an object of named inputs, not {json_type(inputs)}')
    if set(inputs) != set(declared):
        raise ApiError(
            422,
            f'"inputs" has {_names(inputs)}; the model takes {expect.named()} (one row of numbers '
            "each, or a list of rows each)",
        )
    tensors: dict[str, torch.Tensor] = {}
    batched: bool | None = None
    batch = 0
    for name, size in declared.items():
        value = inputs[name]
        where = f"inputs.{name}"
        is_batch = type(value) is list and bool(value) and type(value[0]) is list
        if batched is not None and is_batch != batched:
            raise ApiError(422, "send one row for every input, or a batch of rows for every input")
        batched = is_batch
        if is_batch:
            if len(value) > max_batch:
                raise ApiError(422, f"{where} has {len(value)} rows, at most {max_batch} allowed")
            rows = [check_row(r, size, f"{where}[{b}]") for b, r in enumerate(value)]
        else:
            rows = [check_row(value, size, where)]
        if tensors and len(rows) != batch:
            raise ApiError(422, f"{where} has {len(rows)} rows, the other inputs {batch}")
        batch = len(rows)
        tensors[name] = torch.from_numpy(np.array(rows, dtype=np.float32))
    return tensors, bool(batched)


def _names(inputs: dict[str, Any]) -> str:
    return ", ".join(sorted(map(repr, inputs))) or "no inputs"


def _run(live: LiveModel, inputs: dict[str, torch.Tensor]) -> dict[str, list[list[float]]]:
    expect = live.expect
    outputs = expect.outputs or ()
    batch = next(iter(inputs.values())).shape[0]
    clock = pass_clock()
    started = clock()
    try:
        got = call_named(live.model, inputs, [name for name, _ in outputs])
    except Exception as exc:
        raise ApiError(
            422, f"the model cannot run on these inputs: {type(exc).__name__}: {exc}"
        ) from None
    FORWARD_COST.record(live, batch, clock() - started)
    answer: dict[str, list[list[float]]] = {}
    for name, size in outputs:
        out = got[name]
        if tuple(out.shape) != (batch, size):
            raise ApiError(
                500, f"model returned {name} of shape {list(out.shape)}, expected [{batch}, {size}]"
            )
        rows: list[list[float]] = out.tolist()
        for row in rows:
            for v in row:
                if not -math.inf < v < math.inf:
                    raise ApiError(422, f"the model's {name} for these inputs is not finite")
        answer[name] = rows
    return answer


async def forward_named(
    live: LiveModel, inputs: dict[str, torch.Tensor]
) -> dict[str, list[list[float]]]:
    """The outputs of `live` for `inputs`, by name, one list of rows each."""
    if FORWARD_COST.off_loop(live, next(iter(inputs.values())).shape[0]):  # a long pass
        return await anyio.to_thread.run_sync(_run, live, inputs)  # must not hold the loop
    return _run(live, inputs)
