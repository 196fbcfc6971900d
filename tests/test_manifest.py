"""Verified checkpoints: the `{name}_latest.json` manifest, its sha256 and its signature."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptserve import (
    CheckpointError,
    IntegrityError,
    ManifestSource,
    ModelNotAvailable,
    ModelRegistry,
    PublishError,
    publish,
)
from ckptserve.manifest import (
    MAX_MANIFEST_BYTES,
    SIGNING_KEY_ENV,
    SIGNING_KEYS_ENV,
    canonical_bytes,
    parse_keyring,
    parse_manifest,
    sign_manifest,
    verify_signature,
)
from ckptserve.naming import list_checkpoints, record_for
from core_helpers import action_of, freeze_clock, wait_for, wait_for_timestamp_tick
from policies import seeded_actor


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / "actor_latest.json").read_text())


def publish_ts(directory: Path, seed: int, **kwargs) -> Path:
    kwargs.setdefault("format", "torchscript")
    return publish(seeded_actor(seed), directory, **kwargs)


def expected(seed: int) -> float:
    return action_of(seeded_actor(seed))


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    with open(path, "r+b") as f:
        f.write(data)


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(SIGNING_KEYS_ENV, raising=False)


# ---- 1. the manifest pointer ---------------------------------------------------------------


def test_manifest_is_written_after_the_checkpoint_it_names(tmp_path, monkeypatch):
    """The checkpoint's record, then the latest link, then the manifest: each appears only once
    the checkpoint it names is complete and linked in place."""
    events: list[str] = []
    real_link, real_replace = os.link, os.replace

    def link(src, dst, *args, **kwargs):
        events.append(f"link {Path(dst).name}")
        return real_link(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if Path(dst).suffix == ".json":
            named = json.loads(Path(src).read_text())["checkpoint"]
            assert (tmp_path / named).exists(), "manifest published before its checkpoint"
        events.append(f"replace {Path(dst).name}")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    checkpoint = publish_ts(tmp_path, 0)
    assert events == [
        f"link {checkpoint.name}",
        f"replace {checkpoint.stem}.json",
        "replace actor_latest.pt",
        "replace actor_latest.json",
    ]


def test_manifest_is_signed_with_the_key_from_the_environment(tmp_path, monkeypatch):
    """With CKPTSERVE_SIGNING_KEY set, publish() adds an HMAC-SHA256 signature."""
    monkeypatch.setenv(SIGNING_KEY_ENV, "s3cret")
    publish_ts(tmp_path, 0)
    manifest = manifest_of(tmp_path)
    assert manifest["signature"] == sign_manifest(manifest, "s3cret")
    verify_signature(manifest, "s3cret", required=True)
    with pytest.raises(IntegrityError, match="does not match"):
        verify_signature(manifest, "another key")


def test_signing_key_argument_overrides_the_environment(tmp_path, monkeypatch):
    """`signing_key=` wins over the environment variable."""
    monkeypatch.setenv(SIGNING_KEY_ENV, "from-env")
    publish_ts(tmp_path, 0, signing_key=b"from-arg")
    verify_signature(manifest_of(tmp_path), b"from-arg")


def test_canonical_bytes_ignore_order_whitespace_and_the_signature():
    """The signed bytes do not depend on key order, indentation or the signature field."""
    a = {"checkpoint": "x.pt", "sha256": "0" * 64, "size": 1, "metadata": {"b": 1, "a": 2}}
    b = json.loads(json.dumps(dict(reversed(list(a.items()))), indent=4))
    b["signature"] = "whatever"
    assert canonical_bytes(a) == canonical_bytes(b)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"checkpoint": "x.pt"}', "lacks sha256, size"),
        (json.dumps({"checkpoint": "../x.pt", "sha256": "0" * 64, "size": 1}).encode(), "invalid"),
        (json.dumps({"checkpoint": "a/x.pt", "sha256": "0" * 64, "size": 1}).encode(), "invalid"),
        (json.dumps({"checkpoint": "x.pt", "sha256": "abc", "size": 1}).encode(), "hex digest"),
        (
            json.dumps(
                {"checkpoint": "x.pt", "sha256": "0" * 64, "size": 1, "metadata": []}
            ).encode(),
            "metadata",
        ),
        (json.dumps({"checkpoint": "x.pt", "sha256": "0" * 64, "size": "12"}).encode(), "size"),
    ],
    ids=["json", "object", "fields", "dotdot", "slash", "sha", "metadata", "size"],
)
def test_malformed_manifests_are_integrity_errors(raw, message):
    """A manifest that is not one is refused with a reason."""
    with pytest.raises(IntegrityError, match=message):
        parse_manifest(raw)


def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def good_manifest(**fields: object) -> dict:
    return {"checkpoint": "actor_20260101_000000.pt", "sha256": "0" * 64, "size": 1, **fields}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (json.dumps(good_manifest(signature="\u00e9" * 64)).encode(), "signature is not a hex"),
        (json.dumps(good_manifest(signature=7)).encode(), "signature is not a hex"),
        (b"[" * 100_000 + b"]" * 100_000, f"over {MAX_MANIFEST_BYTES} bytes"),
        (b"[" * 30_000 + b"]" * 30_000, "nested"),
        (json.dumps(good_manifest(metadata={"a": nested(100)})).encode(), "nested"),
        (b'{"checkpoint": "x.pt", "sha256": "' + b"0" * 64 + b'", "size": ' + b"9" * 5000 + b"}", "number too long"),
        (b'{"checkpoint": "x\xff.pt"}', "not UTF-8"),
        (b"\xff\xfe{\x00}\x00", "not UTF-8"),
        (b"\x00" * 16, "not valid JSON"),
        (json.dumps(good_manifest(checkpoint="actor_a\nX.pt")).encode(), "invalid checkpoint"),
        (json.dumps(good_manifest(checkpoint="x" * 300)).encode(), "invalid checkpoint"),
        (json.dumps(good_manifest(sha256="A" * 64)).encode(), "hex digest"),
        (json.dumps(good_manifest(size=2**70)).encode(), "byte count"),
        (json.dumps(good_manifest(size=True)).encode(), "byte count"),
    ],
    ids=[
        "non-ascii-signature", "number-signature", "100k-levels", "30k-levels", "deep-metadata",
        "5000-digits", "invalid-utf8", "utf16", "nul-bytes", "control-character-name",
        "long-name", "uppercase-sha", "huge-size", "bool-size",
    ],
)  # fmt: skip
def test_hostile_manifests_are_integrity_errors_with_a_one_line_reason(raw, message):
    """What a directory writer without the key can put in a manifest is refused as an
    IntegrityError whose reason is one short line, never a TypeError, RecursionError or
    ValueError from the parser or the signature check."""
    with pytest.raises(IntegrityError, match=message) as info:
        parse_manifest(raw)
    reason = str(info.value)
    assert "\n" not in reason and len(reason) < 200, reason


def test_a_signature_that_is_not_ascii_fails_verification_not_the_caller():
    """verify_signature on a mapping with a non-ASCII signature raises IntegrityError (the
    constant-time compare of two str raises TypeError on non-ASCII)."""
    manifest = good_manifest(signature="\u00e9" * 64)
    with pytest.raises(IntegrityError, match="not a hex"):
        verify_signature(manifest, "key")


def test_a_manifest_over_the_size_limit_is_refused_before_it_is_parsed():
    """MAX_MANIFEST_BYTES (64 KiB) is the cap; a manifest of exactly that size still parses."""
    body = json.dumps(good_manifest(metadata={"pad": ""}))
    pad = "x" * (MAX_MANIFEST_BYTES - len(body))
    exact = json.dumps(good_manifest(metadata={"pad": pad})).encode()
    assert len(exact) == MAX_MANIFEST_BYTES
    assert parse_manifest(exact)["metadata"]["pad"] == pad
    with pytest.raises(IntegrityError, match="over 65536 bytes"):
        parse_manifest(exact + b" ")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
HEX_ISH = st.text(alphabet="0123456789abcdefABC\u00e9\n", min_size=63, max_size=65)


def field(valid: object, *near: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the valid value, else something close to it or any JSON value."""
    return st.one_of(st.just(valid), st.just(valid), *near, JSON_VALUES)


