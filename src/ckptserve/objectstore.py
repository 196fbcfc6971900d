"""DETECT on object storage: `s3://bucket/prefix/` is followed like a model directory, through a
manifest that names an immutable, timestamped checkpoint object (written by `_s3publish.py`).

Configured only by the standard AWS variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, or any other source of the AWS credential chain),
so the same URL works against AWS, MinIO, Ceph or a loopback test server. boto3 is used directly
(`pip install 'ckptserve[s3]'`): s3fs caches listings and then reports stale ETags.

`S3Source` never touches the network on the request path. Its token is the manifest object's
ETag (plus VersionId on a versioned bucket; a multipart ETag such as `"…-3"` is an opaque value,
not an MD5), read by a HEAD on a thread of its own every `check_interval` seconds (default 2 s).
A fetch reads the manifest with a conditional GET (`If-None-Match`), then streams the checkpoint
object it names once, hashed, into the private copy, bounded like a local file (the size the
manifest states plus one, and the byte limit); the core's checks (sha256 against the manifest,
signature, CRCs, probe) follow unchanged. Bytes already in the private copies are not downloaded
again. A slow or failing store is a failed check: the live model keeps serving, and `health()`
(in the registry's status) says when the store last answered and what failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ._copies import PrivateCopies
from ._polling import Poll
from .errors import CheckpointError, CkptServeError, IntegrityError
from .manifest import MAX_MANIFEST_BYTES, Keyring, checked_manifest
from .naming import OBJECT_SCHEME, is_object_url
from .sources import CHUNK, DEFAULT_LIMIT, Snapshot
from .versions import VersionKey

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "ObjectToken",
    "S3Location",
    "S3Source",
    "client_from_env",
    "is_url",
]

SCHEME = OBJECT_SCHEME
#: Seconds between HEADs of the manifest object when `check_interval` is 0 (the local default).
DEFAULT_CHECK_INTERVAL = 2.0
#: The most checkpoint downloads whose object dates are remembered (for a copy not downloaded).
_REMEMBERED = 8


#: Whether a path names object storage (`s3://...`) rather than a local path.
is_url = is_object_url


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where a model lives in a bucket: the manifest's key and the prefix its checkpoints share."""

    bucket: str
    prefix: str  # "" or ends with "/"
    manifest: str

    @classmethod
    def parse(cls, url: str, name: str) -> S3Location:
        """`s3://bucket/prefix/` (its `{name}_latest.json`) or `s3://bucket/prefix/x_latest.json`.

        Raises:
            ValueError: not an s3:// URL with a bucket, or a key that is not a manifest.
        """
        if not is_url(url):
            raise ValueError(f"{url!r} is not an s3:// URL")
        bucket, _, key = url[len(SCHEME) :].partition("/")
        if not bucket or "\x00" in url:
            raise ValueError(f"{url!r} names no bucket")
        if key.endswith(".json"):
            prefix = key.rpartition("/")[0]
            return cls(bucket, f"{prefix}/" if prefix else "", key)
        last = key.rpartition("/")[2]
        if "." in last and not key.endswith("/"):
            raise ValueError(
                f"{url}: serve the manifest (*_latest.json) or the prefix (ending in /): a "
                "checkpoint object alone carries no sha256 to check it against"
            )
        prefix = key if not key or key.endswith("/") else f"{key}/"
        return cls(bucket, prefix, f"{prefix}{name}_latest.json")

    def url(self, key: str) -> str:
        return f"{SCHEME}{self.bucket}/{key}"


@dataclass(frozen=True, slots=True)
class ObjectToken:
    """What identifies one write of an object: its ETag, and its VersionId where the bucket
    keeps versions (the same bytes written again keep the ETag and get a new VersionId)."""

    etag: str
    version_id: str | None = None


