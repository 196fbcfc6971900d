"""PUBLISH to object storage: `publish(model, "s3://bucket/prefix/")`, the checkpoint object first
(timestamped, never overwritten), the manifest last, so a reader never sees a manifest naming an
object that is not complete; retention never removes the object the manifest names."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import CkptServeError, IntegrityError, PublishError
from .manifest import MAX_MANIFEST_BYTES, parse_manifest
from .naming import parse_checkpoint_name
from .objectstore import S3Location, _status, _why, client_from_env

__all__ = ["publish_to_store"]

#: Publishes tried when another writer took the same timestamped name first.
_NAME_TRIES = 5


def publish_to_store(
    model: Any,
    url: str,
    name: str = "actor",
    keep: int = 10,
    metadata: Mapping[str, Any] | None = None,
    *,
    client: Any = None,
    **options: Any,
) -> str:
    """Publish a checkpoint to `s3://bucket/prefix/`; return the new checkpoint object's URL.

    The checkpoint is written exactly as `publish()` writes it to a directory (a private staging
    directory, so the format, metadata, signature and checks are the same), then uploaded: the
    checkpoint object first, under a timestamped name that is never overwritten (a conditional
    PUT), then the manifest, so a reader never sees a manifest naming an object that is not
    complete. Retention then removes the oldest checkpoint objects beyond `keep`, never the one
    the manifest names.

    Args:
        model, name, keep, metadata, options: as for `publish()` (`format=`, `signing_key=`, ...).
        url: `s3://bucket/prefix/`.
        client: a boto3 S3 client (default: `client_from_env()`).

    Raises:
        PublishError: the model cannot be written, or the store refused or failed a write.
    """
    from .publishing import publish  # torch, only for a publish

    if keep < 1:
        raise ValueError("keep must be at least 1")
    try:
        where = S3Location.parse(url if url.endswith(("/", ".json")) else f"{url}/", name)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    if not where.manifest.endswith(f"{name}_latest.json"):
        raise PublishError(f"{url}: publish to a prefix (s3://bucket/prefix/), not to a file")
    s3 = client if client is not None else _publish_client()
    for _ in range(_NAME_TRIES):
        _wait_for_a_free_second(s3, where, name)
        with tempfile.TemporaryDirectory(prefix="ckptserve-publish-") as stage:
            checkpoint = publish(model, stage, name, 1, metadata, **options)
            key = where.prefix + checkpoint.name
            if not _put(s3, where.bucket, key, checkpoint, new=True):
                continue  # another writer took this second's name: publish under the next one
            record = checkpoint.with_suffix(".json")
            if record.exists():  # the checkpoint's own signed record, where publish() writes one
                _put(s3, where.bucket, where.prefix + record.name, record)
            _put(s3, where.bucket, where.manifest, Path(stage) / f"{name}_latest.json")
        _retain(s3, where, name, keep, checkpoint.name)
        return where.url(key)
    raise PublishError(f"{url}: no free checkpoint name after {_NAME_TRIES} tries")


def _publish_client() -> Any:
    try:
        return client_from_env()
    except CkptServeError as exc:
        raise PublishError(str(exc)) from None


def _stamp() -> str:
    return datetime.now().astimezone().strftime("%Y%m%d_%H%M%S")


def _wait_for_a_free_second(s3: Any, where: S3Location, name: str) -> None:
    """Wait for the clock to leave a second whose checkpoint name is taken in the bucket: a
    name is never reused, and names keep sorting in publish order."""
    stamp = _stamp()
    try:
        listed = s3.list_objects_v2(
            Bucket=where.bucket, Prefix=f"{where.prefix}{name}_{stamp}", MaxKeys=1
        )
    except Exception as exc:
        raise PublishError(f"{where.url(where.prefix)}: listing failed: {_why(exc)}") from None
    if listed.get("KeyCount", 0):
        while _stamp() == stamp:
            time.sleep(0.05)


def _put(s3: Any, bucket: str, key: str, path: Path, *, new: bool = False) -> bool:
    """Upload `path` as `key`; with `new`, only if no object has that key (False if one does)."""
    extra = {"IfNoneMatch": "*"} if new else {}
    try:
        with open(path, "rb") as body:
            s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    except Exception as exc:
        if new and _status(exc) in (409, 412):  # taken (412), or a write racing ours (409)
            return False
        raise PublishError(f"s3://{bucket}/{key}: upload failed: {_why(exc)}") from None
    return True


def _retain(s3: Any, where: S3Location, name: str, keep: int, new: str) -> None:
    """Remove the oldest checkpoint objects (and their records) beyond `keep`: never the new
    one, nor the one the manifest names when retention runs (another writer's newer one)."""
    found: list[tuple[str, int, str]] = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=where.prefix)
    try:
        for page in pages:
            for item in page.get("Contents", []):
                base = item["Key"][len(where.prefix) :]
                parts = parse_checkpoint_name(base)  # the names publish() gives checkpoints
                if parts is not None and parts.name == name and "/" not in base:
                    found.append((parts.stamp, parts.n, base))
        named = _named_checkpoint(s3, where)
    except PublishError:
        raise
    except Exception as exc:
        raise PublishError(f"{where.url(where.prefix)}: listing failed: {_why(exc)}") from None
    for *_, base in sorted(found, reverse=True)[keep:]:
        if base in (new, named):
            continue
        for old in (base, f"{base.rpartition('.')[0]}.json"):
            try:
                s3.delete_object(Bucket=where.bucket, Key=where.prefix + old)
            except Exception as exc:
                raise PublishError(
                    f"{where.url(where.prefix + old)}: delete failed: {_why(exc)}"
                ) from None


def _named_checkpoint(s3: Any, where: S3Location) -> str | None:
    """The checkpoint the manifest object names now (None: no manifest, or not one)."""
    try:
        response = s3.get_object(Bucket=where.bucket, Key=where.manifest)
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise
    with contextlib.closing(response["Body"]) as body:
        raw = body.read(MAX_MANIFEST_BYTES + 1)
    try:
        return str(parse_manifest(raw)["checkpoint"])
    except IntegrityError:
        return None
