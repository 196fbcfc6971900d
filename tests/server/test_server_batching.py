"""Dynamic batching (`--batch-max-size`): the same answers as unbatched serving, gathered into
fewer forward passes, each response carrying the version that computed it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from serverkit import OBS_DIM, seeded, torch_script

from ckptserve import publish
from ckptserve.server import ModelSpec, Settings
from ckptserve.server.batching import PROBE, Batcher
from ckptserve.server.predict import handle_model_request
from ckptserve.server.state import Runtime


def _runtime(directory: Path, **options: Any) -> Runtime:
    runtime = Runtime(Settings(models=[ModelSpec(name="actor", path=str(directory))], **options))
    runtime.open_models()
    runtime.models["actor"].registry.get()
    return runtime


def _body(i: int) -> bytes:
    return orjson.dumps({"state": [0.1 * i - 0.7 * k for k in range(OBS_DIM)]})


async def _predict(runtime: Runtime, body: bytes) -> dict[str, Any]:
    reply = await handle_model_request(runtime, "rl", None, body, b"", None, None)
    assert reply.status == 200, reply.body
    out: dict[str, Any] = orjson.loads(reply.body)
    return out


def test_batched_serving_returns_the_same_actions_as_unbatched(model_dir: Path) -> None:
    """Concurrent requests are answered by fewer forward passes, with the unbatched answers."""
    plain = _runtime(model_dir, batch_max_size=1)
    batched = _runtime(model_dir, batch_max_size=8)
    batcher = batched.models["actor"].batcher
    assert plain.models["actor"].batcher is None and batcher is not None

    async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        bodies = [_body(i) for i in range(20)]
        expected = [await _predict(plain, b) for b in bodies]
        got = await asyncio.gather(*(_predict(batched, b) for b in bodies))
        return expected, list(got)

    expected, got = asyncio.run(both())
    for want, have in zip(expected, got, strict=True):
        assert have["action"] == pytest.approx(want["action"], abs=1e-6)
        assert have["sha256"] == want["sha256"]
    assert batcher.requests == batcher.queued == 20
    assert batcher.batches == 3  # 8 + 8 + 4 rows


def test_a_swap_inside_a_batch_answers_each_request_with_its_own_version(
    tmp_path: Path,
) -> None:
    """Requests that read the old version before a swap and the new one after it share a loop
    turn: one forward pass per version, and every response names the version that computed it."""
    directory = tmp_path / "models"
    old, new = torch_script(seeded(1)), torch_script(seeded(2))
    publish(old, directory)
    runtime = _runtime(directory, batch_max_size=16)
    registry = runtime.models["actor"].registry
    old_sha = registry.version.sha256 if registry.version else ""

    async def swap() -> None:
        publish(new, directory)
        registry.check()  # the new version is live for the requests that run after this one

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            _predict(runtime, _body(1)), _predict(runtime, _body(2)), swap(),
            _predict(runtime, _body(3)), _predict(runtime, _body(4)),
        )  # fmt: skip

    results = asyncio.run(scenario())
    replies = [r for r in results if r is not None]
    new_sha = registry.version.sha256 if registry.version else ""
    assert old_sha != new_sha
    assert [r["sha256"] for r in replies] == [old_sha, old_sha, new_sha, new_sha]
    for i, (reply, model) in enumerate(zip(replies, (old, old, new, new), strict=True), 1):
        state = torch.tensor([orjson.loads(_body(i))["state"]])
        with torch.inference_mode():
            want = model(state, True)[0][0].tolist()
        assert reply["action"] == pytest.approx(want, abs=1e-6)
    batcher = runtime.models["actor"].batcher
    assert batcher is not None and batcher.batches == 2 and batcher.requests == 4


def test_one_request_at_a_time_mostly_skips_the_queue(model_dir: Path) -> None:
    """Under light load requests run at once (no loop turn), all but one probe in PROBE + 1."""
    plain = _runtime(model_dir, batch_max_size=1)
    batched = _runtime(model_dir, batch_max_size=8)
    batcher = batched.models["actor"].batcher
    assert batcher is not None

    async def one_by_one() -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(await _predict(plain, _body(i)), await _predict(batched, _body(i)))
                for i in range(3 * (PROBE + 1))]  # fmt: skip

    for want, have in asyncio.run(one_by_one()):
        assert have["action"] == pytest.approx(want["action"], abs=1e-6)
    assert batcher.requests == batcher.batches == 3 * (PROBE + 1)
    assert batcher.queued == 3  # the probes


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    """A request with max_size rows or more is not held back or split."""
    calls: list[int] = []

    def forward(live: Any, x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x[:, :1] * 2

    batcher = Batcher(4)
    out = asyncio.run(batcher.run(object(), torch.ones(6, 3), forward))  # type: ignore[arg-type]
    assert calls == [6] and out.shape == (6, 1)


def test_a_failing_forward_fails_every_request_of_its_batch() -> None:
    """An exception in the shared forward pass reaches each waiting request."""

    def forward(live: Any, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    async def scenario() -> list[Any]:
        batcher = Batcher(8)
        live: Any = object()
        return await asyncio.gather(
            *(batcher.run(live, torch.ones(1, 3), forward) for _ in range(3)),
            return_exceptions=True,
        )

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)


def _picky(calls: list[int]) -> Any:
    """A forward that raises for any state whose first value is over 1 (out of range)."""

    def forward(live: Any, x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        if bool((x[:, 0] > 1).any()):
            raise ValueError("state out of range")
        return x[:, :1] * 2

    return forward


def _gather(batcher: Batcher, forward: Any, firsts: list[float]) -> list[Any]:
    async def scenario() -> list[Any]:
        live: Any = object()
        return await asyncio.gather(
            *(batcher.run(live, torch.tensor([[v, 0.0, 0.0]]), forward) for v in firsts),
            return_exceptions=True,
        )

    return asyncio.run(scenario())


def test_one_bad_request_fails_alone_for_a_few_extra_passes() -> None:
    """A failed batch is split in halves and retried: the 15 good requests of a batch of 16 get
    their answers, the bad one the error, for 1 + 2 log2(16) = 9 passes, not 1 + 16."""
    calls: list[int] = []
    firsts = [0.05 * i for i in range(16)]
    firsts[5] = 7.0
    results = _gather(Batcher(16), _picky(calls), firsts)
    for i, (value, result) in enumerate(zip(firsts, results, strict=True)):
        if i == 5:
            assert isinstance(result, ValueError), result
        else:
            assert isinstance(result, torch.Tensor) and result.item() == pytest.approx(2 * value)
    assert calls[0] == 16 and len(calls) == 9, calls


def test_good_requests_mixed_one_in_four_with_bad_ones_never_fail() -> None:
    """Every good request is answered and every bad one refused, in at most 2N - 1 passes."""
    calls: list[int] = []
    firsts = [5.0 if i % 4 == 3 else 0.5 for i in range(64)]
    batcher = Batcher(16)
    results = _gather(batcher, _picky(calls), firsts)
    bad = [i for i, r in enumerate(results) if isinstance(r, ValueError)]
    assert bad == [i for i in range(64) if i % 4 == 3], results
    assert all(isinstance(r, torch.Tensor) for i, r in enumerate(results) if i % 4 != 3)
    assert batcher.batches == len(calls) and len(calls) <= 4 * (2 * 16 - 1), calls


class _OutOfRange(torch.nn.Module):
    """A TorchScript-able actor that raises for a state value beyond 10."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(OBS_DIM, 1)

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if bool((state.abs() > 10).any()):
            raise ValueError("state out of range")
        return torch.tanh(self.linear(state))


