"""Object storage: `s3://bucket/prefix/` followed and published like a model directory, against a
real S3-compatible server on loopback (moto's, not an in-process mock of boto3)."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ckptserve import IntegrityError, ModelRegistry, PublishError, publish
from ckptserve._copies import PrivateCopies
from ckptserve._polling import PENDING
from ckptserve._s3publish import publish_to_store
from ckptserve.manifest import sign_manifest
from ckptserve.objectstore import S3Location, S3Source
from policies import seeded_actor

#: Long enough that only the start-up HEAD happens by itself: the tests step the poll by hand.
QUIET = 3600.0


@pytest.fixture
def registries() -> Iterator[Callable[..., ModelRegistry]]:
    made: list[ModelRegistry] = []

    def make(url: str, **options: Any) -> ModelRegistry:
        registry = ModelRegistry(url, **{"check_interval": QUIET, **options})
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def put(s3: Any, bucket: str, checkpoint_bytes: Callable[..., bytes]) -> Callable[..., str]:
    """`put(seed)`: write a checkpoint object and then its manifest to s3://bucket/models/, as
    publish() does (without its wait for a free timestamp); the sha256 of the object."""
    names = itertools.count()

    def write(seed: int, *, signing_key: str | None = None, **metadata: Any) -> str:
        data = checkpoint_bytes("torchscript", seed)
        name = f"actor_20300101_{next(names):06d}.pt"
        s3.put_object(Bucket=bucket, Key=f"models/{name}", Body=data)
        manifest: dict[str, Any] = {
            "checkpoint": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "format": "torchscript", "metadata": metadata,
        }  # fmt: skip
        if signing_key is not None:
            manifest["signature"] = sign_manifest(manifest, signing_key)
        s3.put_object(Bucket=bucket, Key="models/actor_latest.json", Body=json.dumps(manifest))
        return str(manifest["sha256"])

    return write


def manifest_of(bucket: str) -> dict[str, Any]:
    import boto3

    body = boto3.client("s3").get_object(Bucket=bucket, Key="models/actor_latest.json")["Body"]
    return dict(json.loads(body.read()))


def step(registry: ModelRegistry) -> Any:
    """One poll of the store by hand, then one look (what the poll thread and a request do)."""
    registry.source.poll_now()  # type: ignore[attr-defined]
    return registry.check()


def live_sha(registry: ModelRegistry) -> str | None:
    live = registry.current
    return live.version.sha256 if live is not None else None


def test_published_prefix_is_served(
    bucket: str, put: Callable[..., str], registries: Callable[..., ModelRegistry]
) -> None:
    """`publish(model, "s3://b/models/")` then `ModelRegistry("s3://b/models/")` serves it, with
    the URL (not a folded local path) in status."""
    sha = put(0, step=7)
    registry = registries(f"s3://{bucket}/models/")
    attempt = registry.check()
    assert attempt is not None and attempt.result == "ok", attempt
    assert live_sha(registry) == sha
    status = registry.status()
    assert status["model_path"] == f"s3://{bucket}/models/actor_latest.json"
    assert status["source"] == "s3"
    assert registry.version is not None and registry.version.metadata["step"] == 7
    assert registry.version.checkpoint.startswith("actor_") and registry.name == "actor"


def test_manifest_url_is_served(
    bucket: str, put: Callable[..., str], registries: Callable[..., ModelRegistry]
) -> None:
    """`s3://b/models/actor_latest.json` names the manifest itself."""
    sha = put(0)
    registry = registries(f"s3://{bucket}/models/actor_latest.json")
    registry.check()
    assert live_sha(registry) == sha


def test_overwritten_manifest_swaps(
    bucket: str, put: Callable[..., str], registries: Callable[..., ModelRegistry]
) -> None:
    """A new publish (new checkpoint object, manifest replaced) is served after the next poll."""
    first = put(0)
    registry = registries(f"s3://{bucket}/models/")
    registry.check()
    second = put(1)
    assert second != first
    attempt = step(registry)
    assert attempt is not None and attempt.result == "ok", attempt
    assert live_sha(registry) == second


def test_poll_thread_finds_a_new_publish_without_requests_asking(
    bucket: str, put: Callable[..., str], registries: Callable[..., ModelRegistry]
) -> None:
    """With a short check interval, the poll thread's HEAD alone makes the registry stale."""
    put(0)
    registry = registries(f"s3://{bucket}/models/", check_interval=0.05)
    registry.check()
    second = put(1)
    deadline = time.monotonic() + 20
    while live_sha(registry) != second and time.monotonic() < deadline:
        registry.get()
        time.sleep(0.05)
    assert live_sha(registry) == second, registry.status()


