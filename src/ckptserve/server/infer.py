"""OIP v2 `POST /v2/models/{name}/infer` (and `.../versions/{version}/infer`): JSON tensors or the
binary tensor extension that `tritonclient` sends by default, answered by `modelcall`'s one path."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import torch

from ..registry import LiveModel
from ..validation import Expectations
from .errors import ApiError, Reply, error_reply
from .fleet import replica_header, replica_name
from .modelcall import (
    REQUEST_ID_HEADER,
    answer,
    asked_version,
    check_bounds,
    check_row,
    json_type,
    parse_json,
    short,
)
from .named import forward_named
from .names import VERSION_HEADER
from .schemas import F32_MAX
from .state import ModelHandle, Runtime

__all__ = ["infer"]


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
        raise ApiError(400, f"{where}parameters must be an object, not {json_type(params)}")
    return params


def _oip_input(request: dict[str, Any], binary: memoryview) -> torch.Tensor:
    inputs = request.get("inputs")
    if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        raise ApiError(400, 'the request needs exactly one input, named "state"')
    spec = inputs[0]
    if spec.get("name") != "state":
        raise ApiError(400, f'unknown input {short(spec.get("name"))}: the input is named "state"')
    return _tensor(spec, "state", binary, "[batch, obs_dim]")[0]


def _tensor(spec: dict[str, Any], name: str, binary: memoryview,
            wanted: str) -> tuple[torch.Tensor, int]:  # fmt: skip
    """One input tensor, `[batch, size]`, from its JSON data or from the front of `binary`; and
    how many bytes of `binary` it took."""
    datatype = spec.get("datatype")
    dtype = _DTYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise ApiError(400, f'input "{name}" must be FP32 (or FP64), not {short(datatype)}')
    raw = spec.get("shape")
    dims = [_dimension(d) for d in raw] if type(raw) is list and 1 <= len(raw) <= 2 else [None]
    shape = [d for d in dims if d is not None]
    if len(shape) != len(dims):
        raise ApiError(400, f'input "{name}" needs a shape {wanted}, not {short(raw)}')
    if len(shape) == 1:
        shape = [1, shape[0]]
    count = shape[0] * shape[1]
    size = _parameters(spec, f'input "{name}" ').get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or size > len(binary):
            raise ApiError(400, f"binary_data_size {short(size)} does not fit the request body")
        if size != count * dtype.itemsize:
            raise ApiError(
                422,
                f'input "{name}" has {size} bytes, expected {count * dtype.itemsize} for shape {shape}',
            )
        array = np.frombuffer(binary[:size], dtype=dtype).astype(np.float32)
        x = torch.from_numpy(array.reshape(shape))
        bad = ~torch.isfinite(x) | (x.abs() > F32_MAX)
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            raise ApiError(422, f'input "{name}"[{b}][{i}] is not a finite number')
        return x, size
    flat = _flatten(spec.get("data"))
    if len(flat) != count:
        raise ApiError(
            422, f'input "{name}" has {len(flat)} values, expected {count} for shape {shape}'
        )
    if flat:
        check_row(flat, None, f'input "{name}" data')
    # reshaped by numpy: a torch reshape costs a request 2 µs more
    return torch.from_numpy(np.array(flat, dtype=np.float32).reshape(shape)), 0


def _named_inputs(request: dict[str, Any], binary: memoryview, expect: Expectations,
                  max_batch: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """A named-input model's tensors, one per input it takes (binary ones in request order)."""
    declared = dict(expect.inputs or ())
    specs = request.get("inputs")
    if type(specs) is not list or not all(type(spec) is dict for spec in specs):
        raise ApiError(400, f"the request needs one input per name: {expect.named()}")
    names = [spec.get("name") for spec in specs]
    if any(type(name) is not str for name in names):
        raise ApiError(400, f"every input needs a name, a string: the model takes {expect.named()}")
    if sorted(names) != sorted(declared) or len(set(names)) != len(names):
        raise ApiError(
            400,
            f"inputs {', '.join(map(short, names)) or 'none'}: the model takes {expect.named()}",
        )
    tensors: dict[str, torch.Tensor] = {}
    for spec, name in zip(specs, names, strict=True):
        size = declared[name]
        x, used = _tensor(spec, name, binary, f"[batch, {size}]")
        binary = binary[used:]
        if x.shape[1] != size:
            raise ApiError(
                422, f'input "{name}" has shape {list(x.shape)}, expected [batch, {size}]'
            )
        tensors[name] = x
    batches = {int(x.shape[0]) for x in tensors.values()}
    if len(batches) > 1:
        raise ApiError(422, f"the inputs have different batch sizes: {sorted(batches)}")
    (batch,) = batches
    if batch == 0:
        raise ApiError(422, "the inputs are an empty batch")
    if batch > max_batch:
        raise ApiError(422, f"batch of {batch}, at most {max_batch} allowed")
    return tensors


