"""The safetensors format: a JSON header and raw tensors, so loading it can never run code.

The format has no checksum of its own; files written by `publish()` carry the sha256 of their
data section in the header, so a torn copy (new header, partly old data) is caught. Files
without it are only checked for length.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, PublishError
from ..manifest import METADATA_KEY, SAFETENSORS_SHA256_KEY
from ._codec import Buffer, Format, Loaded, Sniffed, metadata_from_json
from ._pytorch import cpu_weights

__all__ = ["SAFETENSORS", "check"]


def _is_safetensors(sniffed: Sniffed) -> bool:
    if sniffed.entries is not None or len(sniffed.head) < 9 or sniffed.size < 10:
        return False
    (header_len,) = struct.unpack("<Q", sniffed.head[:8])
    return 0 < header_len <= sniffed.size - 8 and sniffed.head[8:9] == b"{"


def check(data: Buffer, sniffed: Sniffed | None = None) -> None:
    """Raise IntegrityError unless the file is as long as its header says and, when it carries
    one, matches the sha256 of its data in the header."""
    if len(data) < 8:
        raise IntegrityError("safetensors file is shorter than its header length")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (ValueError, RecursionError):
        raise IntegrityError("safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise IntegrityError("safetensors header is not a JSON object")
    try:
        ends = [
            int(t["data_offsets"][1])
            for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t
        ]
    except (TypeError, ValueError, IndexError, KeyError):
        raise IntegrityError("safetensors header has malformed data offsets") from None
    size = max(0, len(data) - 8 - header_len)
    if size != max(ends, default=0):
        raise IntegrityError(
            f"safetensors data is {size} bytes, its header describes {max(ends, default=0)}"
            " (truncated or torn write)"
        )
    meta = header.get("__metadata__") or {}
    want = meta.get(SAFETENSORS_SHA256_KEY) if isinstance(meta, dict) else None
    if want is None:
        return
    # Views released on the way out, so an mmap under them can be closed (hashlib drops the GIL).
    with memoryview(data) as whole, whole[8 + header_len :] as body:
        got = hashlib.sha256(body).hexdigest()
    if got != want:
        raise IntegrityError(
            "safetensors data does not match the sha256 in its header (torn or corrupt write)"
        )


def _read(path: Path, device: str) -> Loaded:
    """The tensors, mapped from the file on the CPU (their pages load when touched)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=device) as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    return Loaded(tensors, "safetensors", metadata_from_json(raw, "safetensors"))


def _data_section(blob: bytes) -> bytes:
    (header_len,) = struct.unpack("<Q", blob[:8])
    return blob[8 + header_len :]


def _write(model: Any, metadata_json: str, example: Any) -> bytes:
    from safetensors.torch import save

    weights = cpu_weights(model, unshared=True)
    data = _data_section(save(weights, metadata={METADATA_KEY: metadata_json}))
    digest = hashlib.sha256(data).hexdigest()
    checked = save(weights, metadata={METADATA_KEY: metadata_json, SAFETENSORS_SHA256_KEY: digest})
    if _data_section(checked) != data:  # the header is the only part that may differ
        raise PublishError("safetensors wrote different data for the same weights")
    return checked


SAFETENSORS = Format(
    "safetensors", needs_factory=True, runs_code_on_load=False, detect=_is_safetensors,
    check=check, read=_read, write=_write,
)  # fmt: skip