def test_requests_never_reach_the_store(
    bucket: str, put: Callable[..., str], store: Any, registries: Callable[..., ModelRegistry]
) -> None:
    """The token comes from the poll thread: a thousand `get()` calls send nothing to the store."""
    put(0)
    registry = registries(f"s3://{bucket}/models/", check_interval=0)
    registry.check()
    before = len(store.seen)
    for _ in range(1000):
        registry.get_model()
        registry.stale()
    assert store.seen[before:] == []


def test_unchanged_manifest_answers_304_and_downloads_nothing(
    bucket: str, put: Callable[..., str], store: Any, registries: Callable[..., ModelRegistry]
) -> None:
    """Looking again at an unchanged manifest is a conditional GET answered 304, and the
    checkpoint object, already in the private copies, is not downloaded again."""
    sha = put(0)
    name = manifest_of(bucket)["checkpoint"]
    registry = registries(f"s3://{bucket}/models/")
    registry.check()
    manifest_path, object_path = f"/{bucket}/models/actor_latest.json", f"/{bucket}/models/{name}"
    assert len(store.requests("GET", object_path)) == 1
    before = len(store.seen)
    attempt = registry.check(reload=True)
    assert attempt is not None and attempt.result == "ok", attempt
    seen = store.seen[before:]
    assert [(s.method, s.path, s.status) for s in seen] == [("GET", manifest_path, 304)], seen
    assert seen[0].if_none_match is not None
    assert live_sha(registry) == sha