MANIFESTS = st.fixed_dictionaries(
    {
        "checkpoint": field("actor_20260101_000000.pt", st.text(max_size=12)),
        "sha256": field("0" * 64, HEX_ISH),
        "size": field(1, st.integers(min_value=-(2**64), max_value=2**64)),
    },
    optional={
        "metadata": field({"step": 1}, st.dictionaries(st.text(max_size=4), JSON_VALUES)),
        "signature": field("f" * 64, HEX_ISH),
        "key_id": field("k1", st.text(max_size=8)),
        "format": field("export", st.text(max_size=8)),
    },
)


def _only_integrity_errors(raw: bytes) -> None:
    try:
        manifest = parse_manifest(raw)
    except IntegrityError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    for key in ("key", b"k\xff"):
        try:
            verify_signature(manifest, key, required=True)
        except IntegrityError as exc:
            assert "\n" not in str(exc), str(exc)


@settings(derandomize=True, deadline=None, max_examples=400)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_manifest_or_an_integrity_error(raw):
    """parse_manifest then verify_signature over arbitrary bytes raise nothing but IntegrityError."""
    _only_integrity_errors(raw)


@settings(derandomize=True, deadline=None, max_examples=400)
@given(MANIFESTS, st.booleans())
def test_any_json_object_gives_a_manifest_or_an_integrity_error(fields, indent):
    """Over manifests whose fields hold valid, nearly valid or any JSON values: only
    IntegrityError, from parsing and from checking the signature."""
    raw = json.dumps(fields, indent=2 if indent else None, ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )
    _only_integrity_errors(raw)