def client_from_env() -> Any:
    """A boto3 S3 client configured by the standard AWS variables, with bounded timeouts.

    Raises:
        CkptServeError: boto3 is not installed.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise CkptServeError("s3:// needs boto3: pip install 'ckptserve[s3]'") from None
    config = Config(
        connect_timeout=3, read_timeout=15, retries={"max_attempts": 3, "mode": "standard"}
    )
    # boto3's default session: its service model is loaded once per process (~0.3 s each).
    return boto3.client("s3", config=config)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    return int(status) if status is not None else None


def _why(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _token_of(response: Mapping[str, Any]) -> ObjectToken:
    return ObjectToken(str(response["ETag"]), response.get("VersionId"))


def _key_of(response: Mapping[str, Any], size: int) -> VersionKey:
    modified = response.get("LastModified")
    ns = int(modified.timestamp() * 1e9) if isinstance(modified, datetime) else 0
    return VersionKey(ns, size, 0, 0, ns)


@dataclass(frozen=True, slots=True)
class _Manifest:
    token: ObjectToken
    raw: bytes


class S3Source:
    """Follows a manifest object in a bucket and reads the checkpoint object it names.

    Args:
        url: `s3://bucket/prefix/` or `s3://bucket/prefix/{name}_latest.json`.
        name: the `{name}` of the manifest under a prefix (default "actor").
        signing_key / require_signature: as for a local manifest.
        check_interval: seconds between HEADs of the manifest (0: DEFAULT_CHECK_INTERVAL).
        client: a boto3 S3 client (default: `client_from_env()`).

    Example:
        registry = ModelRegistry("s3://models/actor/", swap="background")
    """

    kind = "s3"

    def __init__(
        self,
        url: str,
        *,
        name: str = "actor",
        signing_key: Keyring | str | bytes | None = None,
        require_signature: bool = False,
        check_interval: float = 0.0,
        client: Any = None,
    ) -> None:
        self.location = where = S3Location.parse(url, name)
        self.url = where.url(where.manifest)
        # Only the name and suffix of this path mean anything (the model's name, `.json`): it
        # is no local file, and nothing looks for one there.
        self.path = Path(self.url)
        self._key = signing_key
        self._require = require_signature
        self._client = client if client is not None else client_from_env()
        self._manifest: _Manifest | None = None  # the last manifest read, for If-None-Match
        self._dates: dict[str, VersionKey] = {}  # sha256 -> the checkpoint object's date
        self._poll = Poll(
            self._head, check_interval or DEFAULT_CHECK_INTERVAL, name=f"ckptserve-s3-{name}"
        )

    # ---- the Source protocol ------------------------------------------------------------------

    def token(self) -> Hashable | None:
        return self._poll.value

    def fetch(self, copies: PrivateCopies, *, limit: int = DEFAULT_LIMIT) -> Snapshot:
        manifest, token = self._read_manifest()
        name, want, size = manifest["checkpoint"], manifest["sha256"], manifest["size"]
        key = self.location.prefix + name
        # An unsigned manifest's size is the writer's choice, so the limit stays too.
        bound, why = (size + 1, "the size the manifest states") if size < limit else (limit, "")
        why = why or f"the {limit}-byte limit (--max-checkpoint-bytes)"
        have = copies.path_for(want)
        date = self._dates.get(want)
        if date is not None and _size(have) == size:
            file = have  # named by its sha256 when it was written: the same bytes
        else:
            file, date = self._download(key, name, copies, bound, why, want, size)
            self._dates = dict(list({**self._dates, want: date}.items())[-_REMEMBERED:])
        checkpoint = Path(self.location.url(key))
        return Snapshot(
            token=token, file=file, size=size, path=checkpoint, resolved=checkpoint,
            sha256=want, key=date, metadata=dict(manifest.get("metadata") or {}),
        )  # fmt: skip

    def digest(self) -> str | None:
        try:
            manifest, _ = self._read_manifest()
        except (OSError, CheckpointError):
            return None
        return str(manifest["sha256"])

    # ---- observing ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The poll's state: when the store last answered, the last error, a HEAD under way."""
        return {"url": self.url, **self._poll.health()}

    def poll_now(self) -> None:
        """One HEAD in the calling thread (the poll thread does this every interval)."""
        self._poll.poll_once()

    def close(self) -> None:
        """Stop polling (also done when the source is collected)."""
        self._poll.close()

    def __repr__(self) -> str:
        return f"S3Source({self.url!r})"

    # ---- the store ----------------------------------------------------------------------------

    def _head(self) -> ObjectToken | None:
        where = self.location
        try:
            return _token_of(self._client.head_object(Bucket=where.bucket, Key=where.manifest))
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise

    def _read_manifest(self) -> tuple[dict[str, Any], ObjectToken]:
        """The manifest, checked, and the token of what was read; a 304 reuses the last one.

        Raises FileNotFoundError (no manifest object) or CheckpointError."""
        where, cached = self.location, self._manifest
        extra = {"IfNoneMatch": cached.token.etag} if cached is not None else {}
        try:
            response = self._client.get_object(Bucket=where.bucket, Key=where.manifest, **extra)
        except Exception as exc:
            status = _status(exc)
            if status == 304 and cached is not None:
                polled = self._poll.value
                same = isinstance(polled, ObjectToken) and polled.etag == cached.token.etag
                token = polled if same and isinstance(polled, ObjectToken) else cached.token
                self._poll.offer(token)
                return self._checked(cached.raw), token
            if status == 404:
                self._poll.offer(None)
                raise FileNotFoundError(self.url) from None
            raise CheckpointError(f"{self.url}: the store did not answer: {_why(exc)}") from None
        token = _token_of(response)
        body = response["Body"]
        try:
            if int(response.get("ContentLength") or 0) > MAX_MANIFEST_BYTES:
                raise IntegrityError(f"manifest is over {MAX_MANIFEST_BYTES} bytes: not a manifest")
            raw = body.read(MAX_MANIFEST_BYTES + 1)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{self.url}: reading the manifest failed: {_why(exc)}") from None
        finally:
            body.close()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"manifest is over {MAX_MANIFEST_BYTES} bytes: not a manifest")
        self._poll.offer(token)
        manifest = self._checked(raw)
        self._manifest = _Manifest(token, raw)  # only a manifest that passed is kept
        return manifest, token

    def _checked(self, raw: bytes) -> dict[str, Any]:
        return checked_manifest(raw, self._key, required=self._require)

    def _download(
        self, key: str, name: str, copies: PrivateCopies, bound: int, why: str, want: str,
        size: int,
    ) -> tuple[Path, VersionKey]:  # fmt: skip
        """Stream the object into the cache as `<sha256>`, hashing each chunk, stopping past
        `bound` bytes; kept only if its size and sha256 are the manifest's."""
        try:
            response = self._client.get_object(Bucket=self.location.bucket, Key=key)
        except Exception as exc:
            if _status(exc) == 404:
                raise CheckpointError(f"manifest names {name}, which does not exist") from None
            raise CheckpointError(f"{name}: the store did not answer: {_why(exc)}") from None
        body = response["Body"]
        try:
            length = int(response.get("ContentLength") or 0)
            if length > bound:
                raise CheckpointError(f"{name} is {length} bytes, over {why}: refused")
            fd, tmp = copies.spool_file()
            try:
                digest, got = hashlib.sha256(), 0
                with open(fd, "wb") as out:
                    for chunk in _chunks(body, bound - got + 1):
                        got += len(chunk)
                        if got > bound:
                            raise CheckpointError(f"{name} grew past {why} while it was read")
                        digest.update(chunk)
                        out.write(chunk)
                if got != size:
                    raise IntegrityError(f"{name}: size differs from the manifest")
                if digest.hexdigest() != want:
                    raise IntegrityError(f"{name}: sha256 does not match the manifest")
                file = copies.adopt(tmp, want, got)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except CheckpointError:
            raise
        except Exception as exc:  # the connection broke, the store stalled past the timeout
            raise CheckpointError(f"{name}: the download failed: {_why(exc)}") from None
        finally:
            body.close()
        return file, _key_of(response, got)


def _chunks(body: Any, limit: int) -> Iterator[bytes]:
    """The body in CHUNK-sized reads, never reading more than `limit` bytes in all."""
    left = limit
    while left > 0:
        chunk = body.read(min(CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
