"""The manifest: a small JSON pointer to an immutable checkpoint, its sha256 and a signature.

`{name}_latest.json` names the checkpoint that is current, with the hash of its bytes, so a
reader can tell a torn, mixed or bit-flipped copy from the published one, and (with a key) a
forged manifest from a real one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import IntegrityError

__all__ = [
    "MAX_MANIFEST_BYTES",
    "METADATA_FILE",
    "METADATA_KEY",
    "SAFETENSORS_SHA256_KEY",
    "SIGNING_KEYS_ENV",
    "SIGNING_KEY_ENV",
    "Keyring",
    "canonical_bytes",
    "checked_manifest",
    "keyring_from_environment",
    "parse_keyring",
    "parse_manifest",
    "sign_manifest",
    "verify_signature",
]

#: One signing key, without an id (what manifests without `"key_id"` are checked with).
SIGNING_KEY_ENV = "CKPTSERVE_SIGNING_KEY"
#: Several keys by id, `id1:secret1,id2:secret2` or a key file's absolute path: see Keyring.
SIGNING_KEYS_ENV = "CKPTSERVE_SIGNING_KEYS"
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
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{0,64}")  # "" is the key of manifests that name none


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: every field but `signature`, sorted, without whitespace."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_manifest(manifest: Mapping[str, Any], key: str | bytes) -> str:
    """Return the hex HMAC-SHA256 of the manifest's canonical bytes under `key`."""
    secret = key.encode() if isinstance(key, str) else key
    return hmac.new(secret, canonical_bytes(manifest), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Keyring:
    """The signing keys a reader accepts, by key id, and the one a writer signs with.

    A manifest names the key that signed it in `"key_id"` (one without names the key whose id
    is "", which a single `CKPTSERVE_SIGNING_KEY` is). Several keys are accepted at once, so a
    key can be rotated without an outage (docs/security.md, "Rotating the signing key").

    Example:
        keyring = parse_keyring(keys="k2:new-secret,k1:old-secret")
        keyring.signing_id  # "k2": the first listed signs
    """

    entries: tuple[tuple[str, bytes], ...] = field(repr=False)
    signing_id: str

    def __post_init__(self) -> None:
        ids = [key_id for key_id, _ in self.entries]
        if not ids:
            raise ValueError("a keyring needs at least one key")
        for key_id, secret in self.entries:
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"key id {_short(key_id)} is not up to 64 of A-Z a-z 0-9 . _ -")
            if not secret:
                raise ValueError(f"key {key_id!r} has an empty secret")
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"key id {duplicated[0]!r} is listed twice")
        if self.signing_id not in ids:
            raise ValueError(f"the signing key {self.signing_id!r} is not in the keyring")

    @classmethod
    def single(cls, key: str | bytes) -> Keyring:
        """One key without an id: what `CKPTSERVE_SIGNING_KEY` (or `signing_key=`) gives."""
        return cls((("", key.encode() if isinstance(key, str) else key),), "")

    @property
    def ids(self) -> tuple[str, ...]:
        """The accepted key ids, the signing one first."""
        return tuple(key_id for key_id, _ in self.entries)

    def secret(self, key_id: str) -> bytes | None:
        """The secret of `key_id`, None when that key is not accepted."""
        return next((secret for i, secret in self.entries if i == key_id), None)

    def sign(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `manifest` signed with the signing key (`key_id` set unless it is "")."""
        body = {k: v for k, v in manifest.items() if k not in ("signature", "key_id")}
        if self.signing_id:
            body["key_id"] = self.signing_id
        secret = self.secret(self.signing_id)
        assert secret is not None  # checked when the keyring was built
        body["signature"] = sign_manifest(body, secret)
        return body

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r}, signing_id={self.signing_id!r})"


def parse_keyring(keys: str | None = None, key: str | bytes | None = None) -> Keyring | None:
    """The keyring the environment describes; None when it names no key.

    Args:
        keys: the value of `CKPTSERVE_SIGNING_KEYS`: `id1:secret1,id2:secret2` (the first listed
            signs; a secret may hold ":" but not ","), or the absolute path of a key file with
            one `id:secret` per line (`#` comments and blank lines ignored).
        key: the value of `CKPTSERVE_SIGNING_KEY`: one key without an id, accepted for
            manifests that name none (and the signing key when `keys` is not given).

    Raises ValueError (never showing a secret) for a malformed value or an unreadable file.

    Example:
        parse_keyring(os.environ.get(SIGNING_KEYS_ENV), os.environ.get(SIGNING_KEY_ENV))
    """
    entries: list[tuple[str, bytes]] = []
    if keys and keys.strip():
        text = keys.strip()
        if text.startswith("/"):
            lines = _read_key_file(text).splitlines()
            where = f"key file {text}"
        else:
            lines, where = text.split(","), SIGNING_KEYS_ENV
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key_id, sep, secret = line.partition(":")
            if not sep:
                raise ValueError(f"{where}: entry {n} is not id:secret")
            entries.append((key_id.strip(), secret.strip().encode()))
        if not entries:
            raise ValueError(f"{where} lists no key")
    if key:
        entries.append(("", key.encode() if isinstance(key, str) else key))
    if not entries:
        return None
    return Keyring(tuple(entries), entries[0][0])


def keyring_from_environment(environ: Mapping[str, str] | None = None) -> Keyring | None:
    """`parse_keyring` of `$CKPTSERVE_SIGNING_KEYS` and `$CKPTSERVE_SIGNING_KEY` (the trainer's
    side: `publish()` reads them; a server gets them from its settings)."""
    env = os.environ if environ is None else environ
    return parse_keyring(env.get(SIGNING_KEYS_ENV) or None, env.get(SIGNING_KEY_ENV) or None)


def _read_key_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"key file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"key file {path} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"key file {path} is not UTF-8 text") from None


def checked_manifest(
    raw: bytes, keyring: Keyring | str | bytes | None, *, required: bool = False
) -> dict[str, Any]:
    """`raw` parsed and its signature verified: what a reader of a manifest (a file, an object)
    calls. Whatever `raw` holds, the only error is an IntegrityError with a one-line reason."""
    try:
        manifest = parse_manifest(raw)
        verify_signature(manifest, keyring, required=required)
    except IntegrityError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:  # defence in depth
        raise IntegrityError(f"manifest is malformed: {type(exc).__name__}") from None
    return manifest


def verify_signature(
    manifest: Mapping[str, Any],
    keyring: Keyring | str | bytes | None,
    *,
    required: bool = False,
) -> None:
    """Raise IntegrityError unless the manifest is signed by one of the keyring's keys.

    The key is the one the manifest's `"key_id"` names ("" when it names none). A plain key
    (str or bytes) is `Keyring.single(key)`. With no key configured, an unsigned manifest passes
    unless `required` is set (then it is a configuration error that should have been caught at
    start-up, and nothing may load).
    """
    if isinstance(keyring, (str, bytes)):
        keyring = Keyring.single(keyring)
    if keyring is None:
        if required:
            raise IntegrityError("a signature is required but no signing key is configured")
        return
    signature = manifest.get("signature")
    if signature is None or signature == "":
        raise IntegrityError("manifest is not signed")
    if not isinstance(signature, str) or not _HEX64.fullmatch(signature):
        raise IntegrityError("manifest signature is not a hex HMAC-SHA256")
    key_id = manifest.get("key_id", "")
    if not isinstance(key_id, str) or not (key_id == "" or _KEY_ID.fullmatch(key_id)):
        raise IntegrityError("manifest key_id is not a key id")
    secret = keyring.secret(key_id)
    if secret is None:
        named = f"key {key_id!r}" if key_id else "no key id"
        accepted = ", ".join(repr(i) if i else "'' (no key id)" for i in keyring.ids)
        raise IntegrityError(f"manifest is signed with {named}, not an accepted one ({accepted})")
    try:
        want = sign_manifest(manifest, secret)
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
    key_id = data.get("key_id")
    if key_id is not None and not (isinstance(key_id, str) and _KEY_ID.fullmatch(key_id)):
        raise IntegrityError("manifest key_id is not a key id")
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