# ---- 2. manifest mode in the registry ----------------------------------------------------------


def test_directory_with_a_manifest_is_served_through_it(tmp_path, make_registry):
    """Given a directory, the registry prefers the manifest and carries its metadata."""
    checkpoint = publish_ts(tmp_path, 0, metadata={"step": 10})
    registry = make_registry(tmp_path)
    assert registry.source.kind == "manifest"
    assert action_of(registry.get_model()) == pytest.approx(expected(0))
    assert registry.version.checkpoint == checkpoint.name
    assert registry.version.metadata["step"] == 10


def test_bit_flipped_checkpoint_behind_a_correct_manifest_is_rejected(tmp_path, make_registry):
    """A flipped bit fails the manifest's sha256; the live model keeps serving."""
    publish_ts(tmp_path, 0)
    registry = make_registry(tmp_path / "actor_latest.json")
    first = registry.get_model()

    flip_a_bit(publish_ts(tmp_path, 1))
    assert registry.get_model() is first
    assert "sha256" in registry.last_error["reason"]
    assert registry.history[-1].result == "failed"
    assert registry.load_count == 1


def test_bit_flipped_checkpoint_on_cold_start_is_an_integrity_error(tmp_path, make_registry):
    """With nothing live, the sha256 mismatch is the cause of ModelNotAvailable."""
    flip_a_bit(publish_ts(tmp_path, 0))
    registry = make_registry(tmp_path)
    with pytest.raises(ModelNotAvailable) as info:
        registry.get_model()
    assert isinstance(info.value.__cause__, IntegrityError)


def test_manifest_naming_a_missing_checkpoint_keeps_the_live_model(tmp_path, make_registry):
    """A manifest whose checkpoint is gone is a failed load with a reason, not a crash."""
    publish_ts(tmp_path, 0)
    registry = make_registry(tmp_path)
    first = registry.get_model()
    manifest = manifest_of(tmp_path)
    manifest["checkpoint"] = "actor_20000101_000000.pt"
    wait_for_timestamp_tick(tmp_path / "actor_latest.json")
    (tmp_path / "actor_latest.json").write_text(json.dumps(manifest))
    assert registry.get_model() is first
    assert "does not exist" in registry.last_error["reason"]


def test_forged_manifest_without_the_key_is_rejected(tmp_path, make_registry):
    """With a signing key configured, unsigned and wrongly signed manifests never load."""
    publish_ts(tmp_path, 0, signing_key="key")
    registry = make_registry(tmp_path, signing_key="key")
    first = registry.get_model()

    publish_ts(tmp_path, 1)  # someone who can write the directory but has no key
    assert registry.get_model() is first
    assert "not signed" in registry.last_error["reason"]

    publish_ts(tmp_path, 2, signing_key="guessed")
    assert registry.get_model() is first
    assert "signature does not match" in registry.last_error["reason"]

    publish_ts(tmp_path, 3, signing_key="key")
    assert action_of(registry.get_model()) == pytest.approx(expected(3))


