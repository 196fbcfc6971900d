"""The manifest: a small JSON pointer to an immutable checkpoint, its sha256 and a signature.

`{name}_latest.json` names the checkpoint that is current, with the hash of its bytes, so a
reader can tell a torn, mixed or bit-flipped copy from the published one, and (with a key) a
forged manifest from a real one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from .errors import IntegrityError

__all__ = [
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
    if not isinstance(signature, str) or not signature:
        raise IntegrityError("manifest is not signed")
    if not hmac.compare_digest(signature, sign_manifest(manifest, key)):
        raise IntegrityError("manifest signature does not match")


def parse_manifest(raw: bytes) -> dict[str, Any]:
    """Parse and shape-check a manifest; raise IntegrityError when it is not one."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise IntegrityError("manifest is not a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise IntegrityError(f"manifest lacks {', '.join(missing)}")
    name = data["checkpoint"]
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise IntegrityError(f"manifest names an invalid checkpoint: {name!r}")
    if not isinstance(data["sha256"], str) or len(data["sha256"]) != 64:
        raise IntegrityError("manifest sha256 is not a hex digest")
    size = data["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise IntegrityError(f"manifest size is not a byte count: {size!r}")
    if not isinstance(data.get("metadata", {}), dict):
        raise IntegrityError("manifest metadata is not an object")
    return data
