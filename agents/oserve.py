"""OServe (arXiv 2602.12151) as a policy, and the baselines built from its parts.

Every decision interval (60 s):

1. rates: the shared per-type forecast for the next interval (``oserve_oracle``: the true rates);
2. upper level: flow-guided deployment search (``oserve_rl.sched.flow_guided_search``)
   started from the current deployment, objective = the load scale alpha that
   the max-flow/LP dispatch can serve (``oserve_rl.sched.solve_dispatch``);
3. switch only if the predicted gain outweighs the switch: the relative gain in
   alpha must exceed ``hysteresis`` plus the estimated switch downtime
   (``estimate_switch_downtime_s``, interconnect-aware re-sharding) as a share
   of ``amortise_s`` (the time the new deployment is expected to run). The
   paper reports no explicit hysteresis; 5 % and 10 min are our documented choice;
4. lower level: dispatch weights x_kj from the LP for the (new or kept)
   deployment; the weighted router spreads each type over replicas in
   proportion to them.

Where the paper is silent: the load scale cannot rank deployments once all of
them serve the forecast with room to spare, and there the throughput-optimal
one (many small replicas) is the slow one. So among the searched deployment,
every homogeneous one and the running one, those with alpha >= min(headroom,
best alpha) (``headroom`` = 1.2: 20 % spare capacity, checked against the larger of the
forecast and the peak minute of the last ``peak_window_min`` = 10 minutes, so a lull
in a bursty trace does not trade capacity away) are ranked by a latency
proxy, the slowest type's mean predicted latency, standalone latency on the
replica it is routed to inflated by 1 / (1 - utilisation) (``latency_aware``;
set it False for the pure load-scale objective). A switch that only buys latency
is made only while the running deployment is at most ``latency_switch_max_util``
(50 %) busy: under load the backlog a switch builds costs more than it buys.

Throughput profiles n(config, type) come from the performance model under the
TPOT SLO (``oserve_rl.sched.ThroughputTable``, ``tpot_bound_s``): a config
that cannot keep a type's decode step within the SLO at any useful batch gets
less of that type. ``vllm_reload`` makes the same plans but every switch
cold-reloads weights from disk; ``brute_force`` replaces the search with an
exhaustive one (small clusters only).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from oserve_rl.cluster import Deployment, enumerate_deployments, enumerate_replica_configs, estimate_switch_downtime_s
from oserve_rl.errors import ConfigError
from oserve_rl.policy import ClusterState, Decision, Policy, PolicyContext, place_near
from oserve_rl.sched import (
    ThroughputTable,
    TypeProfile,
    brute_force_search,
    flow_guided_search,
    solve_dispatch,
)


@lru_cache(maxsize=64)
def _tables(model, cluster, configs, type_lengths, engine, bound):
    """Throughput table, standalone latencies [config, type] and homogeneous deployments (cached: the env
    resets OServe every episode on the same cluster, model and types)."""
    profiles = [TypeProfile(j, float(max(1.0, a)), float(max(1.0, b))) for j, (a, b) in enumerate(type_lengths)]
    table = ThroughputTable(model, configs, profiles, engine, tpot_bound_s=bound)
    lat = np.array([[c.perf().standalone_latency_s(int(p.input_tokens), int(p.output_tokens), engine)
                     for p in profiles] for c in table.configs])
    lat.setflags(write=False)
    return table, lat, enumerate_deployments(model, cluster, homogeneous=True, engine=engine)


class OServe(Policy):
    name = "oserve"
    needs_forecaster = True

    def __init__(self, hysteresis: float = 0.05, amortise_s: float = 600.0, patience: int = 20,
                 tpot_bound: str | float | None = "slo", min_switch_interval_s: float = 0.0, seed: int = 0,
                 latency_aware: bool = True, headroom: float = 1.2, peak_window_min: int = 10,
                 latency_switch_max_util: float = 0.5):
        if not 0 < latency_switch_max_util <= 1:
            raise ConfigError(f"{self.name}: latency_switch_max_util must be in (0, 1], got {latency_switch_max_util!r}")
        self.latency_switch_max_util = float(latency_switch_max_util)
        if int(peak_window_min) != peak_window_min or peak_window_min < 0:
            raise ConfigError(f"{self.name}: peak_window_min must be an integer >= 0, got {peak_window_min!r}")
        self.peak_window_min = int(peak_window_min)
        if not headroom >= 1.0:
            raise ConfigError(f"{self.name}: headroom must be >= 1 (a load-scale target), got {headroom!r}")
        self.latency_aware, self.headroom = bool(latency_aware), float(headroom)
        if not hysteresis >= 0:
            raise ConfigError(f"{self.name}: hysteresis must be >= 0, got {hysteresis!r}")
        if not amortise_s > 0:
            raise ConfigError(f"{self.name}: amortise_s must be > 0, got {amortise_s!r}")
        if int(patience) != patience or patience < 1:
            raise ConfigError(f"{self.name}: patience must be an integer >= 1, got {patience!r}")
        if not (tpot_bound is None or tpot_bound == "slo" or (isinstance(tpot_bound, (int, float)) and tpot_bound > 0)):
            raise ConfigError(f"{self.name}: tpot_bound must be 'slo', a number of seconds > 0, or null; got {tpot_bound!r}")
        self.hysteresis, self.amortise_s, self.patience = float(hysteresis), float(amortise_s), int(patience)
        self.tpot_bound, self.min_switch_interval_s, self.seed = tpot_bound, float(min_switch_interval_s), int(seed)

    # ------------------------------------------------------------------ set-up
    def reset(self, ctx: PolicyContext) -> None:
        super().reset(ctx)
        bound = ctx.slo_tpot_s if self.tpot_bound == "slo" else self.tpot_bound
        configs = enumerate_replica_configs(ctx.model, ctx.cluster, ctx.engine)
        if not configs:
            raise ConfigError(f"{self.name}: no replica config of {ctx.model} fits cluster {ctx.cluster.name}")
        self.table, self._lat, self.homogeneous = _tables(ctx.model, ctx.cluster, tuple(configs),
                                                          tuple(map(tuple, np.asarray(ctx.type_lengths, float))),
                                                          ctx.engine, bound)
        self._memo: dict[tuple, Any] = {}
        self._memo_lam: np.ndarray | None = None
        self._servable = (self.table.n > 0).any(axis=0)
        self.last_switch_s = -math.inf
        self._prior: np.ndarray | None = None

    def rates(self, state: ClusterState) -> np.ndarray:
        return np.asarray(state.forecast_rps, dtype=float)

    def search(self, lam: np.ndarray, start: Deployment | None):
        return flow_guided_search(self.ctx.model, self.ctx.cluster, lam, self.table, start=start,
                                  patience=self.patience, engine=self.ctx.engine, seed=self.seed)

    def weights(self, dep: Deployment, lam: np.ndarray) -> np.ndarray:
        """[J, K] dispatch rates for ``dep``'s replicas (the LP's x, transposed)."""
        res = solve_dispatch(self.table.for_deployment(dep), np.maximum(lam, 1e-9))
        w = np.array(res.x, dtype=float).T
        # The LP's optimum is a vertex, which splits types across *identical* replicas (any split of their
        # pooled rate is as good). Averaging over replicas of the same config is optimal too (the LP is
        # convex and symmetric in them) and keeps every replica open to every type it serves: less queueing.
        configs = dep.configs
        for cfg in set(configs):
            cols = [k for k, c in enumerate(configs) if c == cfg]
            if len(cols) > 1:
                w[:, cols] = w[:, cols].mean(axis=1, keepdims=True)
        # A type the LP sends nowhere (no demand forecast) still needs somewhere to go: throughput-proportional.
        empty = w.sum(axis=1) <= 0
        if empty.any():
            w[empty] = self.table.for_deployment(dep).T[empty]
        return w

    def _dispatch(self, dep: Deployment, lam: np.ndarray):
        """solve_dispatch memoised per replica multiset for the current rates (a decision asks many times)."""
        # Types no config can serve (prompts beyond the context: rejected whatever runs) would make every
        # deployment's load scale 0; they are left out, as the search does (SearchResult.unservable_types).
        lam = np.where(self._servable, np.maximum(np.asarray(lam, dtype=float), 1e-9), 0.0)
        if self._memo_lam is None or not np.array_equal(lam, self._memo_lam):
            self._memo, self._memo_lam = {}, lam
        key = tuple(sorted(dep.configs, key=repr))
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = (solve_dispatch(self.table.for_deployment(dep), lam), dep.configs)
        res, order = hit
        return res, order

    def alpha(self, dep: Deployment, lam: np.ndarray) -> float:
        return float(self._dispatch(dep, lam)[0].alpha)

    def latency_s(self, dep: Deployment, lam: np.ndarray) -> float:
        """Latency proxy: the slowest type's mean standalone latency, inflated by 1 / (1 - utilisation)."""
        lam = np.maximum(lam, 1e-9)
        res, order = self._dispatch(dep, lam)
        dep_configs = order
        if not res.alpha > 0:
            return math.inf
        util = np.minimum(np.asarray(res.utilization), 0.95)  # busy share under the routed demand
        x = np.asarray(res.x, dtype=float)  # [K, J]
        lat = self._lat[[self.table.index(c) for c in dep_configs]] / (1.0 - util)[:, None]
        served = x.sum(axis=0)
        per_type = np.where(served > 0, (x * lat).sum(axis=0) / np.maximum(served, 1e-12), 0.0)
        return float(per_type[lam > 1e-6].max()) if (lam > 1e-6).any() else 0.0

    def objective(self, dep: Deployment, lam: np.ndarray, lam_cap: np.ndarray | None = None) -> tuple[float, float]:
        """(capped load scale at ``lam_cap``, -latency proxy at ``lam``): larger is better, in that order."""
        a = self.alpha(dep, lam if lam_cap is None else lam_cap)
        if not self.latency_aware:
            return a, 0.0
        return min(a, self.headroom), -self.latency_s(dep, lam)

    def capacity_rates(self, state: ClusterState, lam: np.ndarray) -> np.ndarray:
        """Rates the headroom must cover: the forecast, or the peak minute of the last ``peak_window_min``.

        A next-minute forecast taken in a lull (Azure code idles for minutes between bursts) would trade
        capacity for latency right before the next burst; the recent peak keeps the capacity.
        """
        recent = state.type_counts_per_min[-self.peak_window_min:] if self.peak_window_min else np.zeros((0,))
        if not len(recent):
            return lam
        peak = np.maximum(lam, recent.max(axis=0) / 60.0)
        if len(recent) < self.peak_window_min and self._prior is not None:
            peak = np.maximum(peak, self._prior)  # the window is not full yet: the first forecast stands in
        return peak

    # ------------------------------------------------------------------ decide
    def plan(self, state: ClusterState) -> tuple[Deployment, dict[str, Any]]:
        """OServe's target for this state (before the switch-or-not rule)."""
        lam = self.rates(state)
        lam_cap = self.capacity_rates(state, lam)
        res = self.search(lam_cap, state.deployment)
        best = res.deployment
        if self.latency_aware:
            pool = [best, *self.homogeneous]
            if state.deployment is not None:
                pool.append(state.deployment)
            cap = min(self.headroom, float(res.objective))
            ok = [d for d in pool if self.alpha(d, lam_cap) >= cap * (1 - 1e-6)] or [best]
            best = min(ok, key=lambda d: self.latency_s(d, lam))
        target = place_near(best.configs, state.deployment, self.ctx.cluster, self.ctx.model)
        return target, {"alpha": self.alpha(target, lam_cap), "latency_proxy_s": self.latency_s(target, lam)}

    def decide(self, state: ClusterState) -> Decision:
        lam = self.rates(state)
        if state.deployment is None:
            self._prior = np.array(lam, dtype=float)
            if lam.sum() <= 0:
                lam = np.ones(state.num_types) * 1e-3  # nothing forecast yet: a balanced mix
            target, info = self.plan(state)
            return Decision(target, self.weights(target, lam), info=info)
        cur = state.deployment
        if lam.sum() <= 0:
            return Decision()
        target, info = self.plan(state)
        gain = self.gain(cur, target, lam, self.capacity_rates(state, lam))
        downtime = estimate_switch_downtime_s(cur, target, self.ctx.switch_costs) if target != cur else 0.0
        info.update(gain=gain, est_downtime_s=downtime)
        wait = state.now_s - self.last_switch_s < self.min_switch_interval_s
        lam_cap = self.capacity_rates(state, lam)
        # A switch that only buys latency (both deployments keep the headroom) empties replicas for its
        # downtime; under load the backlog it builds costs more than the latency it buys (Azure code at 60 %
        # load: 80 s -> 525 s p99 with latency switches). So those need a light load: alpha >= 1/max_util.
        latency_only = self.alpha(target, lam_cap) <= self.alpha(cur, lam_cap) * (1 + 1e-6)
        too_busy = latency_only and self.alpha(cur, lam_cap) < 1.0 / self.latency_switch_max_util
        info.update(latency_only=latency_only)
        if target != cur and not state.switch_in_progress and not wait and not too_busy and \
                gain > self.hysteresis + downtime / self.amortise_s:
            self.last_switch_s = state.now_s
            return Decision(target, self.weights(target, lam), info=info)
        return Decision(None, self.weights(cur, lam), info=info)

    def gain(self, cur: Deployment, target: Deployment, lam: np.ndarray, lam_cap: np.ndarray | None = None) -> float:
        """Relative predicted improvement of ``target`` over ``cur``: in load scale while below the headroom
        target, else in the latency proxy."""
        (a_cur, l_cur), (a_new, l_new) = self.objective(cur, lam, lam_cap), self.objective(target, lam, lam_cap)
        if a_new > a_cur * (1 + 1e-6):
            return a_new / max(a_cur, 1e-12) - 1.0
        if a_new < a_cur * (1 - 1e-6):
            return -1.0
        return (l_new - l_cur) / max(-l_new, 1e-12) if self.latency_aware else 0.0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "latency_aware": self.latency_aware, "headroom": self.headroom,
                "peak_window_min": self.peak_window_min, "latency_switch_max_util": self.latency_switch_max_util,
                "hysteresis": self.hysteresis, "amortise_s": self.amortise_s,
                "patience": self.patience, "tpot_bound": self.tpot_bound,
                "min_switch_interval_s": self.min_switch_interval_s, "seed": self.seed}


class OServeOracle(OServe):
    """OServe with the true rates of the next interval instead of the forecast (an upper bound on prediction)."""

    name = "oserve_oracle"
    uses_hindsight = True
    needs_forecaster = False

    def rates(self, state: ClusterState) -> np.ndarray:
        if state.true_next_rps is None:
            raise ConfigError("oserve_oracle needs the true future rates; run it through run_policy/evaluate.py")
        return np.asarray(state.true_next_rps, dtype=float)


class VLLMReload(OServe):
    """OServe's plans with cold-reload switching (every new replica loads its weights from disk)."""

    name = "vllm_reload"
    switch_mode = "reload"


class BruteForce(OServe):
    """OServe's loop with an exhaustive deployment search (feasible on 8-16 GPUs)."""

    name = "brute_force"

    def search(self, lam: np.ndarray, start: Deployment | None):
        return brute_force_search(self.ctx.model, self.ctx.cluster, lam, self.table, engine=self.ctx.engine)