def test_same_bytes_rewritten_on_a_versioned_bucket_are_unchanged(
    bucket: str,
    put: Callable[..., str],
    s3: Any,
    store: Any,
    registries: Callable[..., ModelRegistry],
) -> None:
    """The same manifest written again gets a new VersionId (the token changes) and the same
    ETag: the look is a 304, the result "unchanged", and no checkpoint is downloaded."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    put(0)
    registry = registries(f"s3://{bucket}/models/")
    registry.check()
    token = registry.source.token()
    raw = s3.get_object(Bucket=bucket, Key="models/actor_latest.json")["Body"].read()
    s3.put_object(Bucket=bucket, Key="models/actor_latest.json", Body=raw)
    registry.source.poll_now()  # type: ignore[attr-defined]
    assert registry.source.token() != token
    assert registry.source.token().etag == token.etag  # type: ignore[union-attr]
    before = len(store.seen)
    attempt = registry.check()
    assert attempt is not None and attempt.result == "unchanged", attempt
    assert [(s.method, s.status) for s in store.seen[before:]] == [("GET", 304)]


def test_multipart_etag_is_an_opaque_token(
    bucket: str, put: Callable[..., str], s3: Any, registries: Callable[..., ModelRegistry]
) -> None:
    """A checkpoint and a manifest uploaded in parts (ETag `"…-N"`, no MD5) load as any other."""
    put(0)
    manifest = manifest_of(bucket)
    data = s3.get_object(Bucket=bucket, Key=f"models/{manifest['checkpoint']}")["Body"].read()
    name = "actor_20310101_000000.pt"
    multipart_put(s3, bucket, f"models/{name}", data)
    raw = json.dumps({**manifest, "checkpoint": name}).encode()
    etag = multipart_put(s3, bucket, "models/actor_latest.json", raw)
    assert etag.endswith('-1"'), etag
    registry = registries(f"s3://{bucket}/models/")
    attempt = registry.check()
    assert attempt is not None and attempt.result == "ok", attempt
    assert registry.version is not None and registry.version.checkpoint == name
    assert registry.source.token().etag == etag  # type: ignore[union-attr]


def multipart_put(s3: Any, bucket: str, key: str, data: bytes) -> str:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=data)
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )  # fmt: skip
    return str(done["ETag"])


def _flip(data: bytes) -> bytes:
    return data[:100] + bytes([data[100] ^ 1]) + data[101:]


CORRUPTIONS: dict[str, Callable[[bytes, dict[str, Any]], tuple[bytes, bytes]]] = {
    # (checkpoint bytes, manifest) -> (object written, manifest written)
    "bit flipped in the object": lambda data, m: (_flip(data), json.dumps(m).encode()),
    "object truncated": lambda data, m: (data[:-10], json.dumps(m).encode()),
    "object longer than stated": lambda data, m: (data + b"x" * 10, json.dumps(m).encode()),
    "manifest sha256 of other bytes": lambda data, m: (
        data, json.dumps({**m, "sha256": hashlib.sha256(b"other").hexdigest()}).encode()
    ),
    "manifest not JSON": lambda data, m: (data, b'{"checkpoint": "actor_2'),
    "manifest over 64 KiB": lambda data, m: (
        data, json.dumps({**m, "metadata": {"pad": "x" * 70_000}}).encode()
    ),
}  # fmt: skip


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_object_or_manifest_is_never_served(
    corruption: str,
    bucket: str,
    put: Callable[..., str],
    s3: Any,
    registries: Callable[..., ModelRegistry],
) -> None:
    """Whatever is wrong with the new object or its manifest, the live model keeps serving and
    the failure is recorded; the bad bytes are never live."""
    good = put(0)
    registry = registries(f"s3://{bucket}/models/")
    registry.check()
    put(1)
    manifest = manifest_of(bucket)
    data = s3.get_object(Bucket=bucket, Key=f"models/{manifest['checkpoint']}")["Body"].read()
    name = "actor_20310101_000000.pt"
    body, raw = CORRUPTIONS[corruption](data, {**manifest, "checkpoint": name})
    s3.put_object(Bucket=bucket, Key=f"models/{name}", Body=body)
    s3.put_object(Bucket=bucket, Key="models/actor_latest.json", Body=raw)
    attempt = step(registry)
    assert attempt is not None and attempt.result == "failed", attempt
    assert live_sha(registry) == good
    assert registry.get().version.sha256 == good
    assert registry.last_error is not None and registry.last_error["reason"]


def test_forged_signature_is_never_served(
    bucket: str, put: Callable[..., str], s3: Any, registries: Callable[..., ModelRegistry]
) -> None:
    """With a signing key, a manifest signed with another key is refused."""
    good = put(0, signing_key="k1")
    registry = registries(f"s3://{bucket}/models/", signing_key="k1")
    registry.check()
    assert live_sha(registry) == good
    put(1, signing_key="someone-else")
    attempt = step(registry)
    assert attempt is not None and attempt.result == "failed", attempt
    assert "signature" in (attempt.reason or ""), attempt
    assert live_sha(registry) == good


def test_missing_manifest_is_missing_until_published(
    bucket: str, put: Callable[..., str], registries: Callable[..., ModelRegistry]
) -> None:
    """An empty prefix is a model not published yet (missing, not failed); a publish loads."""
    registry = registries(f"s3://{bucket}/models/")
    assert step(registry) is None
    assert registry.file_missing and registry.current is None
    sha = put(0)
    attempt = step(registry)
    assert attempt is not None and attempt.result == "ok", attempt
    assert live_sha(registry) == sha


@pytest.mark.slow
def test_stopped_store_keeps_the_live_model_serving(
    bucket: str, put: Callable[..., str], store: Any, registries: Callable[..., ModelRegistry]
) -> None:
    """While the store is down the live model answers, a failed HEAD keeps the last token and
    shows in status, a look is a failed check; when the store is back, a publish swaps."""
    good = put(0)
    registry = registries(f"s3://{bucket}/models/")
    registry.check()
    token = registry.source.token()
    store.stop()
    try:
        registry.source.poll_now()  # type: ignore[attr-defined]
        health = registry.status()["source_health"]
        assert health["error"] and "connect" in health["error"].lower(), health
        assert registry.source.token() == token
        started = time.perf_counter()
        for _ in range(100):
            assert registry.get().version.sha256 == good
        assert time.perf_counter() - started < 5, "get() waited for the store"
        attempt = registry.check(reload=True)
        assert attempt is not None and attempt.result == "failed", attempt
        assert "did not answer" in (attempt.reason or ""), attempt
        assert live_sha(registry) == good
    finally:
        store.start()
    newer = put(1)
    attempt = step(registry)
    assert attempt is not None and attempt.result == "ok", attempt
    assert live_sha(registry) == newer
    assert registry.status()["source_health"]["error"] is None


def test_publish_writes_the_object_first_and_the_manifest_last(bucket: str, store: Any) -> None:
    """The checkpoint object is complete before any manifest names it."""
    before = len(store.seen)
    path = publish(seeded_actor(0), f"s3://{bucket}/models/", format="torchscript")
    puts = [s.path for s in store.seen[before:] if s.method == "PUT" and s.status == 200]
    assert puts[0] == f"/{bucket}/models/{path.name}"
    assert puts[-1] == f"/{bucket}/models/actor_latest.json"
    assert manifest_of(bucket)["checkpoint"] == path.name


def test_publish_never_overwrites_a_checkpoint_object(bucket: str, s3: Any) -> None:
    """Two publishes in the same second get two names; the first object keeps its bytes."""
    first = publish(seeded_actor(0), f"s3://{bucket}/models", format="torchscript")
    data = s3.get_object(Bucket=bucket, Key=f"models/{first.name}")["Body"].read()
    second = publish(seeded_actor(1), f"s3://{bucket}/models/", format="torchscript")
    assert second.name != first.name and second.name > first.name
    again = s3.get_object(Bucket=bucket, Key=f"models/{first.name}")["Body"].read()
    assert again == data


def test_publish_retention_keeps_the_object_the_manifest_names(bucket: str, s3: Any) -> None:
    """keep=2 leaves the two newest checkpoint objects (each with its signed record), the
    manifest's among them."""
    names = [
        publish(seeded_actor(i), f"s3://{bucket}/models/", keep=2, format="torchscript").name
        for i in range(3)
    ]
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    kept = [f"models/{n}" for n in names[1:]] + [f"models/{Path(n).stem}.json" for n in names[1:]]
    assert listed == sorted([*kept, "models/actor_latest.json"])
    assert manifest_of(bucket)["checkpoint"] == names[2]


