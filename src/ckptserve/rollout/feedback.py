"""Outcomes: signed request ids, and the rewards clients report for them.

Every response carries a request id that names the version that answered and when, and is
signed with a server secret, so any worker or replica holding the same secret can attribute it,
and an id that was never issued (or was altered) is refused:

    <sha256[:12]>.<ms since the epoch, hex>.<nonce><block, hex>.<slot, 2 hex>.<tag, 16 hex>

Signing costs once per response, so ids are issued in blocks: for each block (one version, one
issue time, up to 256 ids, at most one second old) one SHAKE128 over the secret and the block's
fields gives 256 tags of 64 bits, and the id in slot i carries tag i. SHAKE128 with a fixed-length
secret prefix is a PRF (the sponge has no length extension; KMAC is its standardised form), so
the tags of slots not handed out cannot be derived from those that were, and changing any field
of an id (its version, time, block or slot) changes the tag it needs. An id's time is its block's:
at most a second before the response. Measured: a third of a per-id keyed BLAKE2b's cost.

`POST /rl/feedback {"request_id": ..., "reward": float}` hands a reward to `FeedbackStore.add`,
which attributes it to that version once.

Memory is bounded: the last `capacity` rewards (with the version and issue time, for the canary's
test), the ids already rewarded among them, and count and mean for the `versions` versions that
received rewards most recently. Ids older than `max_age` are refused, so an id that has left the
duplicate window cannot be replayed after it either, as long as `capacity` covers `max_age`.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["FeedbackRefused", "FeedbackStore", "Issued", "RequestIds", "RewardStats"]

RefusalReason = Literal["unknown_id", "expired", "duplicate", "bad_reward"]
_ID = re.compile(
    r"([0-9a-f]{12})\.([0-9a-f]{1,12})\.([0-9a-f]{9,24})\.([0-9a-f]{2})\.([0-9a-f]{16})"
)
_UNKNOWN = "request_id is not a request id this server issued"


class FeedbackRefused(ValueError):
    """Raised when a reward cannot be attributed; `reason` is the metrics label."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


@dataclass(frozen=True, slots=True)
class Issued:
    """What a valid request id says: the version that answered and when (epoch s)."""

    request_id: str
    version: str  # the first 12 hex digits of the version's sha256
    issued_at: float


#: Ids per block, and the longest a block is used (its time is every id's time).
_SLOTS = 256
_BLOCK_SECONDS = 1.0
_TAG_BYTES = 8
_SLOT_NAMES = [f"{i:02x}." for i in range(_SLOTS)]


class _Block:
    __slots__ = ("prefix", "slots", "tags", "until", "version")

    def __init__(self, version: str, prefix: str, tags: list[str], until: float) -> None:
        self.version = version
        self.prefix = prefix
        self.tags = tags
        self.until = until
        self.slots = itertools.count().__next__


class RequestIds:
    """Issues and reads signed request ids.

    Args:
        secret: the signing key, shared by every worker and replica that must read the ids
            (default: random, so only this process can).
        clock: wall-clock seconds (tests pass a fake one).

    Example:
        ids = RequestIds(secret)
        request_id = ids.issue(live.version.sha256)  # per response
        ids.read(request_id).version                  # "3f2a9c...", 12 hex
    """

    def __init__(
        self, secret: bytes | str | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        if secret is None:
            secret = os.urandom(32)
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ValueError("the request id secret is empty")
        self._key = hashlib.sha256(key).digest()  # a fixed-length prefix for the PRF
        self._clock = clock
        self._nonce = secrets.token_hex(4)  # this process's ids never collide with another's
        self._blocks = itertools.count().__next__
        self._block: _Block | None = None

    def _tags(self, head: str, count: int) -> bytes:
        return hashlib.shake_128(self._key + head.encode()).digest(count * _TAG_BYTES)

    def _new_block(self, sha256: str, now: float) -> _Block:
        head = f"{sha256[:12]}.{int(now * 1000):x}.{self._nonce}{self._blocks():x}"
        stream = self._tags(head, _SLOTS).hex()
        width = 2 * _TAG_BYTES
        tags = [stream[at : at + width] for at in range(0, len(stream), width)]
        block = _Block(sha256, head + ".", tags, now + _BLOCK_SECONDS)
        self._block = block
        return block

    def issue(self, sha256: str) -> str:
        """A new id for a response answered by the version with this sha256."""
        now = self._clock()
        block = self._block
        if block is None or block.version != sha256 or now >= block.until:
            block = self._new_block(sha256, now)
        i = block.slots()
        if i >= _SLOTS:
            block = self._new_block(sha256, now)
            i = block.slots()
        # Concatenation: a third of an f-string's cost with a format spec, on every response.
        return block.prefix + _SLOT_NAMES[i] + block.tags[i]

    def read(self, request_id: object) -> Issued:
        """The version and issue time of an id this secret signed.

        Raises:
            FeedbackRefused("unknown_id"): not an id, or not one issued under this secret.
        """
        match = _ID.fullmatch(request_id) if isinstance(request_id, str) else None
        if match is None:
            raise FeedbackRefused("unknown_id", _UNKNOWN)
        text = match.string
        version, issued, _, slot, tag = match.groups()
        want = self._tags(text[: match.start(4) - 1], int(slot, 16) + 1)[-_TAG_BYTES:].hex()
        if not hmac.compare_digest(tag, want):
            raise FeedbackRefused("unknown_id", _UNKNOWN)
        return Issued(text, version, int(issued, 16) / 1000)


@dataclass(frozen=True, slots=True)
class RewardStats:
    """The rewards one version received: how many, and their mean."""

    count: int
    mean: float

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean}