def test_batched_requests_mixed_with_bad_ones_get_their_own_answers(tmp_path: Path) -> None:
    """The issue's case through the model route: --batch-max-size 16, a model that raises for
    out-of-range states, 300 good requests mixed 1-in-4 with bad ones: no good one fails, every
    bad one is a 422, and the good answers equal the unbatched ones."""
    directory = tmp_path / "models"
    torch.manual_seed(0)
    publish(torch.jit.script(_OutOfRange().eval()), directory)
    plain = _runtime(directory, batch_max_size=1)
    batched = _runtime(directory, batch_max_size=16)
    good = [orjson.dumps({"state": [0.01 * i] * OBS_DIM}) for i in range(300)]
    bodies: list[bytes] = []
    for i, body in enumerate(good):
        bodies.append(body)
        if i % 3 == 2:
            bodies.append(orjson.dumps({"state": [50.0] * OBS_DIM}))

    async def scenario() -> tuple[list[Any], list[Any]]:
        expected = [await _predict(plain, body) for body in good]
        replies = await asyncio.gather(
            *(handle_model_request(batched, "rl", None, b, b"", None, None) for b in bodies)
        )
        return expected, list(replies)

    expected, replies = asyncio.run(scenario())
    statuses = [r.status for r in replies]
    assert statuses.count(200) == 300 and statuses.count(422) == 100, statuses
    answers = [orjson.loads(r.body)["action"] for r in replies if r.status == 200]
    for want, have in zip(expected, answers, strict=True):
        assert have == pytest.approx(want["action"], abs=1e-6)
    for reply in replies:
        if reply.status == 422:
            assert b"out of range" in reply.body, reply.body
    batcher = batched.models["actor"].batcher
    assert batcher is not None and batcher.requests == 400, batcher.batches