def _wanted_outputs(request: dict[str, Any], expect: Expectations) -> list[tuple[str, bool]]:
    """The outputs asked for (all, by default), each with whether it is sent as binary data."""
    declared = [name for name, _ in expect.outputs or ()]
    default = bool(_parameters(request, "").get("binary_data_output"))
    asked = request.get("outputs")
    if asked is None or asked == []:  # none named: all of them, as Triton answers
        return [(name, default) for name in declared]
    if type(asked) is not list:
        raise ApiError(400, '"outputs" must be a list')
    wanted: list[tuple[str, bool]] = []
    for o in asked:
        if type(o) is not dict or o.get("name") not in declared:
            name = o.get("name") if type(o) is dict else o
            raise ApiError(
                400, f"unknown output {short(name)}: the outputs are {', '.join(declared)}"
            )
        if any(name == o["name"] for name, _ in wanted):
            raise ApiError(400, f"output {short(o['name'])} is asked for twice")
        wanted.append(
            (o["name"], bool(_parameters(o, f'output "{o["name"]}" ').get("binary_data")))
        )
    return wanted


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
        raise ApiError(400, f'the request "id" must be a string, not {json_type(request["id"])}')
    current = handle.registry.current
    if current is not None and current.expect.inputs is not None:
        return await _infer_named(runtime, handle, request, binary, version, session)
    try:
        x = _oip_input(request, binary)  # a policy's one input, checked before any load
    except ApiError as refused:
        if current is not None or not await _takes_named_inputs(handle):
            raise refused from None
        # nothing was live: the model now loaded takes named inputs
        return await _infer_named(runtime, handle, request, binary, version, session)
    want_binary = _binary_output(request)
    live = await handle.live()
    meta = handle.meta(live)
    try:
        live, meta = _picked(handle, live, meta, version, session)
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
            check_bounds(expect.obs_bounds, x.tolist(), 'input "state"')
        buffer = handle.buffer
        if buffer is not None:  # real states only: they passed every check above
            buffer.record(x)
        answered, values = await answer(handle, live, x, version is not None)
        if answered is not live:
            meta = handle.meta(answered)
    except ApiError as exc:
        return error_reply(exc, "oip", [(VERSION_HEADER, meta.header), replica_header()])
    output, tail = _output("action", values, want_binary)
    return _respond(runtime, handle, meta, request, [output], tail)


async def _takes_named_inputs(handle: ModelHandle) -> bool:
    """Whether the model, loaded now if nothing was live, takes named inputs (False when none
    can be loaded: the request's own error is the answer then)."""
    try:
        return (await handle.live()).expect.inputs is not None
    except Exception:
        return False


async def _infer_named(runtime: Runtime, handle: ModelHandle, request: dict[str, Any],
                       binary: memoryview, version: bytes | str | None,
                       session: bytes | None) -> Reply:  # fmt: skip
    """`infer` for a model with named inputs: one input tensor per name, its outputs by name."""
    live = await handle.live()
    meta = handle.meta(live)
    try:
        live, meta = _picked(handle, live, meta, version, session)
        expect = live.expect
        if expect.inputs is None:
            raise ApiError(422, 'this version is a policy: send one input, named "state"')
        tensors = _named_inputs(request, binary, expect, runtime.settings.max_batch)
        wanted = _wanted_outputs(request, expect)
        values = await forward_named(live, tensors)
    except ApiError as exc:
        return error_reply(exc, "oip", [(VERSION_HEADER, meta.header), replica_header()])
    outputs, tail = [], b""
    for name, as_binary in wanted:
        output, data = _output(name, values[name], as_binary)
        outputs.append(output)
        tail += data
    return _respond(runtime, handle, meta, request, outputs, tail)


def _picked(handle: ModelHandle, live: LiveModel, meta: Any, version: bytes | str | None,
            session: bytes | None) -> tuple[LiveModel, Any]:  # fmt: skip
    """The version that answers: the one the path names, else a canary's pick, else `live`."""
    if version is not None:
        live = handle.pick(asked_version(None, version) or "")
        return live, handle.meta(live)
    if handle.canary is not None:
        picked = handle.canary.pick(session.decode("latin-1") if session else None)
        if picked is not None:
            return picked, handle.meta(picked)
    return live, meta


def _output(name: str, rows: list[list[float]], as_binary: bool) -> tuple[dict[str, Any], bytes]:
    """One output tensor, and its bytes when it is sent as binary data (else b"")."""
    output: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": [len(rows), len(rows[0])]}
    if as_binary:
        tail = np.asarray(rows, dtype="<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(tail)}
        return output, tail
    output["data"] = [v for row in rows for v in row]
    return output, b""


def _respond(runtime: Runtime, handle: ModelHandle, meta: Any, request: dict[str, Any],
             outputs: list[dict[str, Any]], tail: bytes) -> Reply:  # fmt: skip
    request_id = runtime.ids.issue(meta.sha256)
    response: dict[str, Any] = {
        "model_name": handle.name,
        "model_version": meta.tag,
        "outputs": outputs,
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