class FeedbackStore:
    """Rewards attributed to the versions that answered, in bounded memory.

    Args:
        ids: reads (and checks) the request ids.
        capacity: how many recent rewards (and rewarded ids) are kept.
        versions: for how many versions count and mean are kept (those rewarded last).
        max_age: seconds after which a request id is too old to reward.
        clock: wall-clock seconds, as `ids` uses.
    """

    def __init__(
        self,
        ids: RequestIds,
        *,
        capacity: int = 10_000,
        versions: int = 16,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or versions < 1 or max_age <= 0:
            raise ValueError("capacity and versions must be >= 1 and max_age > 0")
        self.ids = ids
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        self._versions = versions
        self._lock = threading.Lock()  # guards everything below
        self._samples: deque[tuple[str, float, float]] = deque(maxlen=capacity)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._stats: OrderedDict[str, tuple[int, float]] = OrderedDict()  # version -> count, sum
        self.refused: dict[str, int] = dict.fromkeys(
            ("unknown_id", "expired", "duplicate", "bad_reward"), 0
        )

    def add(self, request_id: object, reward: object) -> Issued:
        """Attribute `reward` to the version that answered `request_id`.

        Raises:
            FeedbackRefused: the id was never issued (or altered), is too old or was rewarded
                already, or the reward is not a finite number. Each is counted in `refused`.
        """
        try:
            issued = self.ids.read(request_id)
            if isinstance(reward, bool) or not isinstance(reward, (int, float)):
                raise FeedbackRefused("bad_reward", f"reward must be a number, not {reward!r}")
            value = float(reward)
            if not math.isfinite(value):
                raise FeedbackRefused("bad_reward", "reward must be a finite number")
            if self._clock() - issued.issued_at > self.max_age:
                raise FeedbackRefused(
                    "expired", f"request_id is older than {self.max_age:g} s: too late to reward"
                )
            with self._lock:
                if issued.request_id in self._seen:
                    raise FeedbackRefused("duplicate", "this request_id was rewarded already")
                self._seen[issued.request_id] = None
                if len(self._seen) > self.capacity:
                    self._seen.popitem(last=False)
                self._samples.append((issued.version, issued.issued_at, value))
                count, total = self._stats.pop(issued.version, (0, 0.0))
                self._stats[issued.version] = (count + 1, total + value)
                if len(self._stats) > self._versions:
                    self._stats.popitem(last=False)
        except FeedbackRefused as exc:
            with self._lock:
                self.refused[exc.reason] += 1
            raise
        return issued

    def stats(self) -> dict[str, RewardStats]:
        """Count and mean of the rewards per version (12 hex of its sha256), since the start."""
        with self._lock:
            items = list(self._stats.items())
        return {v: RewardStats(count, total / count) for v, (count, total) in items}

    def rewards(self, version: str, *, since: float, until: float | None = None) -> list[float]:
        """The kept rewards of `version` (12 hex) for requests issued in [since, until]."""
        key = version[:12]
        with self._lock:
            samples = list(self._samples)
        end = math.inf if until is None else until
        return [r for v, at, r in samples if v == key and since <= at <= end]

    def to_dict(self) -> dict[str, Any]:
        """Status: rewards per version, how many are kept, and the refusals by reason."""
        with self._lock:
            kept, refused = len(self._samples), dict(self.refused)
        return {
            "versions": {v: s.to_dict() for v, s in self.stats().items()},
            "kept": kept,
            "capacity": self.capacity,
            "refused": refused,
        }
