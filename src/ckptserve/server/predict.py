"""The model routes' one implementation, used by the fast lane and by the FastAPI routes alike:
`POST {prefix}/predict` (the original API) and OIP v2 `POST /v2/models/{name}/infer`.

Built for the hot path: orjson parsing, validation by hand (booleans are not numbers, NaN and
infinities are refused, float32 range, bounds), one tensor built from the list, the registry read
once per request without a thread hop, and the response written with orjson.
"""

from __future__ import annotations

import json
import math
import reprlib
import time
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio.to_thread
import numpy as np
import orjson
import torch

from ..inference import act
from ..registry import LiveModel
from ..validation import Bounds
from .batching import OFF_LOOP_ROWS
from .errors import ApiError, Reply, Style, error_reply, json_headers
from .fleet import replica_header, replica_name
from .names import VERSION_HEADER
from .schemas import F32_MAX
from .state import ModelHandle, Runtime

__all__ = ["REQUEST_ID_HEADER", "handle_model_request", "infer", "parse_json", "predict"]

#: Every answer carries its signed request id (rollout/feedback.py) in this header and its body.
REQUEST_ID_HEADER = b"x-request-id"

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class _NonFinite(ValueError):
    pass


class _NonFiniteAction(ApiError):
    """The model's action for states that passed every input check is not finite."""


class _ModelFailed(ApiError):
    """The model raised on states that passed every input check."""


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def parse_json(body: bytes) -> Any:
    """Parse a JSON body: malformed is a 400, the non-standard NaN/Infinity literals a 422."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses NaN/Infinity literals, 1e400 and huge integers; tell those apart.
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except _NonFinite as exc:
        raise ApiError(422, f"{exc} is not a finite number") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


def _describe(v: Any) -> str:
    if isinstance(v, bool):
        return f"a boolean ({'true' if v else 'false'}), not a number"
    if isinstance(v, (int, float)):
        return f"{v!r}, not a finite float32 number"
    return f"a {type(v).__name__ if v is not None else 'null'}, not a number"


def check_row(row: Any, obs_dim: int | None, where: str) -> list[float]:
    """A list of finite numbers of the expected length, or a 422 that says what is wrong."""
    if type(row) is not list:
        raise ApiError(422, f"{where} must be a list of numbers, not {_json_type(row)}")
    if obs_dim is not None and len(row) != obs_dim:
        raise ApiError(422, f"{where} has {len(row)} values, expected {obs_dim}")
    if not row:
        raise ApiError(422, f"{where} is empty")
    for v in row:
        t = type(v)
        if (t is not float and t is not int) or not (-F32_MAX <= v <= F32_MAX):
            break
    else:
        return row
    for i, v in enumerate(row):
        t = type(v)
        if (t is not float and t is not int) or not (-F32_MAX <= v <= F32_MAX):
            raise ApiError(422, f"{where}[{i}] is {_describe(v)}")
    return row  # pragma: no cover


def _short(v: Any) -> str:
    """A client's value in an error message: its repr, cut short (any depth, any size)."""
    return _REPR.repr(v)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", str: "a string", bool: "a boolean", list: "a list"}.get(
        type(v), "a number"
    )


def _check_bounds(
    bounds: Bounds | None, rows: list[list[float]], where: str, batched: bool = True
) -> None:
    if bounds is None:
        return
    for b, row in enumerate(rows):
        hit = bounds.first_violation(row)
        if hit is not None:
            i, v = hit
            at = f"{where}[{b}][{i}]" if batched else f"{where}[{i}]"
            raise ApiError(422, f"{at}={v!r} is outside the observation bounds{_range(bounds, i)}")


def _range(bounds: Bounds, i: int) -> str:
    low, high = bounds.at(i)
    return f" [{low}, {high}]"


def _force_reload(query: bytes) -> bool:
    force = False
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "force_reload":
            low = value.lower()
            if low in _TRUE:
                force = True
            elif low not in _FALSE:
                raise ApiError(422, f"force_reload must be true or false, not {value!r}")
    return force


