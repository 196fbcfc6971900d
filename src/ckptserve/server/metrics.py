"""Prometheus metrics (prometheus-client), correct with one process or several workers.

With `--workers` > 1 the CLI points `PROMETHEUS_MULTIPROC_DIR` at a temporary directory before the
workers start: counters and histograms are then summed over workers, and checkpoint age and lag are
computed at scrape time from the files on disk. `ckptserve_model_info` is a collector of its own:
prometheus-client's multiprocess mode keeps every label set a gauge ever had (`Gauge.remove` does
nothing there), so each worker writes the versions it serves to `info_<pid>.json` in that directory
and a scrape shows one series per version some live worker serves, and no other.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .names import printable

if TYPE_CHECKING:
    from ..registry import ModelRegistry
    from ..versions import LoadAttempt

__all__ = ["MULTIPROC_ENV", "Metrics", "RolloutFigures", "prune_dead_workers", "worker_versions"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)

#: Per model: (name, age, lag, serving a fallback).
Staleness = Callable[[], Iterable[tuple[str, float | None, float | None, bool]]]


@dataclass(frozen=True, slots=True)
class RolloutFigures:
    """One model's rollout figures at scrape time (docs/rollout.md).

    divergence: the last judged candidate's shadow figures (mean_abs, max_abs, sign_flips,
        non_finite), None before one was compared.
    rewards: count and mean of the rewards per version (12 hex) this process received.
    """

    model: str
    versions_behind: int | None
    live_step: int | None
    resident_versions: int
    resident_bytes: int
    divergence: Mapping[str, Any] | None
    rewards: Mapping[str, tuple[int, float]]


_FIGURES = ("mean_abs", "max_abs", "sign_flips", "non_finite")


class _RolloutCollector(Collector):
    """Versions behind, live step, resident versions, shadow figures and rewards, at scrape time."""

    def __init__(self, figures: Callable[[], Iterable[RolloutFigures]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        def gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=labels)

        behind = gauge("ckptserve_versions_behind",
                       "Published checkpoints newer than the live one (a higher step of its run, "
                       "or published later).", ["model"])  # fmt: skip
        step = gauge("ckptserve_live_step", "The live checkpoint's training step.", ["model"])
        count = gauge(
            "ckptserve_resident_versions",
            "Versions kept loaded (--keep-versions), the live one included.",
            ["model"],
        )
        size = gauge(
            "ckptserve_resident_bytes",
            "Bytes the tensors of the resident versions hold.",
            ["model"],
        )
        shadow = gauge("ckptserve_shadow_divergence",
                       "The last judged candidate against the live model on the buffered states: "
                       "mean_abs, max_abs (action difference), sign_flips, non_finite (shares).",
                       ["model", "figure"])  # fmt: skip
        rewards = gauge(
            "ckptserve_reward_count",
            "Rewards received (POST /rl/feedback) per version this process answered "
            "with, for the 16 versions rewarded last.",
            ["model", "version"],
        )
        means = gauge("ckptserve_reward_mean", "The mean of those rewards.", ["model", "version"])
        for f in self._figures():
            if f.versions_behind is not None:
                behind.add_metric([f.model], f.versions_behind)
            if f.live_step is not None:
                step.add_metric([f.model], f.live_step)
            count.add_metric([f.model], f.resident_versions)
            size.add_metric([f.model], f.resident_bytes)
            for figure in _FIGURES:
                value = (f.divergence or {}).get(figure)
                if value is not None:
                    shadow.add_metric([f.model, figure], value)
            for version, (n, mean) in f.rewards.items():
                rewards.add_metric([f.model, version], n)
                means.add_metric([f.model, version], mean)
        yield from (behind, step, count, size, shadow, rewards, means)


class _StalenessCollector(Collector):
    """Checkpoint age and lag, and whether a fallback is served, computed when /metrics is
    scraped."""

    def __init__(self, staleness: Staleness) -> None:
        self._staleness = staleness

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "ckptserve_checkpoint_age_seconds",
            "Seconds since the live checkpoint's file was written (now - its mtime).",
            labels=["model"],
        )
        lag = GaugeMetricFamily(
            "ckptserve_checkpoint_lag_seconds",
            "How far the live checkpoint is behind the newest checkpoint on disk (mtime difference).",
            labels=["model"],
        )
        fallback = GaugeMetricFamily(
            "ckptserve_fallback",
            "1 while an earlier checkpoint is served because the newest one cannot be.",
            labels=["model"],
        )
        for model, age_s, lag_s, falling_back in self._staleness():
            if age_s is not None:
                age.add_metric([model], age_s)
            if lag_s is not None:
                lag.add_metric([model], lag_s)
            fallback.add_metric([model], 1.0 if falling_back else 0.0)
        yield age
        yield lag
        yield fallback


class _InfoCollector(Collector):
    """`ckptserve_model_info{model,checkpoint,sha256} 1` for each version a live worker serves."""

    def __init__(self, directory: str | None) -> None:
        self._directory = directory
        self._own: dict[str, tuple[str, str]] = {}
        self._file = os.path.join(directory, _info_file(os.getpid())) if directory else None

    def set(self, model: str, checkpoint: str, sha256: str) -> None:
        if self._own.get(model) == (checkpoint, sha256):
            return
        self._own[model] = (checkpoint, sha256)
        if self._file is not None and self._directory is not None:
            fd, tmp = tempfile.mkstemp(dir=self._directory, prefix=".info-")
            with os.fdopen(fd, "w") as f:
                json.dump(self._own, f)
            os.replace(tmp, self._file)  # a scrape reads the old file or the new one, whole

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._file)

    def _workers(self) -> Iterator[dict[str, tuple[str, str]]]:
        """The versions each other live worker serves, from its file."""
        if self._directory is not None:
            for pid, versions in worker_versions(self._directory):
                if pid != os.getpid():
                    yield versions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ckptserve_model_info",
            "The live checkpoint of each model (value 1; with several workers, each version one "
            "of them serves).",
            labels=["model", "checkpoint", "sha256"],
        )
        seen: set[tuple[str, str, str]] = set()
        for versions in (self._own, *self._workers()):
            for model, (checkpoint, sha256) in versions.items():
                if (model, checkpoint, sha256) not in seen:
                    seen.add((model, checkpoint, sha256))
                    family.add_metric([model, checkpoint, sha256], 1)
        yield family


class Metrics:
    """The server's metrics, owned by one app (no module-level registry state)."""

    def __init__(
        self,
        staleness: Staleness,
        *,
        multiprocess_dir: str | None = None,
        rollout: Callable[[], Iterable[RolloutFigures]] | None = None,
    ) -> None:
        self.multiprocess_dir = multiprocess_dir
        own = CollectorRegistry()
        reg = None if multiprocess_dir else own
        self.requests = Counter(
            "ckptserve_requests", "Model requests by model and status code.",
            ["model", "code"], registry=reg,
        )  # fmt: skip
        self.latency = Histogram(
            "ckptserve_request_duration_seconds", "Model request latency by model and status code.",
            ["model", "code"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.reloads = Counter(
            "ckptserve_reloads", "Checkpoint load attempts by result (ok, failed, rejected, unchanged).",
            ["model", "result"], registry=reg,
        )  # fmt: skip
        self.load_duration = Histogram(
            "ckptserve_load_duration_seconds", "Time to read, verify, load and validate a checkpoint.",
            ["model"], buckets=LOAD_BUCKETS, registry=reg,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "ckptserve_event_loop_lag_seconds",
            "How late the event loop ran the lag probe's timer: a stall delays every request.",
            buckets=LAG_BUCKETS, registry=reg,
        )  # fmt: skip
        self.rollbacks = Counter(
            "ckptserve_rollbacks", "Live versions rolled back (non-finite actions on live "
            "traffic, or registry.roll_back).", ["model"], registry=reg,
        )  # fmt: skip
        self.canary_decisions = Counter(
            "ckptserve_canary_decisions", "Canaries judged: promote or roll_back.",
            ["model", "action"], registry=reg,
        )  # fmt: skip
        self.feedback_refusals = Counter(
            "ckptserve_feedback_refused", "Rewards refused by POST /rl/feedback, by reason "
            "(unknown_id, expired, duplicate, bad_reward).", ["reason"], registry=reg,
        )  # fmt: skip
        self.loop_lag_max = Gauge(
            "ckptserve_event_loop_lag_max_seconds", "The worst event-loop lag this process has seen.",
            registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip
        if multiprocess_dir:
            exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(exposed, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            exposed = own
        exposed.register(_StalenessCollector(staleness))
        if rollout is not None:
            exposed.register(_RolloutCollector(rollout))
        self.info = _InfoCollector(multiprocess_dir)
        exposed.register(self.info)
        self._exposed = exposed
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, model: str, code: int, seconds: float) -> None:
        """Count one model request and its latency (label children are cached: hot path)."""
        key = (model, code)
        pair = self._children.get(key)
        if pair is None:
            labels = (model, str(code))
            pair = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def on_rollout(self, model: str, event: str, what: str) -> None:
        """A rollout listener (`partial(metrics.on_rollout, model)`): count rollbacks and canary
        decisions."""
        if event == "rolled_back":
            self.rollbacks.labels(model).inc()
        elif event in ("promote", "roll_back"):
            self.canary_decisions.labels(model, event).inc()

    def feedback_refused(self, reason: str) -> None:
        """Count one reward refused by POST /rl/feedback."""
        self.feedback_refusals.labels(reason).inc()

    def on_load(self, registry: ModelRegistry, attempt: LoadAttempt) -> None:
        """A registry listener: count the attempt and move the info gauge to the live version."""
        self.reloads.labels(registry.name, attempt.result).inc()
        if attempt.result == "unchanged":
            return
        self.load_duration.labels(registry.name).observe(attempt.duration)
        self.set_live(registry)

    def set_live(self, registry: ModelRegistry) -> None:
        """Point `ckptserve_model_info` at the registry's live version."""
        version = registry.version
        if version is not None:
            self.info.set(registry.name, printable(version.checkpoint), version.sha256)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text for /metrics and its content type."""
        return generate_latest(self._exposed), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """Mark this worker's live gauges and its versions dead (multiprocess mode)."""
        if self.multiprocess_dir:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]
            self.info.close()


_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")
_INFO_FILE = re.compile(r"^info_(\d+)\.json$")


def worker_versions(directory: str) -> Iterator[tuple[int, dict[str, tuple[str, str]]]]:
    """(pid, {model: (checkpoint, sha256)}) of each live worker, from the file each keeps in the
    shared metrics directory (`--workers N`): what `ckptserve_model_info` and `/rl/fleet` show."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            m = _INFO_FILE.match(entry)
            if m is None or not _alive(pid := int(m.group(1))):
                continue
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(directory, entry)) as f:
                    data = json.load(f)
                if isinstance(data, dict):
                    yield (
                        pid,
                        {
                            str(model): (str(version[0]), str(version[1]))
                            for model, version in data.items()
                            if isinstance(version, list) and len(version) == 2
                        },
                    )


def _info_file(pid: int) -> str:
    return f"info_{pid}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def prune_dead_workers(directory: str) -> None:
    """Drop the live-gauge and version files of workers that died without cleaning up (kill -9)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            info = _INFO_FILE.match(entry)
            if info is not None and not _alive(int(info.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, entry))
                continue
            m = _LIVE_FILE.match(entry)
            if m is None:
                continue
            pid = int(m.group(1))
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