def test_publish_to_store_returns_the_object_url(bucket: str) -> None:
    url = publish_to_store(seeded_actor(0), f"s3://{bucket}/m/", format="torchscript")
    assert url.startswith(f"s3://{bucket}/m/actor_") and url.endswith(".pt")


def test_publish_to_a_manifest_key_or_no_bucket_is_refused(s3env: dict[str, str]) -> None:
    with pytest.raises(PublishError):
        publish(seeded_actor(0), "s3:///models/")
    with pytest.raises(PublishError):
        publish(seeded_actor(0), "s3://b/models/other_latest.json")


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("s3://b/models/", S3Location("b", "models/", "models/actor_latest.json")),
        ("s3://b/models", S3Location("b", "models/", "models/actor_latest.json")),
        ("s3://b", S3Location("b", "", "actor_latest.json")),
        ("s3://b/a/b/pi_latest.json", S3Location("b", "a/b/", "a/b/pi_latest.json")),
    ],
)
def test_location_of_a_url(url: str, where: S3Location) -> None:
    assert S3Location.parse(url, "actor") == where


def test_checkpoint_object_url_is_refused() -> None:
    """A checkpoint object alone has no sha256 to check it against: serve the manifest."""
    with pytest.raises(ValueError, match="manifest"):
        S3Location.parse("s3://b/models/actor_latest.pt", "actor")


def test_token_is_pending_until_the_first_head_answers(s3env: dict[str, str], s3: Any,
                                                       bucket: str) -> None:  # fmt: skip
    """Before the first HEAD answers the token is PENDING (a first look loads; it is not called
    missing); a HEAD that hangs holds up only the poll thread, and health says so."""
    release = threading.Event()

    class SlowHead:
        def __getattr__(self, name: str) -> Any:
            return getattr(s3, name)

        def head_object(self, **kwargs: Any) -> Any:
            release.wait(30)
            return s3.head_object(**kwargs)

    source = S3Source(f"s3://{bucket}/models/", check_interval=QUIET, client=SlowHead())
    try:
        assert source.token() is PENDING
        wait_until(lambda: source.health()["reading_for"] is not None, "the HEAD to start")
        release.set()
        wait_until(lambda: source.health()["polls"] == 1, "the HEAD to answer")
        assert source.token() is None  # nothing published under the prefix
        assert source.health()["error"] is None
    finally:
        source.close()


def test_malformed_manifest_fails_the_fetch(bucket: str, s3: Any, s3env: dict[str, str]) -> None:
    """A manifest that is not one is an IntegrityError from fetch, and no digest."""
    s3.put_object(Bucket=bucket, Key="models/actor_latest.json", Body=b"[]")
    source = S3Source(f"s3://{bucket}/models/", check_interval=QUIET)
    try:
        assert source.digest() is None
        with pytest.raises(IntegrityError, match="not a JSON object"):
            source.fetch(PrivateCopies(), limit=1 << 20)
    finally:
        source.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)