def test_require_signature_rejects_unsigned_manifests(tmp_path, make_registry):
    """require_signature with a key refuses an unsigned manifest."""
    publish_ts(tmp_path, 0)
    registry = make_registry(tmp_path, require_signature=True, signing_key="key")
    with pytest.raises(ModelNotAvailable) as info:
        registry.get_model()
    assert isinstance(info.value.__cause__, IntegrityError)


def test_require_signature_without_a_key_fails_at_construction(tmp_path):
    """Requiring signatures with no key to check them is a configuration error up front."""
    publish_ts(tmp_path, 0)
    with pytest.raises(ValueError, match="signing_key"):
        ModelRegistry(tmp_path, require_signature=True)


def test_require_signature_needs_a_manifest(tmp_path):
    """A plain checkpoint file has no signature to check, so require_signature refuses it."""
    publish_ts(tmp_path, 0)
    with pytest.raises(CheckpointError, match="manifest"):
        ModelRegistry(tmp_path / "actor_latest.pt", require_signature=True, signing_key="key")


# ---- 3. plain-file fixes and the coarse-timestamp case ---------------------------------------------


def test_touching_the_manifest_does_not_reload(tmp_path, make_registry):
    """A touch of the manifest re-reads it, finds the same sha256 and keeps the model."""
    publish_ts(tmp_path, 0)
    registry = make_registry(tmp_path)
    first = registry.get_model()
    os.utime(tmp_path / "actor_latest.json", ns=(1, 10**18))
    assert registry.get_model() is first
    assert registry.load_count == 1
    assert registry.history[-1].result == "unchanged"


