"""The manifest: a small JSON pointer to an immutable checkpoint, its sha256 and a signature.

`{name}_latest.json` names the checkpoint that is current, with the hash of its bytes, so a
reader can tell a torn, mixed or bit-flipped copy from the published one, and (with a key) a
forged manifest from a real one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import IntegrityError

__all__ = [
    "MAX_MANIFEST_BYTES",
    "METADATA_FILE",
    "METADATA_KEY",
    "SAFETENSORS_SHA256_KEY",
    "SIGNING_KEY_ENV",
    "canonical_bytes",
    "parse_manifest",
    "sign_manifest",
    "verify_signature",
]

SIGNING_KEY_ENV = "CKPTSERVE_SIGNING_KEY"
#: Name of the metadata JSON inside TorchScript and export archives.
METADATA_FILE = "ckptserve.json"
#: Reserved key holding the metadata JSON in a state_dict file and a safetensors header.
METADATA_KEY = "__ckptserve_metadata__"
#: Safetensors header key holding the sha256 of the file's data section. Safetensors has no
#: checksum of its own: this one lets a reader reject a torn (partly rewritten) copy.
SAFETENSORS_SHA256_KEY = "__ckptserve_data_sha256__"
REQUIRED_FIELDS = ("checkpoint", "sha256", "size")
#: The most bytes a manifest may have: a reader stops there, and `parse_manifest` refuses more.
MAX_MANIFEST_BYTES = 64 * 1024
#: The deepest nesting of lists and objects a manifest may have (its metadata is flat in practice).
MAX_DEPTH = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: every field but `signature`, sorted, without whitespace."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_manifest(manifest: Mapping[str, Any], key: str | bytes) -> str:
    """Return the hex HMAC-SHA256 of the manifest's canonical bytes under `key`."""
    secret = key.encode() if isinstance(key, str) else key
    return hmac.new(secret, canonical_bytes(manifest), hashlib.sha256).hexdigest()


def verify_signature(
    manifest: Mapping[str, Any], key: str | bytes | None, *, required: bool = False
) -> None:
    """Raise IntegrityError unless the manifest's signature is valid for `key`.

    With no key configured, an unsigned manifest passes unless `required` is set (then it is
    a configuration error that should have been caught at start-up, and nothing may load).
    """
    signature = manifest.get("signature")
    if key is None:
        if required:
            raise IntegrityError("a signature is required but no signing key is configured")
        return
    if signature is None or signature == "":
        raise IntegrityError("manifest is not signed")
    if not isinstance(signature, str) or not _HEX64.fullmatch(signature):
        raise IntegrityError("manifest signature is not a hex HMAC-SHA256")
    try:
        want = sign_manifest(manifest, key)
    except (ValueError, TypeError, RecursionError):  # a mapping parse_manifest never returns
        raise IntegrityError("manifest cannot be put in canonical form") from None
    if not hmac.compare_digest(signature.encode("ascii"), want.encode("ascii")):
        raise IntegrityError("manifest signature does not match")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            stack.extend((child, level + 1) for child in item)
    return deepest


def parse_manifest(raw: bytes) -> dict[str, Any]:
    """Parse and shape-check a manifest; raise IntegrityError with a one-line reason otherwise.

    Whatever `raw` holds (any bytes, any JSON), the only exception raised is IntegrityError:
    more than `MAX_MANIFEST_BYTES`, text that is not UTF-8, JSON that does not parse (also one
    nested too deep or with an integer too long to convert), or fields of the wrong type.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"manifest is over {MAX_MANIFEST_BYTES} bytes")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError(f"manifest is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"manifest is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise IntegrityError(
            f"manifest is not valid JSON: nested over {MAX_DEPTH} levels"
        ) from None
    except ValueError:  # an integer past sys.get_int_max_str_digits()
        raise IntegrityError("manifest is not valid JSON: a number too long to read") from None
    if not isinstance(data, dict):
        raise IntegrityError("manifest is not a JSON object")
    if _depth(data) > MAX_DEPTH:
        raise IntegrityError(f"manifest is not valid JSON: nested over {MAX_DEPTH} levels")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise IntegrityError(f"manifest lacks {', '.join(missing)}")
    name = data["checkpoint"]
    if not _is_file_name(name):
        raise IntegrityError(f"manifest names an invalid checkpoint: {_short(name)}")
    if not isinstance(data["sha256"], str) or not _HEX64.fullmatch(data["sha256"]):
        raise IntegrityError("manifest sha256 is not a hex digest")
    size = data["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**63:
        raise IntegrityError(f"manifest size is not a byte count: {_short(size)}")
    if not isinstance(data.get("metadata", {}), dict):
        raise IntegrityError("manifest metadata is not an object")
    signature = data.get("signature")
    if signature is not None and not (isinstance(signature, str) and _HEX64.fullmatch(signature)):
        raise IntegrityError("manifest signature is not a hex HMAC-SHA256")
    return data


def _is_file_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name.encode("utf-8", "surrogatepass")) <= 255
        and name.isprintable()
        and not any(c in name for c in "/\\")
        and name not in {".", ".."}
    )


def _short(value: object) -> str:
    """`repr(value)`, cut to one short line (it may come from a hostile file)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