async def _forward_maybe_batched(handle: ModelHandle, live: LiveModel,
                                 x: torch.Tensor) -> list[list[float]]:  # fmt: skip
    batcher = handle.batcher
    if batcher is not None:
        return _rows(await batcher.run(live, x, _run_model))
    if x.shape[0] >= OFF_LOOP_ROWS:  # a large batch must not hold the event loop
        return _rows(await anyio.to_thread.run_sync(_run_model, live, x))
    return _rows(_run_model(live, x))


def _run_model(live: LiveModel, x: torch.Tensor) -> torch.Tensor:
    """The model's actions for `x` as a `[batch, action_dim]` tensor (a 422/500 when not)."""
    try:
        action = act(live.model, x)
    except Exception as exc:
        raise _ModelFailed(
            422, f"the model cannot run on this input: {type(exc).__name__}: {exc}"
        ) from None
    want = live.expect.action_dim
    if action.dim() == 1:
        action = action.unsqueeze(-1)
    if action.dim() != 2 or action.shape[0] != x.shape[0] or action.shape[1] != want:
        raise ApiError(
            500,
            f"model returned an action of shape {list(action.shape)}, expected [{x.shape[0]}, {want}]",
        )
    return action


def _rows(action: torch.Tensor) -> list[list[float]]:
    values: list[list[float]] = action.tolist()
    for row in values:
        for a in row:
            if not -math.inf < a < math.inf:
                raise _NonFiniteAction(422, "the model's action for this state is not finite")
    return values


def _asked_version(body: str | None, header: bytes | str | None) -> str | None:
    """The version a request names: `"version"` in its body, else the `X-Model-Version` header
    (percent-decoded, as responses encode it) or OIP's version path."""
    if isinstance(header, bytes):
        header = unquote(header.decode("latin-1"), errors="surrogateescape")
    if body is None:
        return header
    if header is not None and header != body:
        raise ApiError(422, '"version" and the X-Model-Version header name different versions')
    return body


async def _answer(handle: ModelHandle, live: LiveModel, x: torch.Tensor,
                  pinned: bool) -> tuple[LiveModel, list[list[float]]]:  # fmt: skip
    """The actions of `live` for `x` (states that passed every input check), and the version
    that gave them. A version that misbehaves on them is rolled back at once (registry.rollout:
    the live one for non-finite actions; a canary also for raising where the live version does
    not) and, unless the client named it, the version that answers now is asked instead."""
    try:
        return live, await _forward_maybe_batched(handle, live, x)
    except _NonFiniteAction as exc:
        failure: ApiError = exc
        reason = f"non-finite actions on live traffic ({x.shape[0]} states that passed the checks)"
    except _ModelFailed as exc:
        canary = handle.canary
        incumbent = handle.registry.current
        if pinned or canary is None or canary.canary is not live or incumbent is None:
            raise
        values = await _forward_maybe_batched(handle, incumbent, x)  # the input is fine if so
        reason = f"raised on live traffic where the live version does not: {exc.detail}"
        await anyio.to_thread.run_sync(handle.registry.rollout.misbehaved, live, reason)
        return incumbent, values
    now = await anyio.to_thread.run_sync(handle.registry.rollout.misbehaved, live, reason)
    if pinned or now is None or now is live:
        raise failure
    return now, await _forward_maybe_batched(handle, now, x)


