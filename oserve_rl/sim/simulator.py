"""What happens on a cluster: arrivals routed to replica engines, deployments switched mid-run.

The cluster loop is event-driven at the level of *external* events only:
arrivals, switch starts, replicas becoming ready, and migrated requests landing.
Each replica engine (``engine.py``) moves itself forward between them (in fast
mode, in closed-form jumps over decode steps), so the loop costs a handful of
Python operations per request, not per engine iteration.

Switching (``schedule_switch``): the plan (``oserve_rl.cluster.plan_switch``)
says which replicas are kept, which leave and which start. Leaving replicas
either *drain* (stop accepting, finish what they hold; as they receive nothing
new, their future is fixed and is computed at once) or *migrate* (their
requests are taken out at the switch: those holding at least
``migrate_min_kv_tokens`` of KV carry it over the links to a new replica after
the KV transfer time, the others are re-queued and recomputed). A new replica
accepts requests once the GPUs it needs are free and its weights are loaded
(``plan.ready_at_s``). Requests that find no accepting replica wait at the
router, in order. No request is ever dropped: at the end each one is
completed, rejected with a reason, or still in flight.
"""

from __future__ import annotations

import heapq
import math
import numbers
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from oserve_rl.cluster import Deployment, SwitchCosts, load_switch_costs, plan_switch
from oserve_rl.errors import ConfigError
from oserve_rl.perf import EngineConfig
from oserve_rl.sim import metrics
from oserve_rl.sim.engine import ReplicaEngine
from oserve_rl.sim.requests import RequestRecorder
from oserve_rl.sim.router import Router, make_router

_INF = math.inf


class _NotReady:
    """Stands in the router's view for a replica that is still loading."""

    accepting = False
    num_waiting = 0
    num_running = 0

    def outstanding_tokens_at(self, t_s: float) -> int:
        return 0

    def estimated_outstanding_tokens(self, t_s: float) -> float:
        return 0.0


_NOT_READY = _NotReady()


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_slo(name: str, value: object) -> None:
    if value is not None and not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"simulate: {name} must be a finite number of seconds > 0, or None for no SLO; got {value!r}")

# plan_switch is a pure function of (old, new, costs) and costs milliseconds on 32 GPUs; an agent
# trying deployments revisits the same pairs often (half of them within 8 episodes of random actions).
# Frozen dataclasses and a frozen pydantic model: hashable by value.
_plan_switch_cached = lru_cache(maxsize=4096)(plan_switch)


@dataclass
class SwitchRecord:
    start_s: float
    old_spec: str
    new_spec: str
    ready_s: float          # when the last new replica accepted
    downtime_s: float       # ready_s - start_s
    kept: int
    started: int
    left: int
    migrated_requests: int = 0
    requeued_requests: int = 0


@dataclass
class SimResult:
    recorder: RequestRecorder
    summary: dict[str, Any]
    switches: list[SwitchRecord] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (time, deployment spec) from that time on

    def write(self, out_dir: str | Path) -> Path:
        import json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.recorder.frame().to_parquet(out / "requests.parquet", index=False)
        (out / "summary.json").write_text(json.dumps(metrics._jsonable(self.summary), indent=2) + "\n")
        return out


