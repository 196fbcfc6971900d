"""Request and response shapes, for the OpenAPI document. The model routes parse by hand (see
`predict.py`); these models describe what they accept and return."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

__all__ = [
    "ADMIN",
    "BINARY_TENSORS",
    "F32_MAX",
    "FEEDBACK_BODY",
    "RELOAD_BODY",
    "VERSION_REF",
    "ErrorResponse",
    "FeedbackResponse",
    "InferResponse",
    "OipError",
    "PinRequest",
    "PredictResponse",
    "ReloadRequest",
    "error_responses",
    "json_body",
    "not_ready_response",
    "number_schema",
]

#: The largest finite float32: a state value beyond it cannot be a model input.
F32_MAX = 3.4028234663852886e38


def number_schema(low: float | None, high: float | None) -> dict[str, Any]:
    """A finite float32 number, within [low, high] when given."""
    return {
        "type": "number",
        "minimum": -F32_MAX if low is None else max(low, -F32_MAX),
        "maximum": F32_MAX if high is None else min(high, F32_MAX),
    }


_number_list = {"type": "array", "items": number_schema(None, None), "minItems": 1}

#: A version reference: a sha256, 12+ of its hex digits, or `<checkpoint>@<sha256[:12]>`. The
#: served document lists the resident ones (openapi.py): any other is a 409.
VERSION_REF: dict[str, Any] = {
    "type": "string",
    "pattern": r"^([^@]+@)?[0-9A-Fa-f]{12,64}$",
    "description": "A resident version (409 naming the resident ones when it is not): its "
    "sha256, 12 or more of its hex digits, or the `<checkpoint>@<sha256[:12]>` tag that "
    "`X-Model-Version` carries.",
}

PREDICT_BODY: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "title": "One state",
            "required": ["state"],
            "additionalProperties": False,
            "properties": {"state": _number_list, "version": VERSION_REF},
        },
        {
            "type": "object",
            "title": "A batch of states",
            "required": ["states"],
            "additionalProperties": False,
            "properties": {
                "states": {"type": "array", "items": _number_list, "minItems": 1},
                "version": VERSION_REF,
            },
        },
        {
            "type": "object",
            "title": "Named inputs (a model whose metadata names them, e.g. a critic)",
            "required": ["inputs"],
            "additionalProperties": False,
            "properties": {
                "inputs": {
                    "type": "object",
                    "minProperties": 1,
                    "description": "One row of numbers per input, or a list of rows per input "
                    "(one batch size for all)",
                    "additionalProperties": {
                        "oneOf": [
                            _number_list,
                            {"type": "array", "items": _number_list, "minItems": 1},
                        ],
                    },
                },
                "version": VERSION_REF,
            },
        },
    ]
}

_dimension = {"type": "integer", "minimum": 1}
_row = {"type": "array", "items": number_schema(None, None), "minItems": 1}

INFER_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "description": (
        "JSON tensors. With the binary tensor extension (the header "
        "`Inference-Header-Content-Length: <n>`, `tritonclient`'s default) the first n bytes are "
        'this JSON with `"parameters": {"binary_data_size": <bytes>}` in place of `data`, and '
        "the tensor's little-endian bytes follow."
    ),
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string", "enum": ["state"]},
                    "shape": {"type": "array", "items": _dimension, "minItems": 1, "maxItems": 2},
                    "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
                    "parameters": {"type": "object"},
                    "data": {
                        "description": "shape[0] x shape[1] values, row-major: flat, or one list per row",
                        "oneOf": [_row, {"type": "array", "items": _row, "minItems": 1}],
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "enum": ["action"]},
                    "parameters": {"type": "object"},
                },
            },
        },
    },
}

#: The 200 of `infer` with the binary tensor extension: the JSON header, then the tensor.
BINARY_TENSORS: dict[str, Any] = {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
}

FEEDBACK_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["request_id", "reward"],
    "properties": {
        "request_id": {
            "type": "string",
            "description": "The `request_id` of an answer (its body, or `X-Request-Id`).",
            "pattern": r"^[0-9a-f]{12}\.[0-9a-f]{1,12}\.[0-9a-f]{9,24}\.[0-9a-f]{2}\.[0-9a-f]{16}$",
        },
        "reward": {**number_schema(None, None), "description": "The outcome: any finite number."},
    },
}

PIN_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["checkpoint"],
    "properties": {
        "checkpoint": {
            "type": "string",
            "description": "A file name in the model's directory; a name that leaves it is a 400.",
            "pattern": r"^(?!\.\.?$)[A-Za-z0-9._-]+$",
        },
        "force": {
            "type": "boolean",
            "description": "Serve it even if its sizes differ from the live model's (logged); "
            "the integrity and signature checks are never skipped.",
        },
    },
}

#: `POST {prefix}/reload`'s optional body.
RELOAD_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"force": PIN_BODY["properties"]["force"]},
}


def json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON request body the route reads itself."""
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": required, "content": content}}


class ErrorResponse(BaseModel):
    detail: str


class OipError(BaseModel):
    error: str


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(min_length=1)
    force: StrictBool = False


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: StrictBool = False


class FeedbackResponse(BaseModel):
    """A reward attributed to the version that answered the request."""

    request_id: str
    version: str = Field(description="The first 12 hex digits of that version's sha256")
    issued_at: float = Field(description="When the answer was given (epoch seconds)")
    reward: float


class PredictResponse(BaseModel):
    """`action` for `{"state"}`, `actions` for `{"states"}`, `outputs` (a row, or a list of
    rows, per name) for `{"inputs"}`; the version fields always."""

    action: list[float] | None = None
    actions: list[list[float]] | None = None
    outputs: dict[str, list[float] | list[list[float]]] | None = None
    model_version: float = Field(
        description="mtime of the live checkpoint (the original API's field; OIP's `model_version` "
        "is the `version` tag)"
    )
    version: str = Field(description="`<checkpoint>@<sha256[:12]>`, as in `X-Model-Version`")
    load_count: int
    checkpoint: str
    sha256: str
    replica: str | None = None
    request_id: str = Field(
        description="Signed id of this answer (also `X-Request-Id`): report its outcome with "
        "`POST {prefix}/feedback`"
    )


class OipTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[OipTensor]


_MEANING = {
    400: "Malformed request (JSON, binary framing, a pin name outside the model's directory)",
    401: "Missing or wrong token (the admin token; for feedback, CKPTSERVE_FEEDBACK_TOKEN)",
    403: "Admin actions are disabled (no CKPTSERVE_ADMIN_TOKEN)",
    404: "Unknown model or checkpoint",
    409: "The version named is not resident (the message names the resident ones); feedback: "
    "that request was rewarded already",
    410: "Feedback for a request answered too long ago (over an hour)",
    413: "Request body over the limit",
    422: "Invalid input: wrong length, not a number, not finite, out of bounds, empty batch, "
    "not a version reference; feedback: a request id never issued here, a reward that is not a "
    "finite number",
    503: "No live model yet (see Retry-After)",
}

ADMIN = (401, 403)


def error_responses(*codes: int, oip: bool = False) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting each error status a route returns."""
    model = OipError if oip else ErrorResponse
    return {code: {"model": model, "description": _MEANING[code]} for code in codes}


def not_ready_response(*fields: str) -> dict[int | str, dict[str, Any]]:
    """The 503 of a readiness route: the same body as its 200, with `"ready": false`."""
    props = {f: {"type": "boolean" if f == "ready" else "string"} for f in fields}
    schema = {"type": "object", "required": list(fields), "properties": props}
    return {503: {"description": "Not ready", "content": {"application/json": {"schema": schema}}}}
