"""The model routes' one implementation, used by the fast lane and by the FastAPI routes alike:
`POST {prefix}/predict` (the original API) here and OIP v2 `infer` (infer.py), dispatched by
`handle_model_request`, which also records every request's metrics.

Built for the hot path: orjson parsing, validation by hand (booleans are not numbers, NaN and
infinities are refused, float32 range, bounds), one tensor built from the list, the registry read
once per request without a thread hop, and the response written with orjson.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import torch

from ..registry import LiveModel
from ..validation import Expectations
from .errors import ApiError, Reply, Style, error_reply, json_headers
from .fleet import replica_header, replica_name
from .infer import infer
from .modelcall import (
    REQUEST_ID_HEADER,
    answer,
    asked_version,
    check_bounds,
    check_row,
    force_reload,
    json_type,
    parse_json,
)
from .named import forward_named, rows_of
from .names import VERSION_HEADER
from .state import ModelHandle, Runtime

__all__ = ["handle_model_request", "parse_json", "predict"]


async def predict(runtime: Runtime, handle: ModelHandle, body: bytes, query: bytes,
                  authorization: bytes | None, version: bytes | str | None = None,
                  session: bytes | None = None) -> Reply:  # fmt: skip
    """`POST {prefix}/predict`: `{"state": [...]}` or `{"states": [[...], ...]}`, optionally with
    `"version"` (or the `X-Model-Version` header) naming the resident version that answers."""
    force = force_reload(query) if query else False
    if force:
        runtime.require_admin(authorization)
    payload = parse_json(body)
    live = await handle.live(force_reload=force)
    meta = handle.meta(live)
    try:
        expect = live.expect
        if type(payload) is not dict:
            raise ApiError(
                422,
                f'the body must be a JSON object with "state" or "states", not {json_type(payload)}',
            )
        asked = None
        if len(payload) != 1:
            if "version" in payload:
                payload = dict(payload)
                asked = payload.pop("version")
                if type(asked) is not str:
                    raise ApiError(422, f'"version" must be a string, not {json_type(asked)}')
            if len(payload) != 1:
                extra = sorted(set(payload) - {"state", "states", "inputs"})
                raise ApiError(422, f"unknown field(s) {', '.join(map(repr, extra))}" if extra
                               else 'send either "state" or "states", not both'
                               if "inputs" not in payload else
                               'send "inputs" (named inputs) or "state"/"states", not both')  # fmt: skip
        if asked is not None or version is not None:
            live = handle.pick(asked_version(asked, version) or "")
            meta, expect = handle.meta(live), live.expect
        elif handle.canary is not None:
            picked = handle.canary.pick(session.decode("latin-1") if session else None)
            if picked is not None:
                live = picked
                meta, expect = handle.meta(live), live.expect
        if expect.inputs is not None or "inputs" in payload:
            result = await _named(runtime, live, expect, payload)
            answered = live
        else:
            x, batched = _policy_input(runtime, handle, expect, payload)
            pinned = asked is not None or version is not None
            answered, values = await answer(handle, live, x, pinned)
            result = {"actions": values} if batched else {"action": values[0]}
        if answered is not live:
            meta = handle.meta(answered)
    except ApiError as exc:
        return error_reply(exc, "detail", [(VERSION_HEADER, meta.header), replica_header()])
    request_id = runtime.ids.issue(meta.sha256)
    out: dict[str, Any] = result
    out["model_version"] = meta.mtime
    out["version"] = meta.tag
    out["load_count"] = handle.registry.load_count
    out["checkpoint"] = meta.checkpoint
    out["sha256"] = meta.sha256
    out["replica"] = replica_name()
    out["request_id"] = request_id
    data = orjson.dumps(out)
    return Reply(200, data, [*json_headers(data), (VERSION_HEADER, meta.header), replica_header(),
                             (REQUEST_ID_HEADER, request_id.encode())])  # fmt: skip


async def _named(runtime: Runtime, live: LiveModel, expect: Expectations,
                 payload: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """`{"inputs": {...}}` for a model with named inputs: `{"outputs": {...}}`."""
    if expect.inputs is None:
        raise ApiError(422, 'this model is a policy: send "state" or "states", not "inputs"')
    if "inputs" not in payload:
        raise ApiError(
            422, f'this model takes named inputs: send {{"inputs": {{...}}}} ({expect.named()})'
        )
    tensors, batched = rows_of(payload["inputs"], expect, runtime.settings.max_batch)
    outputs = await forward_named(live, tensors)
    return {"outputs": outputs if batched else {name: rows[0] for name, rows in outputs.items()}}


def _policy_input(runtime: Runtime, handle: ModelHandle, expect: Expectations,
                  payload: dict[str, Any]) -> tuple[torch.Tensor, bool]:  # fmt: skip
    """`{"state": [...]}` or `{"states": [[...], ...]}` for a policy, checked: the states as one
    tensor, and whether they were a batch."""
    state = payload.get("state")
    if state is not None:
        rows = [check_row(state, expect.obs_dim, "state")]
        batched = False
    elif "states" in payload:
        states = payload["states"]
        if type(states) is not list:
            raise ApiError(422, f'"states" must be a list of states, not {json_type(states)}')
        if not states:
            raise ApiError(422, '"states" is an empty batch')
        if len(states) > runtime.settings.max_batch:
            raise ApiError(
                422,
                f'"states" has {len(states)} states, at most {runtime.settings.max_batch} allowed',
            )
        rows = [check_row(s, expect.obs_dim, f"states[{b}]") for b, s in enumerate(states)]
        if expect.obs_dim is None and len({len(r) for r in rows}) > 1:
            raise ApiError(422, "the states in a batch must all have the same length")
        batched = True
    else:
        raise ApiError(
            422, 'the body needs a "state" (list of numbers) or "states" (list of lists)'
        )
    check_bounds(expect.obs_bounds, rows, "states" if batched else "state", batched)
    try:
        # through numpy: ~2.5x faster than torch.tensor(list) for one state, ~2x for 64
        x = torch.from_numpy(np.array(rows, dtype=np.float32))
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ApiError(422, f"the state is not a list of numbers: {exc}") from None
    buffer = handle.buffer
    if buffer is not None:  # real states only: they passed every check above
        buffer.record(rows)
    return x, batched


async def handle_model_request(
    runtime: Runtime,
    kind: str,
    name: str | None,
    body: bytes,
    query: bytes,
    authorization: bytes | None,
    header_length: bytes | None,
    version: bytes | str | None = None,
    session: bytes | None = None,
) -> Reply:
    """Answer one predict (`kind="rl"`) or infer (`kind="oip"`) request and record its metrics.
    `version`: the `X-Model-Version` request header, or OIP's version path segment; `session`:
    the `X-Session-Id` header. Every error becomes a JSON reply here; nothing escapes as a 500
    page."""
    started = time.perf_counter()
    style: Style = "oip" if kind == "oip" else "detail"
    label = "unknown"
    try:
        handle = runtime.model(name)
        label = handle.name
        if kind == "oip":
            reply = await infer(runtime, handle, body, header_length, version, session)
        else:
            reply = await predict(runtime, handle, body, query, authorization, version, session)
    except Exception as exc:
        reply = error_reply(exc, style)
    runtime.metrics.observe(label, reply.status, time.perf_counter() - started)
    runtime.live.record(label, reply.status, time.perf_counter() - started, reply)
    return reply