class ClusterSimulator:
    """Simulate one deployment (and any scheduled switches) on a request trace.

    >>> from oserve_rl.catalog import get_cluster
    >>> from oserve_rl.cluster import parse_deployment
    >>> from oserve_rl.workload import load_trace
    >>> dep = parse_deployment("4xTP2", get_cluster("a100x8"), "llama-2-70b")
    >>> res = ClusterSimulator(dep, load_trace("azure-conv").head(200)).run()
    >>> res.summary["completed"] + res.summary["rejected"] + res.summary["in_flight"]
    200
    """

    def __init__(self, deployment: Deployment, trace: Any, *, router: str | Router = "least_work",
                 engine: EngineConfig | None = None, mode: str = "fast", switch_costs: SwitchCosts | None = None,
                 request_types: np.ndarray | None = None, slo_ttft_s: float | None = 2.0,
                 slo_tpot_s: float | None = 0.1, progress: bool | None = None):
        _check_slo("slo_ttft_s", slo_ttft_s)
        _check_slo("slo_tpot_s", slo_tpot_s)
        if not isinstance(deployment, Deployment):
            raise ConfigError(f"simulate: deployment must be a Deployment (see parse_deployment), got {deployment!r}")
        self.rec = trace if isinstance(trace, RequestRecorder) else RequestRecorder.from_trace(trace)
        if self.rec.n == 0:
            raise ConfigError("simulate: the trace has no requests")
        self.engine_cfg = engine or EngineConfig()
        if mode not in ("fast", "exact"):
            raise ConfigError(f"simulate: mode must be 'fast' or 'exact', got {mode!r}")
        self.mode = mode
        self.costs = switch_costs or load_switch_costs()
        self.router = make_router(router) if isinstance(router, str) else router
        n = self.rec.n
        self.types = np.zeros(n, dtype=np.int64) if request_types is None else np.asarray(request_types, np.int64)
        if self.types.shape != (n,):
            raise ConfigError(f"simulate: request_types must have one entry per request ({n}), got {self.types.shape}")
        # Plain lists for the per-arrival hot path (numpy scalar indexing costs several times more).
        self._types_list: list[int] = self.types.tolist()
        self._arrival_list: list[float] = self.rec.arrival_s.tolist()
        self.slo_ttft_s, self.slo_tpot_s = slo_ttft_s, slo_tpot_s
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.now_s = 0.0
        self._next_arrival = 0
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._held: list[tuple[int, int]] = []  # (rid, kv_tokens) waiting at the router, in order
        self.switches: list[SwitchRecord] = []
        self.timeline: list[tuple[float, str]] = []
        self._gpu_seconds = 0.0
        self._gpu_clock_s = 0.0
        self._draining: list[ReplicaEngine] = []
        self._replica_seq = 0
        self._views: list[Any] = []  # what routers see; rebuilt whenever self.replicas changes
        self._perf_by_replica: dict[int, Any] = {}  # every engine ever started, for standalone latencies
        self._ready_at: list[float] = []  # per current replica: when it accepts (pending ones are None in replicas)
        self._install(deployment, start_s=0.0)

    # ------------------------------------------------------------ replicas
    def _new_engine(self, placed) -> ReplicaEngine:
        perf = placed.config.perf()
        eng = ReplicaEngine(perf, self.engine_cfg, mode=self.mode, recorder=self.rec, replica_id=self._replica_seq)
        self._replica_seq += 1
        self._perf_by_replica[eng.replica_id] = perf
        return eng

    def _install(self, deployment: Deployment, start_s: float) -> None:
        self.deployment = deployment
        self.replicas: list[ReplicaEngine | None] = [self._new_engine(p) for p in deployment.replicas]
        self._ready_at = [start_s] * len(self.replicas)
        self._refresh_views()
        self.timeline.append((start_s, deployment.spec_string()))

    def _refresh_views(self) -> None:
        # What routers see: the engines, a not-ready stand-in where a replica is still loading.
        self._views = [r if r is not None else _NOT_READY for r in self.replicas]

    def _push(self, t: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, payload))

    # ------------------------------------------------------------ switching
    def schedule_switch(self, at_s: float, new: Deployment | str, router: Router | None = None) -> None:
        """Switch to ``new`` (a Deployment, or a spec string placed to keep unchanged replicas) at ``at_s``.

        ``router``, if given, replaces the router at the same instant (its
        weights are for the new deployment's replica order).
        """
        at_s = self._check_time("schedule_switch", "at_s", at_s)
        if not isinstance(new, (Deployment, str)):
            raise ConfigError(f"schedule_switch: new must be a Deployment or a spec string such as '2xTP4', got {new!r}")
        self._push(at_s, "switch", (new, router))

    def schedule_router(self, at_s: float, router: Router) -> None:
        """Replace the router at ``at_s`` (e.g. new dispatch weights for the same deployment)."""
        self._push(self._check_time("schedule_router", "at_s", at_s), "router", router)

    def _check_time(self, where: str, name: str, t_s: object) -> float:
        """``t_s`` as a float: a finite time >= 0 and not before the simulator's clock (it cannot act in the past)."""
        if not (_is_real(t_s) and math.isfinite(t_s)):
            raise ConfigError(f"{where}: {name} must be a finite number of seconds, got {t_s!r}")
        t = float(t_s)
        if t < 0 or t < self.now_s:
            raise ConfigError(
                f"{where}: {name} = {t:g} is in the past; it must be >= 0 and >= the simulator's current time "
                f"{self.now_s:g} s"
            )
        return t

    def set_router(self, router: Router) -> None:
        router.reset()
        self.router = router

    @property
    def arrived(self) -> int:
        """Requests that have arrived so far (ids ``0 .. arrived-1``)."""
        return self._next_arrival

    @property
    def num_replicas_started(self) -> int:
        """Engines started so far; their ``replica_id``s (what ``recorder.replica`` holds) are ``0 ..`` this ``- 1``."""
        return self._replica_seq

    @property
    def switch_time_left_s(self) -> float:
        """Seconds until every replica of the current deployment accepts (0 when none is loading)."""
        left = [t for t, eng in zip(self._ready_at, self.replicas) if eng is None]
        return max(0.0, max(left) - self.now_s) if left else 0.0

    def _switch(self, t: float, payload: tuple[Deployment | str, Router | None]) -> None:
        from oserve_rl.cluster import parse_deployment

        new, router = payload

        old = self.deployment
        if isinstance(new, str):
            new = parse_deployment(new, old.cluster, old.model, engine=self.engine_cfg, prefer=old)
        plan = _plan_switch_cached(old, new, self.costs)
        self._account_gpus(t)
        old_engines = self.replicas
        gone_at: dict[int, float] = {}
        migrated = requeued = 0
        moved: list[tuple[int, int, int]] = []  # (rid, kv_tokens, old index)
        for o in plan.leaving:
            eng = old_engines[o]
            if eng is None:  # never became ready: nothing to move
                gone_at[o] = t
                continue
            eng.advance_to(t)
            if plan.leave_mode[o] == "migrate":
                eng.accepting = False
                for rid, kv in eng.pop_running():
                    moved.append((rid, kv, o))
                gone_at[o] = t
            else:
                eng.drain_all()
                eng.advance_to(_INF)  # it receives nothing new: its future is fixed now
                gone_at[o] = max(t, eng.busy_until_s)
                self._draining.append(eng)
        new_engines: list[ReplicaEngine | None] = [None] * len(new.replicas)
        new_ready_at = [t] * len(new.replicas)
        last_ready = t
        for i in range(len(new.replicas)):
            if i in plan.kept:
                new_engines[i] = old_engines[plan.kept[i]]
                if new_engines[i] is not None:
                    continue
                # Kept while still loading (an earlier switch started it): it keeps its ready time.
                ready = max(t, self._ready_at[plan.kept[i]])
            else:
                ready = plan.ready_at_s(i, t, gone_at)
            new_ready_at[i] = ready
            last_ready = max(last_ready, ready)
            self._push(ready, "ready", (i, new))
        self.deployment = new
        self.replicas = new_engines
        self._ready_at = new_ready_at
        self._refresh_views()
        self.timeline.append((t, new.spec_string()))
        # KV of migrated requests crosses the links before they can resume; charged towards the first
        # replica that starts (or is kept), whose GPUs are where the new deployment has room.
        dst = new.replicas[plan.starting[0] if plan.starting else 0]
        for rid, kv, o in moved:
            if kv >= self.costs.migrate_min_kv_tokens:
                migrated += 1
                lands = t + plan.kv_transfer_s(kv, old.replicas[o], dst)
                self._push(lands, "land", (rid, kv))
            else:
                requeued += 1
                self._held.append((rid, 0))
        self.switches.append(SwitchRecord(t, old.spec_string(), new.spec_string(), last_ready, last_ready - t,
                                          len(plan.kept), len(plan.starting), len(plan.leaving), migrated, requeued))
        if router is not None:
            self.set_router(router)
        self._flush_held(t)

    def _ready(self, t: float, payload) -> None:
        i, dep = payload
        if dep is not self.deployment or self.replicas[i] is not None:
            return  # superseded by a later switch
        self.replicas[i] = self._new_engine(dep.replicas[i])
        self.replicas[i]._clock = t
        self._refresh_views()
        self._flush_held(t)

    def _flush_held(self, t: float) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        for rid, kv in held:
            self._dispatch(rid, t, kv)

    # ------------------------------------------------------------ the loop
    def _dispatch(self, rid: int, t: float, kv_tokens: int = 0) -> None:
        # Engines move lazily; without this a router reading queues or KV would see each
        # replica as of its last request, not as of now (outstanding work it reads at now_s itself).
        router = self.router
        router.now_s = t
        typ = self._types_list[rid]
        if router.needs_load:
            for eng in self.replicas:
                if eng is not None and eng.accepting:
                    eng.advance_to(t)
        i = router.choose(rid, typ, self.rec.input_list[rid], self._views)
        if i is None:
            self._held.append((rid, kv_tokens))
            return
        self.replicas[i].add_request(rid, t, kv_tokens)

    def _account_gpus(self, t: float) -> None:
        self._gpu_seconds += (t - self._gpu_clock_s) * self.deployment.num_gpus
        self._gpu_clock_s = t

    def _run_events_until(self, t: float) -> None:
        ev = self._events
        while ev and ev[0][0] <= t:
            et, _, kind, payload = heapq.heappop(ev)
            self.now_s = max(self.now_s, et)
            if kind == "switch":
                self._switch(et, payload)
            elif kind == "ready":
                self._ready(et, payload)
            elif kind == "land":
                self._dispatch(payload[0], et, payload[1])
            elif kind == "router":
                self.set_router(payload)

    def step_to(self, t_s: float) -> None:
        """Process every arrival and event up to ``t_s`` and advance all replicas to it."""
        rec, arr = self.rec, self._arrival_list
        n = rec.n
        i = self._next_arrival
        bar = None
        if self.progress and n - i > 5000:
            from tqdm import tqdm

            bar = tqdm(total=n - i, desc="simulating", unit="req", leave=False, file=sys.stderr)
        events, dispatch = self._events, self._dispatch
        while i < n and arr[i] <= t_s:
            a = arr[i]
            if events and events[0][0] <= a:
                self._run_events_until(a)
            self.now_s = a
            dispatch(i, a)
            i += 1
            if bar is not None and i % 2000 == 0:
                bar.update(2000)
        if bar is not None:
            bar.close()
        self._next_arrival = i
        self._run_events_until(t_s)
        for eng in self.replicas:
            if eng is not None:
                eng.advance_to(t_s)
        if math.isfinite(t_s):
            self._account_gpus(t_s)
            self.now_s = max(self.now_s, t_s)

    def run(self, until_s: float | None = None) -> SimResult:
        """Run to ``until_s`` (requests still going then stay in flight) or until every request ends."""
        if until_s is not None:
            until_s = self._check_time("run", "until_s", until_s)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if until_s is None:
            end = self.finish()
        else:
            self.step_to(float(until_s))
            end = float(until_s)
        self._account_gpus(max(end, self._gpu_clock_s))
        res = self.result(end_s=end)  # metrics are part of the measured cost, as in Vidur with metrics on
        wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
        sim_s = res.summary["sim_time_s"]
        res.summary.update({"wall_s": wall_s, "cpu_s": cpu_s,
                            "requests_per_cpu_s": self.rec.n / cpu_s if cpu_s > 0 else None,
                            "sim_s_per_wall_s": sim_s / wall_s if wall_s > 0 else None})
        return res

    def finish(self) -> float:
        """Run until every request has ended (all arrivals, then the work in flight); returns the time the
        last one ended. ``run()`` without ``until_s`` is this plus the result's metrics."""
        self.step_to(float(self.rec.arrival_s[-1]))
        while self._events:  # switches and ready events after the last arrival
            self._run_events_until(self._events[0][0])
        for eng in self.replicas:
            if eng is not None:
                eng.advance_to(_INF)
        return float(np.nanmax(np.r_[self.rec.finish_s[np.isfinite(self.rec.finish_s)], self.now_s]))

    def result(self, wall_s: float = 0.0, cpu_s: float = 0.0, end_s: float | None = None) -> SimResult:
        rec = self.rec
        end_s = self.now_s if end_s is None else end_s
        gpu_hours = self._gpu_seconds / 3600.0
        price = _mean_price(self.deployment)
        standalone = self._standalone()
        s = metrics.summary(rec, standalone_s=standalone, slo_ttft_s=self.slo_ttft_s, slo_tpot_s=self.slo_tpot_s,
                            gpu_hours=gpu_hours, cost_per_gpu_hour=price)
        s.update({
            "sim_time_s": end_s - float(rec.arrival_s[0]), "wall_s": wall_s, "cpu_s": cpu_s,
            "requests_per_cpu_s": rec.n / cpu_s if cpu_s > 0 else None,
            "sim_s_per_wall_s": (end_s - float(rec.arrival_s[0])) / wall_s if wall_s > 0 else None,
            "mode": self.mode, "deployment": self.deployment.spec_string(),
            "switches": len(self.switches), "switch_downtime_s": sum(w.downtime_s for w in self.switches),
        })
        return SimResult(rec, s, list(self.switches), list(self.timeline))

    def _standalone(self) -> np.ndarray:
        """Each request's latency alone on an idle replica of the config that served it."""
        out = np.full(self.rec.n, np.nan)
        by_replica = self._perf_by_replica
        cache: dict[tuple[int, int, int], float] = {}
        rep, inp, outp = self.rec.replica, self.rec.input_list, self.rec.output_list
        done = np.flatnonzero(self.rec.status == 1)
        fallback = next(iter(by_replica.values()), None)
        for i in done:
            perf = by_replica.get(int(rep[i]), fallback)
            key = (id(perf), inp[i], outp[i])
            v = cache.get(key)
            if v is None:
                v = cache[key] = perf.standalone_latency_s(inp[i], outp[i], self.engine_cfg)
            out[i] = v
        return out

    def check_invariants(self) -> None:
        self.rec.check_invariants()
        for eng in [*(r for r in self.replicas if r is not None), *self._draining]:
            eng.check_invariants()


def _mean_price(dep: Deployment) -> float:
    from oserve_rl.catalog import get_gpu

    gpus = [(get_gpu(p.config.gpu).price_per_gpu_hour, p.config.num_gpus) for p in dep.replicas]
    total = sum(n for _, n in gpus)
    return sum(p * n for p, n in gpus) / total if total else 0.0