async def predict(runtime: Runtime, handle: ModelHandle, body: bytes, query: bytes,
                  authorization: bytes | None, version: bytes | str | None = None,
                  session: bytes | None = None) -> Reply:  # fmt: skip
    """`POST {prefix}/predict`: `{"state": [...]}` or `{"states": [[...], ...]}`, optionally with
    `"version"` (or the `X-Model-Version` header) naming the resident version that answers."""
    force = _force_reload(query) if query else False
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
                f'the body must be a JSON object with "state" or "states", not {_json_type(payload)}',
            )
        asked = None
        if len(payload) != 1:
            if "version" in payload:
                payload = dict(payload)
                asked = payload.pop("version")
                if type(asked) is not str:
                    raise ApiError(422, f'"version" must be a string, not {_json_type(asked)}')
            if len(payload) != 1:
                extra = sorted(set(payload) - {"state", "states"})
                raise ApiError(422, f"unknown field(s) {', '.join(map(repr, extra))}" if extra
                               else 'send either "state" or "states", not both')  # fmt: skip
        if asked is not None or version is not None:
            live = handle.pick(_asked_version(asked, version) or "")
            meta, expect = handle.meta(live), live.expect
        elif handle.canary is not None:
            picked = handle.canary.pick(session.decode("latin-1") if session else None)
            if picked is not None:
                live = picked
                meta, expect = handle.meta(live), live.expect
        state = payload.get("state")
        if state is not None:
            rows = [check_row(state, expect.obs_dim, "state")]
            batched = False
        elif "states" in payload:
            states = payload["states"]
            if type(states) is not list:
                raise ApiError(422, f'"states" must be a list of states, not {_json_type(states)}')
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
        _check_bounds(expect.obs_bounds, rows, "states" if batched else "state", batched)
        try:
            # through numpy: ~2.5x faster than torch.tensor(list) for one state, ~2x for 64
            x = torch.from_numpy(np.array(rows, dtype=np.float32))
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ApiError(422, f"the state is not a list of numbers: {exc}") from None
        buffer = handle.buffer
        if buffer is not None:  # real states only: they passed every check above
            buffer.record(rows)
        answered, values = await _answer(handle, live, x, asked is not None or version is not None)
        if answered is not live:
            meta = handle.meta(answered)
    except ApiError as exc:
        return error_reply(exc, "detail", [(VERSION_HEADER, meta.header), replica_header()])
    request_id = runtime.ids.issue(meta.sha256)
    out: dict[str, Any] = {"actions": values} if batched else {"action": values[0]}
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


# ---- Open Inference Protocol v2 -------------------------------------------------------------

_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}


def _flatten(data: Any) -> list[Any]:
    """`data` as one row-major list: flat already, or one list per row (no deeper)."""
    if type(data) is not list:
        raise ApiError(400, 'input "data" must be a list')
    if not data or type(data[0]) is not list:
        return data
    flat: list[Any] = []
    for row in data:
        if type(row) is not list:
            raise ApiError(400, 'input "data" must be flat or a list of rows, not a mix')
        flat.extend(row)
    return flat


def _dimension(d: Any) -> int | None:
    """A shape entry: a JSON integer, also written as `4.0` (JSON Schema's integers include it)."""
    t = type(d)
    if t is int:
        return d if d >= 0 else None
    if t is float and d.is_integer() and d >= 0:
        return int(d)
    return None


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    params = holder.get("parameters", {})
    if type(params) is not dict:
        raise ApiError(400, f"{where}parameters must be an object, not {_json_type(params)}")
    return params


def _oip_input(request: dict[str, Any], binary: memoryview) -> torch.Tensor:
    inputs = request.get("inputs")
    if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        raise ApiError(400, 'the request needs exactly one input, named "state"')
    spec = inputs[0]
    if spec.get("name") != "state":
        raise ApiError(400, f'unknown input {_short(spec.get("name"))}: the input is named "state"')
    datatype = spec.get("datatype")
    dtype = _DTYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise ApiError(400, f'input "state" must be FP32 (or FP64), not {_short(datatype)}')
    raw = spec.get("shape")
    dims = [_dimension(d) for d in raw] if type(raw) is list and 1 <= len(raw) <= 2 else [None]
    shape = [d for d in dims if d is not None]
    if len(shape) != len(dims):
        raise ApiError(400, f'input "state" needs a shape [batch, obs_dim], not {_short(raw)}')
    if len(shape) == 1:
        shape = [1, shape[0]]
    count = shape[0] * shape[1]
    size = _parameters(spec, 'input "state" ').get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or size > len(binary):
            raise ApiError(400, f"binary_data_size {_short(size)} does not fit the request body")
        if size != count * dtype.itemsize:
            raise ApiError(
                422,
                f'input "state" has {size} bytes, expected {count * dtype.itemsize} for shape {shape}',
            )
        array = np.frombuffer(binary[:size], dtype=dtype).astype(np.float32)
        x = torch.from_numpy(array).reshape(shape)
        bad = ~torch.isfinite(x) | (x.abs() > F32_MAX)
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            raise ApiError(422, f'input "state"[{b}][{i}] is not a finite number')
        return x
    flat = _flatten(spec.get("data"))
    if len(flat) != count:
        raise ApiError(
            422, f'input "state" has {len(flat)} values, expected {count} for shape {shape}'
        )
    if flat:
        check_row(flat, None, 'input "state" data')
    return torch.from_numpy(np.array(flat, dtype=np.float32)).reshape(shape)


