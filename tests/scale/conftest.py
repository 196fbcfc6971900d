"""Fixtures for the scale-out tests: a real S3-compatible store on loopback (s3kit.py), the AWS
variables that point at it, and a fresh bucket per test. Skipped where moto is not installed."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The server tests' kit (free ports, `ckptserve serve` as a subprocess, an in-process server).
sys.path.insert(0, str(Path(__file__).parents[1] / "server"))


@pytest.fixture(scope="module")
def store() -> Iterator[Any]:
    pytest.importorskip("moto.moto_server.werkzeug_app", reason="the S3 tests need moto[server]")
    from s3kit import Store

    s = Store()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def s3env(store: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables pointing at the loopback store (and nowhere else)."""
    env = {
        "AWS_ENDPOINT_URL": store.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    return env


@pytest.fixture
def s3(s3env: dict[str, str]) -> Any:
    """A boto3 client for the test's own reads and writes."""
    import boto3

    return boto3.client("s3")


@pytest.fixture
def bucket(s3: Any) -> str:
    """A new, empty bucket for this test."""
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name
