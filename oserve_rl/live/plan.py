"""Switch a live cluster from the running deployment to a target one, without losing requests.

``diff_deployment(running, target)`` sorts replicas into *keep* (same spec
running already), *start* (target specs with no running match) and *stop*
(running replicas the target does not use); equal specs are interchangeable,
matched as a multiset. ``choose_order`` picks:

- **make-before-break** when the backend can hold old and new replicas at once
  (``Backend.fits``): start new -> wait ready -> add to router -> remove old
  from router -> wait until old running + waiting == 0 -> SIGTERM (the group's
  leader, see ``backend.terminate_group``) -> SIGKILL of the whole group after
  the deadline. No request sees a missing replica.
- **break-before-make** otherwise: remove old -> drain -> stop -> start new ->
  ready -> add. Requests arriving while no replica serves get 503 and must be
  retried by the client (the replay does).

Removing from the router *before* SIGTERM matters: a draining vLLM still says
200 on ``/health`` and answers new requests with 0 tokens and
``finish_reason: "abort"``. If a new replica never becomes ready, it is stopped
and the old deployment stays as it was (:class:`LiveClusterError`).

:class:`LiveCluster` ties a backend and a router together, executes switches
(``apply``) and runs a health monitor that removes dead replicas from the router
(process gone, or ``/health`` failing ``health_failures`` times in a row).

>>> from oserve_rl.live.backend import ReplicaSpec, load_live_config
>>> from oserve_rl.live.plan import LiveCluster
>>> cfg = load_live_config("configs/live/cpu-tiny.yaml", model="/tmp/tiny")  # doctest: +SKIP
>>> with LiveCluster.from_config(cfg, run_dir="runs/live") as cluster:      # doctest: +SKIP
...     cluster.apply([ReplicaSpec(tp=1)])
...     report = cluster.apply([ReplicaSpec(tp=1, label="B")])
...     print(report.summary())
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from oserve_rl.errors import ConfigError
from oserve_rl.live.backend import (
    Backend,
    LiveClusterConfig,
    LiveClusterError,
    ProcessBackend,
    Replica,
    ReplicaSpec,
    StopResult,
    http_get,
)
from oserve_rl.live.router import RouterProcess, WorkerRouter

Order = Literal["make-before-break", "break-before-make"]
MAKE_BEFORE_BREAK: Order = "make-before-break"
BREAK_BEFORE_MAKE: Order = "break-before-make"
PHASES = ("start", "ready", "route", "drain", "stop")


@dataclass(frozen=True)
class SwitchDiff:
    """Running replicas to keep / stop and target specs to start."""

    keep: tuple[Replica, ...]
    start: tuple[ReplicaSpec, ...]
    stop: tuple[Replica, ...]

    @property
    def is_noop(self) -> bool:
        return not self.start and not self.stop

    def summary(self) -> str:
        return (
            f"keep {[r.spec.short() for r in self.keep]}, start {[s.short() for s in self.start]}, "
            f"stop {[r.spec.short() for r in self.stop]}"
        )


def diff_deployment(running: Sequence[Replica], target: Sequence[ReplicaSpec]) -> SwitchDiff:
    """Match target specs to running replicas with an equal spec (multiset; first running match wins)."""
    unmatched = list(running)
    keep: list[Replica] = []
    start: list[ReplicaSpec] = []
    for spec in target:
        if not isinstance(spec, ReplicaSpec):
            raise ConfigError(f"target deployment entries must be ReplicaSpec, got {type(spec).__name__}: {spec!r}")
        hit = next((r for r in unmatched if r.spec == spec), None)
        if hit is None:
            start.append(spec)
        else:
            unmatched.remove(hit)
            keep.append(hit)
    return SwitchDiff(tuple(keep), tuple(start), tuple(unmatched))


def choose_order(diff: SwitchDiff, fits: Callable[[Sequence[ReplicaSpec]], bool]) -> Order:
    """Make-before-break when kept + leaving + new replicas fit together, else break-before-make."""
    together = [r.spec for r in diff.keep] + [r.spec for r in diff.stop] + list(diff.start)
    return MAKE_BEFORE_BREAK if fits(together) else BREAK_BEFORE_MAKE


@dataclass
class ReplicaPhases:
    """Per-replica phase durations (s) of one switch; absent phases did not apply."""

    replica_id: str
    action: Literal["start", "stop"]
    url: str
    phases_s: dict[str, float] = field(default_factory=dict)
    drained: bool | None = None
    stop_signal: str | None = None


@dataclass
class SwitchReport:
    """What a switch did and how long each phase took (``phases_s``: wall time of the phase over all replicas)."""

    order: Order
    kept: list[str]
    started: list[str]
    stopped: list[str]
    phases_s: dict[str, float]
    replicas: list[ReplicaPhases]
    total_s: float

    def summary(self) -> str:
        ph = ", ".join(f"{k} {v:.2f}s" for k, v in self.phases_s.items())
        return (
            f"{self.order}: kept {len(self.kept)}, started {len(self.started)}, stopped {len(self.stopped)} "
            f"in {self.total_s:.1f}s ({ph})"
        )


@dataclass(frozen=True)
class HealthEvent:
    """A replica the health monitor found dead and took out (``time.monotonic()`` stamps)."""

    replica_id: str
    url: str
    reason: str
    first_failure_at: float
    removed_at: float


def replica_in_flight(url: str, timeout_s: float = 2.0) -> float:
    """Requests a replica still holds: max(running + waiting, API-server load); NaN when it does not answer."""
    import json

    from oserve_rl.live.metrics import scrape

    try:
        m = scrape(url, timeout_s)
    except LiveClusterError:
        return math.nan
    held = m.in_flight if not math.isnan(m.in_flight) else 0.0  # gauges absent: rely on /load
    try:
        # Counts requests still in the HTTP layer (e.g. tokenising); needs --enable-server-load-tracking.
        status, body = http_get(url.rstrip("/") + "/load", timeout_s)
        if status == 200:
            held = max(held, float(json.loads(body).get("server_load", 0)))
    except (OSError, ValueError):
        pass
    return held


def wait_drained(url: str, timeout_s: float, *, alive: Callable[[], bool] = lambda: True,
                 poll_s: float = 0.2, settle_polls: int = 2) -> bool:
    """Wait until ``url`` holds no request on ``settle_polls`` consecutive polls (requests forwarded
    just before the router removal may still be on their way). A replica that does not answer
    counts as drained only once ``alive()`` is False (a busy one may just be slow). False on timeout."""
    deadline = time.monotonic() + timeout_s
    zero = 0
    while time.monotonic() < deadline:
        held = replica_in_flight(url)
        if math.isnan(held) and not alive():
            return True
        zero = zero + 1 if held == 0 else 0
        if zero >= settle_polls:
            return True
        time.sleep(poll_s)
    return False


class LiveCluster:
    """A backend + a router: executes switches and removes dead replicas from the router.

    ``serving()`` are the replicas in the router. The health monitor (a daemon
    thread, ``supervise=True``) checks each serving replica every
    ``health_interval_s``: a replica whose process is gone is removed at once;
    one whose ``/health`` fails ``health_failures`` times in a row is removed
    too. Removed replicas are stopped (their group reaped) and listed in ``events``.
    """

    def __init__(
        self,
        backend: Backend,
        router: WorkerRouter,
        *,
        drain_timeout_s: float = 120.0,
        stop_grace_s: float = 30.0,
        supervise: bool = True,
        health_interval_s: float = 0.5,
        health_failures: int = 2,
        health_timeout_s: float = 5.0,
        router_process: RouterProcess | None = None,
    ):
        self.backend = backend
        self.router = router
        self.drain_timeout_s = drain_timeout_s
        self.stop_grace_s = stop_grace_s
        self.health_interval_s = health_interval_s
        self.health_failures = health_failures
        self.health_timeout_s = health_timeout_s
        self.router_process = router_process
        self.events: list[HealthEvent] = []
        self.reports: list[SwitchReport] = []
        self._serving: dict[str, Replica] = {}
        self._lock = threading.RLock()
        self._switch_lock = threading.Lock()
        self._stop_monitor = threading.Event()
        self._monitor: threading.Thread | None = None
        if supervise:
            self._monitor = threading.Thread(target=self._monitor_loop, name="live-health", daemon=True)
            self._monitor.start()

    @classmethod
    def from_config(cls, config: LiveClusterConfig, run_dir: str | Path, *, supervise: bool = True) -> LiveCluster:
        """Process backend + a vllm-router launched from ``config`` (logs in ``run_dir``)."""
        backend = ProcessBackend(config, run_dir)
        router_proc = RouterProcess(config, run_dir)
        router = router_proc.start()
        return cls(
            backend, router, drain_timeout_s=config.drain_timeout_s, stop_grace_s=config.stop_grace_s,
            supervise=supervise, health_interval_s=config.health_interval_s, health_failures=config.health_failures,
            health_timeout_s=config.health_timeout_s, router_process=router_proc,
        )

    # ------------------------------------------------------------------ state
    def serving(self) -> list[Replica]:
        with self._lock:
            return list(self._serving.values())

    def diff(self, target: Sequence[ReplicaSpec]) -> SwitchDiff:
        return diff_deployment(self.serving(), target)

    # ------------------------------------------------------------------ switch
    def apply(self, target: Sequence[ReplicaSpec], order: Order | None = None) -> SwitchReport:
        """Switch to ``target``; returns the per-phase report (also appended to ``reports``)."""
        with self._switch_lock:
            diff = self.diff(target)
            if order is None:
                order = choose_order(diff, self.backend.fits)
            t_start = time.monotonic()
            phases = {p: 0.0 for p in PHASES}
            records: list[ReplicaPhases] = []
            if order == MAKE_BEFORE_BREAK:
                new = self._bring_up(diff.start, phases, records)
                self._take_down(diff.stop, phases, records)
            else:
                self._take_down(diff.stop, phases, records)
                new = self._bring_up(diff.start, phases, records)
            report = SwitchReport(
                order=order,
                kept=[r.replica_id for r in diff.keep],
                started=[r.replica_id for r in new],
                stopped=[r.replica_id for r in diff.stop],
                phases_s=phases,
                replicas=records,
                total_s=time.monotonic() - t_start,
            )
            self.reports.append(report)
            return report

    def _bring_up(self, specs: Sequence[ReplicaSpec], phases: dict[str, float],
                  records: list[ReplicaPhases]) -> list[Replica]:
        if not specs:
            return []
        t0 = time.monotonic()
        started: list[Replica] = []
        try:
            for spec in specs:
                started.append(self.backend.start(spec))
            t1 = time.monotonic()
            phases["start"] += t1 - t0
            ready_s: dict[str, float] = {}

            def ready(r: Replica) -> None:
                ts = time.monotonic()
                self.backend.wait_ready(r)
                ready_s[r.replica_id] = time.monotonic() - ts

            with ThreadPoolExecutor(max_workers=len(started)) as pool:
                for fut in [pool.submit(ready, r) for r in started]:
                    fut.result()
            t2 = time.monotonic()
            phases["ready"] += t2 - t1
        except BaseException:
            # Roll back: the old deployment keeps serving; nothing half-started stays behind.
            for r in started:
                try:
                    self.backend.stop(r, grace_s=5.0)
                except LiveClusterError:
                    pass
            raise
        for r in started:
            ta = time.monotonic()
            self.router.add_worker(r.url)
            with self._lock:
                self._serving[r.replica_id] = r
            records.append(ReplicaPhases(
                r.replica_id, "start", r.url,
                {"start": t1 - t0, "ready": ready_s[r.replica_id], "route": time.monotonic() - ta},
            ))
        phases["route"] += time.monotonic() - t2
        return started

    def _take_down(self, replicas: Sequence[Replica], phases: dict[str, float],
                   records: list[ReplicaPhases]) -> None:
        if not replicas:
            return
        t0 = time.monotonic()
        for r in replicas:
            with self._lock:
                self._serving.pop(r.replica_id, None)
            self.router.remove_worker(r.url)
        t1 = time.monotonic()
        phases["route"] += t1 - t0
        recs = {r.replica_id: ReplicaPhases(r.replica_id, "stop", r.url, {"route": (t1 - t0) / len(replicas)})
                for r in replicas}

        def drain(r: Replica) -> None:
            ts = time.monotonic()
            recs[r.replica_id].drained = wait_drained(
                r.url, self.drain_timeout_s, alive=lambda: self.backend.is_alive(r)
            )
            recs[r.replica_id].phases_s["drain"] = time.monotonic() - ts

        def stop(r: Replica) -> StopResult:
            ts = time.monotonic()
            res = self.backend.stop(r, grace_s=self.stop_grace_s)
            recs[r.replica_id].phases_s["stop"] = time.monotonic() - ts
            recs[r.replica_id].stop_signal = res.signal
            return res

        with ThreadPoolExecutor(max_workers=len(replicas)) as pool:
            list(pool.map(drain, replicas))
            t2 = time.monotonic()
            phases["drain"] += t2 - t1
            list(pool.map(stop, replicas))
        phases["stop"] += time.monotonic() - t2
        records.extend(recs.values())

    # ------------------------------------------------------------------ health monitor
    def _monitor_loop(self) -> None:
        # Process liveness is cheap and decisive, so it is polled in its own loop: an HTTP
        # check that hangs for health_timeout_s must not delay noticing a dead process.
        http = threading.Thread(target=self._http_health_loop, name="live-health-http", daemon=True)
        http.start()
        interval = min(self.health_interval_s, 0.2)
        while not self._stop_monitor.wait(interval):
            for r in self.serving():
                if not self.backend.is_alive(r):
                    self._remove_dead(r, "process gone", time.monotonic())
        http.join(timeout=self.health_timeout_s + 1)

    def _http_health_loop(self) -> None:
        failures: dict[str, tuple[int, float]] = {}

        def check(r: Replica) -> str | None:
            try:
                status, _ = http_get(r.url + "/health", self.health_timeout_s)
            except OSError as e:
                return f"/health unreachable: {e}"
            return None if status == 200 else f"/health HTTP {status}"

        with ThreadPoolExecutor(max_workers=8) as pool:
            while not self._stop_monitor.wait(self.health_interval_s):
                serving = self.serving()
                for r, reason in zip(serving, pool.map(check, serving)):
                    if reason is None:
                        failures.pop(r.replica_id, None)
                        continue
                    count, first = failures.get(r.replica_id, (0, time.monotonic()))
                    failures[r.replica_id] = (count + 1, first)
                    if count + 1 >= self.health_failures:
                        self._remove_dead(r, reason, first)
                        failures.pop(r.replica_id, None)

    def _remove_dead(self, r: Replica, reason: str, first_failure_at: float) -> None:
        with self._lock:
            if self._serving.pop(r.replica_id, None) is None:
                return
        try:
            self.router.remove_worker(r.url)
        except LiveClusterError:
            pass
        removed_at = time.monotonic()
        try:
            self.backend.stop(r, grace_s=5.0)  # reap what is left of its process group
        except LiveClusterError:
            pass
        self.events.append(HealthEvent(r.replica_id, r.url, reason, first_failure_at, removed_at))

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop the monitor, every replica (router first) and the router process if we launched it."""
        self._stop_monitor.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10)
        for r in self.serving():
            try:
                self.router.remove_worker(r.url)
            except LiveClusterError:
                pass
            with self._lock:
                self._serving.pop(r.replica_id, None)
        for r in self.backend.replicas():
            try:
                self.backend.stop(r, grace_s=10.0)
            except LiveClusterError:
                pass
        if self.router_process is not None:
            self.router_process.stop()

    def __enter__(self) -> LiveCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