def test_same_second_double_publish_on_coarse_timestamps_is_served_after_verify_interval(
    tmp_path, make_registry, monkeypatch
):
    """When a second publish leaves the manifest's stat key unchanged, the periodic re-read finds it."""

    def coarse_token(self):  # a file system with 1 s timestamps and no inode/ctime to tell
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns // 10**9, st.st_size)

    monkeypatch.setattr(ManifestSource, "token", coarse_token)
    freeze_clock(monkeypatch, datetime(2026, 4, 12, 16, 5, 11, tzinfo=timezone.utc))
    manifest = tmp_path / "actor_latest.json"
    publish_ts(tmp_path, 0, metadata={"pad": "xx"})  # the second name is 2 characters longer
    before = os.stat(manifest)
    registry = make_registry(tmp_path, verify_interval=0.05)
    first = registry.get_model()

    publish_ts(tmp_path, 1, metadata={"pad": ""})
    os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(manifest).st_size == before.st_size
    assert coarse_token(registry.source) == (before.st_mtime_ns // 10**9, before.st_size)

    wait_for(
        lambda: registry.get_model() is not first,
        what="the verify interval to catch the second publish",
    )
    assert action_of(registry.get_model()) == pytest.approx(expected(1))
    assert registry.load_count == 2


def test_manifest_replaced_during_a_failed_load_is_loaded_at_once(tmp_path, make_registry):
    """A failure does not block the manifest that replaced the failing one (no retry_after wait)."""
    publish_ts(tmp_path, 0)
    registry = make_registry(tmp_path, retry_after=3600)
    first = registry.get_model()
    manifest = manifest_of(tmp_path)
    manifest["checkpoint"] = "actor_20000101_000000.pt"  # removed by retention, say
    wait_for_timestamp_tick(tmp_path / "actor_latest.json")
    (tmp_path / "actor_latest.json").write_text(json.dumps(manifest))

    source = registry.source
    real_fetch = source.fetch
    raced: list[Path] = []

    def fetch_while_the_trainer_publishes(copies, **kw):
        try:
            return real_fetch(copies, **kw)
        finally:
            if not raced:
                raced.append(publish_ts(tmp_path, 1))

    source.fetch = fetch_while_the_trainer_publishes  # type: ignore[method-assign]
    assert registry.get_model() is first  # this attempt fails: its checkpoint is gone
    assert registry.history[-1].result == "failed"
    assert action_of(registry.get_model()) == pytest.approx(expected(1))


def test_manifest_digest_is_none_when_unreadable(tmp_path):
    """digest() is a cheap re-read; a missing or broken manifest gives None, not an error."""
    source = ManifestSource(tmp_path / "actor_latest.json")
    assert source.token() is None and source.digest() is None
    (tmp_path / "actor_latest.json").write_text("{broken")
    assert source.digest() is None


def test_require_signature_ignores_a_plain_checkpoint_dropped_into_the_directory(
    tmp_path, make_registry
):
    """Watching an empty directory with signatures required, a bare `*_latest.pt` is not served."""
    registry = make_registry(tmp_path, require_signature=True, signing_key="key")
    publish_ts(tmp_path / "elsewhere", 0)
    (tmp_path / "actor_latest.pt").write_bytes(
        (tmp_path / "elsewhere" / "actor_latest.pt").read_bytes()
    )
    with pytest.raises(ModelNotAvailable):
        registry.get_model()
    publish_ts(tmp_path, 1, signing_key="key")
    assert action_of(registry.get_model()) == pytest.approx(expected(1))


# ---- 4. a signed record per checkpoint ----------------------------------------------------------


def test_each_checkpoint_has_a_record_like_the_latest_manifest(tmp_path, monkeypatch):
    """Beside every timestamped checkpoint, `record_for(checkpoint)` holds the same manifest as
    `{name}_latest.json` did when it was published: same fields, same signature."""
    monkeypatch.setenv(SIGNING_KEY_ENV, "s3cret")
    first = publish_ts(tmp_path, 0, metadata={"step": 1})
    first_manifest = manifest_of(tmp_path)
    second = publish_ts(tmp_path, 1, metadata={"step": 2})
    assert json.loads(record_for(first).read_text()) == first_manifest
    assert json.loads(record_for(second).read_text()) == manifest_of(tmp_path)
    for checkpoint in (first, second):
        record = parse_manifest(record_for(checkpoint).read_bytes())
        verify_signature(record, "s3cret", required=True)
        assert record["checkpoint"] == checkpoint.name
        assert record["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_a_record_serves_as_a_manifest_for_its_checkpoint(tmp_path, make_registry):
    """A registry given a checkpoint's record serves that checkpoint, checked by its sha256."""
    first = publish_ts(tmp_path, 0)
    publish_ts(tmp_path, 1)
    registry = make_registry(record_for(first))
    assert registry.source.kind == "manifest"
    assert action_of(registry.get_model()) == pytest.approx(expected(0))
    assert registry.version.checkpoint == first.name


def test_retention_removes_each_record_with_its_checkpoint(tmp_path):
    """Records go with the checkpoints retention removes; the ones kept keep theirs."""
    published = [publish_ts(tmp_path, i, keep=2) for i in range(4)]
    for gone in published[:2]:
        assert not gone.exists() and not record_for(gone).exists()
    for kept in published[2:]:
        assert record_for(kept).exists()
    records = sorted(p.name for p in tmp_path.glob("actor_2*.json"))
    assert records == sorted(record_for(p).name for p in published[2:])


def test_metadata_a_server_would_refuse_is_refused_at_publish(tmp_path):
    """A manifest over MAX_MANIFEST_BYTES would never load: publish() refuses it and leaves
    no checkpoint behind."""
    with pytest.raises(PublishError, match="over 65536 bytes"):
        publish_ts(tmp_path, 0, metadata={"notes": "x" * MAX_MANIFEST_BYTES})
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


# ---- 5. rotating keys: key ids and several accepted keys -----------------------------------------


def test_a_keyring_parses_ids_and_secrets_and_the_first_signs():
    """`id:secret` pairs, comma-separated, the first listed signing; the legacy single key is
    accepted for manifests that name no key; secrets never show in the repr."""
    keyring = parse_keyring(keys=" new:s2:with-colon , old:s1 ", key="legacy")
    assert keyring.ids == ("new", "old", "") and keyring.signing_id == "new"
    assert keyring.secret("new") == b"s2:with-colon" and keyring.secret("") == b"legacy"
    assert keyring.secret("other") is None
    assert "s1" not in repr(keyring) and "legacy" not in repr(keyring)
    only_legacy = parse_keyring(key="legacy")
    assert only_legacy.ids == ("",) and only_legacy.signing_id == ""
    assert parse_keyring() is None and parse_keyring(keys="  ") is None


def test_a_key_file_lists_one_key_per_line(tmp_path):
    """An absolute path in CKPTSERVE_SIGNING_KEYS is a file of `id:secret` lines."""
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-04\nk2:second\n\nk1:first\n")
    keyring = parse_keyring(keys=str(path))
    assert keyring.ids == ("k2", "k1") and keyring.secret("k1") == b"first"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("k1:TOPSECRET,TOPSECRET", "entry 2 is not id:secret"),
        ("k1:TOPSECRET,k1:TOPSECRET2", "'k1' is listed twice"),
        ("k1:TOPSECRET,k2:", "key 'k2' has an empty secret"),
        ("bad id:TOPSECRET", "is not up to 64"),
        ("/nonexistent/keys", "key file /nonexistent/keys"),
    ],
    ids=["no-colon", "duplicate", "empty-secret", "bad-id", "missing-file"],
)
def test_malformed_keys_are_refused_without_showing_a_secret(keys, message):
    """A malformed CKPTSERVE_SIGNING_KEYS is a ValueError naming the problem, never a secret."""
    with pytest.raises(ValueError, match=message) as info:
        parse_keyring(keys=keys)
    assert "TOPSECRET" not in str(info.value)