def _binary_output(request: dict[str, Any]) -> bool:
    outputs = request.get("outputs")
    if outputs is not None:
        if type(outputs) is not list:
            raise ApiError(400, '"outputs" must be a list')
        binary = False
        for o in outputs:
            if type(o) is not dict or o.get("name") != "action":
                raise ApiError(400, 'unknown output requested: the output is named "action"')
            binary = binary or bool(_parameters(o, 'output "action" ').get("binary_data"))
        return binary
    return bool(_parameters(request, "").get("binary_data_output"))


async def infer(runtime: Runtime, handle: ModelHandle, body: bytes, header_length: bytes | None,
                version: bytes | str | None = None, session: bytes | None = None) -> Reply:  # fmt: skip
    """`POST /v2/models/{name}/infer` (or `.../versions/{version}/infer`, answered by that
    resident version), JSON or with the binary tensor extension."""
    view = memoryview(body)
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ApiError(400, "Inference-Header-Content-Length is not an integer") from None
        if not 0 <= n <= len(body):
            raise ApiError(400, "Inference-Header-Content-Length is larger than the body")
        request, binary = parse_json(bytes(view[:n])), view[n:]
    else:
        request, binary = parse_json(body), view[len(body) :]
    if type(request) is not dict:
        raise ApiError(400, "the inference request must be a JSON object")
    if "id" in request and type(request["id"]) is not str:
        raise ApiError(400, f'the request "id" must be a string, not {_json_type(request["id"])}')
    x = _oip_input(request, binary)
    want_binary = _binary_output(request)
    live = await handle.live()
    meta = handle.meta(live)
    try:
        if version is not None:
            live = handle.pick(_asked_version(None, version) or "")
            meta = handle.meta(live)
        elif handle.canary is not None:
            picked = handle.canary.pick(session.decode("latin-1") if session else None)
            if picked is not None:
                live = picked
                meta = handle.meta(live)
        expect = live.expect
        if x.shape[0] == 0:
            raise ApiError(422, 'input "state" is an empty batch')
        if x.shape[0] > runtime.settings.max_batch:
            raise ApiError(
                422, f"batch of {x.shape[0]} states, at most {runtime.settings.max_batch} allowed"
            )
        if expect.obs_dim is not None and x.shape[1] != expect.obs_dim:
            raise ApiError(
                422, f'input "state" has shape {list(x.shape)}, expected [batch, {expect.obs_dim}]'
            )
        if expect.obs_bounds is not None:
            _check_bounds(expect.obs_bounds, x.tolist(), 'input "state"')
        buffer = handle.buffer
        if buffer is not None:  # real states only: they passed every check above
            buffer.record(x)
        answered, values = await _answer(handle, live, x, version is not None)
        if answered is not live:
            meta = handle.meta(answered)
    except ApiError as exc:
        return error_reply(exc, "oip", [(VERSION_HEADER, meta.header), replica_header()])
    request_id = runtime.ids.issue(meta.sha256)
    shape = [len(values), len(values[0])]
    output: dict[str, Any] = {"name": "action", "datatype": "FP32", "shape": shape}
    tail = b""
    if want_binary:
        tail = np.asarray(values, dtype="<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(tail)}
    else:
        output["data"] = [a for row in values for a in row]
    response: dict[str, Any] = {
        "model_name": handle.name,
        "model_version": meta.tag,
        "outputs": [output],
        "parameters": {"sha256": meta.sha256, "checkpoint": meta.checkpoint,
                       "load_count": handle.registry.load_count, "replica": replica_name(),
                       "request_id": request_id},
    }  # fmt: skip
    if "id" in request:
        response["id"] = request["id"]
    head = orjson.dumps(response)
    data = head + tail
    headers = [(b"content-type", b"application/octet-stream" if tail else b"application/json"),
               (b"content-length", str(len(data)).encode()), (VERSION_HEADER, meta.header),
               replica_header(), (REQUEST_ID_HEADER, request_id.encode())]  # fmt: skip
    if tail:
        headers.append((b"inference-header-content-length", str(len(head)).encode()))
    return Reply(200, data, headers)


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