def test_the_key_id_is_signed_and_selects_the_key(tmp_path):
    """publish() with a keyring writes `key_id` (covered by the signature); a reader verifies
    with that key, and changing the key_id breaks the signature."""
    publish_ts(tmp_path, 0, signing_key=parse_keyring(keys="k2:second,k1:first"))
    manifest = manifest_of(tmp_path)
    assert manifest["key_id"] == "k2"
    verify_signature(manifest, parse_keyring(keys="k1:first,k2:second"), required=True)
    with pytest.raises(IntegrityError, match="not an accepted one"):
        verify_signature(manifest, parse_keyring(keys="k1:first"))
    with pytest.raises(IntegrityError, match="does not match"):
        verify_signature({**manifest, "key_id": "k1"}, parse_keyring(keys="k1:second"))


def test_publish_reads_the_keys_from_the_environment(tmp_path, monkeypatch):
    """CKPTSERVE_SIGNING_KEYS wins over CKPTSERVE_SIGNING_KEY for signing; both are accepted."""
    monkeypatch.setenv(SIGNING_KEY_ENV, "legacy")
    monkeypatch.setenv(SIGNING_KEYS_ENV, "new:s2")
    publish_ts(tmp_path, 0)
    assert manifest_of(tmp_path)["key_id"] == "new"
    monkeypatch.setenv(SIGNING_KEYS_ENV, "k1")
    with pytest.raises(PublishError, match="not id:secret"):
        publish_ts(tmp_path / "b", 0)
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())


def test_a_key_is_rotated_without_an_outage(tmp_path, make_registry):
    """The documented steps: servers accept old and new, the trainer switches to the new, the
    servers drop the old. Every publish of every step is served; none is refused."""
    old_only, both, new_only = "old:s1", "old:s1,new:s2", "new:s2"

    def served_by(accepted: str, seed: int, signer: str) -> None:
        publish_ts(tmp_path, seed, signing_key=parse_keyring(keys=signer))
        registry = make_registry(tmp_path, signing_key=parse_keyring(keys=accepted),
                                 require_signature=True)  # fmt: skip
        assert action_of(registry.get_model()) == pytest.approx(expected(seed)), registry.last_error

    served_by(old_only, 0, signer=old_only)  # before
    served_by(both, 1, signer=old_only)  # 1. servers accept both keys (a rolling restart)
    served_by(both, 2, signer="new:s2,old:s1")  # 2. the trainer signs with the new key
    served_by(new_only, 3, signer=new_only)  # 3. servers drop the old key
    with pytest.raises(IntegrityError, match="not an accepted one"):
        verify_signature(parse_manifest(record_for(list_checkpoints(tmp_path)[2]).read_bytes()),
                         parse_keyring(keys=new_only))  # fmt: skip


def test_a_legacy_manifest_verifies_with_a_single_key(tmp_path):
    """A manifest signed with CKPTSERVE_SIGNING_KEY alone has no key_id and verifies with the
    single key, as before keyrings (byte-compatible with older servers)."""
    publish_ts(tmp_path, 0, signing_key="s3cret")
    manifest = manifest_of(tmp_path)
    assert "key_id" not in manifest
    assert manifest["signature"] == sign_manifest(manifest, "s3cret")
    verify_signature(manifest, parse_keyring(key="s3cret"), required=True)
    with pytest.raises(IntegrityError, match="signed with no key id"):
        verify_signature(manifest, parse_keyring(keys="k1:s3cret"))
