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
   deployment, re-chosen every interval (re-routing is free); the weighted
   least-work router keeps each type on the replicas with a positive weight.

Where the paper is silent: the load scale cannot rank deployments once all of
them serve the forecast with room to spare, and there the throughput-optimal
one (many small replicas) is the slow one. So among the searched deployment,
every homogeneous one and the running one, those with alpha >= min(headroom,
best alpha) (``headroom`` = 1.2: 20 % spare capacity, checked against the larger of the
forecast and the peak minute of the last ``peak_window_min`` = 10 minutes, so a lull
in a bursty trace does not trade capacity away) are ranked by a latency
proxy (``latency_aware``; False: the pure load-scale objective): the predicted
p99 E2E of the deployment under its best dispatch (``oserve_rl.sched.latency``:
per-replica TPOT and TTFT from the prompt and decode load routed to it, under
chunked prefill, and log-normal output lengths per type; plans whose proxy p99s are
within ``TAIL_TIE`` serve the tail-making types alike and are ranked by the proxy's mean E2E
instead: llama-2-70b/azure-code 10.48 s -> 9.72 s p99). The dispatches ranked
(``dispatch="partition"``) are the LP's balanced one and every partition of the
types (longest output tails first) and of the replicas into two sides, routed
by the LP within each side: the max-flow optimum the paper uses is an LP vertex,
which tends to give each type replicas of its own, and which vertex is left open
by the paper; here the proxy picks it. Long-output types away from the replicas
that prefill 2,000-token prompts decode at the pure-decode pace; that is where
OServe's gain over the static deployment comes from on Azure code (docs/oserve.md).
The proxy is evaluated at the load the best deployment carries with exactly
``headroom`` to spare (``plan_load="capacity"``; "peak": at the peak-minute
rates), so the plan depends on the mix and not on how quiet the last minutes were;
the deployment is chosen at that load, but its dispatch, which is re-chosen every interval for free,
at the current capacity rates (``dispatch_load="current"``; "plan": at the planning load too);
a partitioned type may ``spill`` (weight 0.05 x its own side's) to the other side,
which the least-work router uses only under a burst. A switch that only buys
latency is made only while the running deployment is at most
``latency_switch_max_util`` (50 %) busy: under load the backlog a switch builds
costs more than it buys.

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

from oserve_rl.checks import check_number
from oserve_rl.cluster import (
    Deployment,
    enumerate_deployments,
    enumerate_replica_configs,
    estimate_switch_downtime_s,
)
from oserve_rl.errors import ConfigError
from oserve_rl.policy import ClusterState, Decision, Policy, PolicyContext, place_near
from oserve_rl.sched import (
    LatencyModel,
    LoadScaleBound,
    OutputSpread,
    ThroughputTable,
    TypeProfile,
    brute_force_search,
    disjoint_dispatch,
    dispatch_rates,
    flow_guided_search,
    load_scale,
    partition_candidates,
    tail_order,
)

DISPATCHES = ("partition", "balanced")
PLAN_LOADS = ("capacity", "peak")
DISPATCH_LOADS = ("current", "plan")


@lru_cache(maxsize=64)
def _tables(model, cluster, configs, type_lengths, engine, bound):
    """Throughput table, standalone latencies [config, type] and homogeneous deployments (cached: the env
    resets OServe every episode on the same cluster, model and types; envs/deploy.py reads the same triple)."""
    profiles = [TypeProfile(j, float(max(1.0, a)), float(max(1.0, b))) for j, (a, b) in enumerate(type_lengths)]
    table = ThroughputTable(model, configs, profiles, engine, tpot_bound_s=bound)
    lat = np.array([[c.perf().standalone_latency_s(int(p.input_tokens), int(p.output_tokens), engine)
                     for p in profiles] for c in table.configs])
    lat.setflags(write=False)
    return table, lat, enumerate_deployments(model, cluster, homogeneous=True, engine=engine)


def shape_of(dep: Deployment) -> tuple:
    """The replica multiset of ``dep``: ((config, count), ...) in a fixed order (dispatches depend on nothing else)."""
    groups: dict[Any, int] = {}
    for c in dep.configs:
        groups[c] = groups.get(c, 0) + 1
    return tuple(sorted(groups.items(), key=lambda kv: repr(kv[0])))


TAIL_TIE = 1e-3  # relative: proxy p99s this close are the same service for the types that make the tail


def _fastest(routings: list[Routing]) -> int:
    """Index of the routing with the lowest p99 proxy; among those within ``TAIL_TIE`` of it, the lowest mean
    E2E, then the first. Plans that put the tail-making types on the same replicas have the same p99 proxy
    whatever they do with the other types (llama-2-70b/azure-code: 8xTP4 and 2xTP4+12xTP2 with the
    long-output types on 2xTP4); the mean then prefers serving the rest faster instead of the order the
    candidates came in."""
    p_min = min(r.p99_s for r in routings)
    return min((i for i, r in enumerate(routings) if r.p99_s <= p_min * (1 + TAIL_TIE)),
               key=lambda i: (routings[i].mean_s, i))


class Routing:
    """A dispatch for one deployment: rows = (config, side) groups of identical replicas."""

    __slots__ = ("alpha", "p99_s", "mean_s", "configs", "counts", "x", "side0", "split")

    def __init__(self, alpha, p99_s, configs, counts, x, side0=None, split=None, mean_s=math.inf):
        self.alpha, self.p99_s, self.mean_s, self.configs, self.counts, self.x = alpha, p99_s, mean_s, configs, counts, x
        self.side0, self.split = side0, split  # None: balanced (every replica open to every type it runs)

    def label(self) -> str:
        if self.side0 is None:
            return "balanced"
        types = "".join(str(j) for j in np.flatnonzero(self.side0))
        reps = "+".join(f"{n}x{c.label(False)}" for c, n in zip(self.configs[::2], self.split) if n)
        return f"types {types} -> {reps}"


class OServe(Policy):
    name = "oserve"
    needs_forecaster = True

    def __init__(self, hysteresis: float = 0.05, amortise_s: float = 600.0, patience: int = 20,
                 tpot_bound: str | float | None = "slo", min_switch_interval_s: float = 0.0, seed: int = 0,
                 latency_aware: bool = True, headroom: float = 1.2, peak_window_min: int = 10,
                 latency_switch_max_util: float = 0.5, dispatch: str = "partition", spill: float = 0.05,
                 plan_load: str = "capacity", dispatch_load: str = "current"):

        where = self.name
        if dispatch_load not in DISPATCH_LOADS:
            raise ConfigError(f"{self.name}: dispatch_load must be one of {', '.join(DISPATCH_LOADS)}, "
                              f"got {dispatch_load!r}")
        self.dispatch_load = dispatch_load
        if plan_load not in PLAN_LOADS:
            raise ConfigError(f"{self.name}: plan_load must be one of {', '.join(PLAN_LOADS)}, got {plan_load!r}")
        self.plan_load = plan_load
        check_number(where, "spill", spill, low=0, high=1)
        self.spill = float(spill)
        if dispatch not in DISPATCHES:
            raise ConfigError(f"{self.name}: dispatch must be one of {', '.join(DISPATCHES)}, got {dispatch!r}")
        self.dispatch = dispatch
        check_number(where, "latency_switch_max_util", latency_switch_max_util, low=0, low_open=True, high=1)
        self.latency_switch_max_util = float(latency_switch_max_util)
        check_number(where, "peak_window_min", peak_window_min, low=0, integer=True)
        self.peak_window_min = int(peak_window_min)
        check_number(where, "headroom", headroom, low=1)  # a load-scale target
        if not isinstance(latency_aware, (bool, np.bool_)):
            raise ConfigError(f"{self.name}: latency_aware must be True or False, got {latency_aware!r}")
        self.latency_aware, self.headroom = bool(latency_aware), float(headroom)
        check_number(where, "hysteresis", hysteresis, low=0)
        check_number(where, "amortise_s", amortise_s, low=0, low_open=True)
        check_number(where, "patience", patience, low=1, integer=True)
        if not (tpot_bound is None or tpot_bound == "slo"):  # else seconds
            check_number(where, "tpot_bound", tpot_bound, low=0, low_open=True)
        check_number(where, "min_switch_interval_s", min_switch_interval_s, low=0)
        check_number(where, "seed", seed, low=0, integer=True)
        self.hysteresis, self.amortise_s, self.patience = float(hysteresis), float(amortise_s), int(patience)
        self.tpot_bound, self.min_switch_interval_s, self.seed = tpot_bound, float(min_switch_interval_s), int(seed)

    # ------------------------------------------------------------------ set-up
    def reset(self, ctx: PolicyContext) -> None:
        super().reset(ctx)
        bound = ctx.slo_tpot_s if self.tpot_bound == "slo" else self.tpot_bound
        configs = enumerate_replica_configs(ctx.model, ctx.cluster, ctx.engine)
        if not configs:
            raise ConfigError(f"{self.name}: no replica config of {ctx.model} fits cluster {ctx.cluster.name}")
        self.table, self._standalone_s, self.homogeneous = _tables(
            ctx.model, ctx.cluster, tuple(configs), tuple(map(tuple, np.asarray(ctx.type_lengths, float))),
            ctx.engine, bound)
        # Output tails per type from what the typing window gave (the centres' log-means and the means).
        spread = OutputSpread.from_means(np.maximum(np.asarray(ctx.type_lengths, float)[:, 1], 1.0),
                                         np.maximum(ctx.typer.centers_tokens[:, 1], 1.0))
        self.latency_model = LatencyModel(ctx.engine, np.asarray(ctx.type_lengths, float), spread)
        self._order = tail_order(spread)
        self._memo: dict[tuple, Any] = {}
        self._memo_lam: np.ndarray | None = None
        self._routes: dict[tuple, Routing | None] = {}
        self._servable = (self.table.n > 0).any(axis=0)
        self.last_switch_s = -math.inf
        self._prior: np.ndarray | None = None

    def rates(self, state: ClusterState) -> np.ndarray:
        return np.asarray(state.forecast_rps, dtype=float)

    def search(self, lam: np.ndarray, start: Deployment | None):
        return flow_guided_search(self.ctx.model, self.ctx.cluster, lam, self.table, start=start,
                                  patience=self.patience, engine=self.ctx.engine, seed=self.seed)

    def _servable_lam(self, lam: np.ndarray) -> np.ndarray:
        # Types no config can serve (prompts beyond the context: rejected whatever runs) would make every
        # deployment's load scale 0; they are left out, as the search does (SearchResult.unservable_types).
        return np.where(self._servable, np.maximum(np.asarray(lam, dtype=float), 1e-9), 0.0)

    def routing(self, dep: Deployment, lam: np.ndarray, need: float = 0.0) -> Routing | None:
        """The dispatch of ``dep`` with the lowest p99 proxy at rates ``lam`` (ties: ``_fastest``) among
        ``routings`` (None if none keeps a load scale of ``need``). Memoised per replica multiset for the
        current rates and ``need``."""
        lam = self._servable_lam(lam)
        # A decision asks at two rate vectors (the planning load and the current one), alternately.
        key = (tuple(np.round(lam, 9)), round(float(need), 9), shape_of(dep))
        if key not in self._routes:
            if len(self._routes) > 4096:
                self._routes.clear()
            found = self.routings(dep, lam, need)
            self._routes[key] = found[_fastest(found)] if found else None
        return self._routes[key]

    def routings(self, dep: Deployment, lam: np.ndarray, need: float = 0.0) -> list[Routing]:
        """Every dispatch of ``dep`` that keeps a load scale of ``need`` at rates ``lam``, with its proxy.

        Candidates: the balanced LP dispatch and, with ``dispatch="partition"`` (and ``latency_aware``),
        every partition of the types (longest tail outputs first) and of each config group's replicas into
        two sides, the LP routing within each side (``oserve_rl.sched.latency``). The paper's max-flow
        optimum is a vertex, which already tends to give types replicas of their own; which vertex is left
        open by the paper and decided here by the proxy.
        """
        lam = self._servable_lam(lam)
        shape = shape_of(dep)
        configs = [c for c, _ in shape]
        counts = np.array([n for _, n in shape], dtype=float)
        n = np.array([self.table.row(c) for c in configs])
        lat = self.latency_model
        found: list[Routing] = []

        def consider(rows_cfg, rows_cnt, rows_n, side0=None, split=None):
            alpha, x = disjoint_dispatch(rows_n, lam, rows_cnt) or (None, None)  # the LPs' answer, closed form
            if alpha is not None and need > 0 and not alpha >= need * (1 - 1e-6):
                return
            if x is None:
                alpha, x = dispatch_rates(rows_n, lam, capacity=rows_cnt)
            if need > 0 and not alpha >= need * (1 - 1e-6):
                return
            per_rep = np.divide(np.asarray(x, float), rows_cnt[:, None], out=np.zeros_like(rows_n),
                                where=rows_cnt[:, None] > 0)
            p99, mean = lat.p99_and_mean_rows_s(rows_cfg, per_rep.tolist(), rows_cnt.tolist())
            found.append(Routing(float(alpha), p99, list(rows_cfg), rows_cnt, per_rep, side0, split, mean))

        consider(configs, counts, n)
        if self.dispatch == "partition" and self.latency_aware and len(dep) > 1:
            demanded = lam > 1e-6
            rows_cfg = [c for c in configs for _ in (0, 1)]
            last_side0, rows_n = None, n
            n_l, lam_l, counts_l = n.tolist(), lam.tolist(), counts.tolist()
            # The sides are independent LPs sharing alpha, so alpha <= each side's bound. Below the floor, the LP
            # would reject the partition anyway: skipping it changes nothing (the margin covers HiGHS's
            # tolerance), and at OServe's planning load half the partitions are such (one side too small).
            floor = need * (1 - 1e-6) * (1 - 1e-6)
            for side0, split in partition_candidates(counts.astype(int).tolist(), self._order, demanded):
                if side0 is not last_side0:  # a new type split; the replica splits after it share its rows
                    rows_n = np.stack([n * side0[None, :], n * ~side0[None, :]], axis=1).reshape(-1, n.shape[1])
                    last_side0 = side0
                    if need > 0:  # the bounds only rule partitions out against a floor
                        on0 = side0.tolist()
                        bound0 = LoadScaleBound(n_l, [v if s else 0.0 for v, s in zip(lam_l, on0)])
                        bound1 = LoadScaleBound(n_l, [0.0 if s else v for v, s in zip(lam_l, on0)])
                if need > 0 and (bound0(split) < floor or bound1([c - k for c, k in zip(counts_l, split)]) < floor):
                    continue
                sp = np.array(split, dtype=float)
                rows_cnt = np.column_stack([sp, counts - sp]).reshape(-1)
                consider(rows_cfg, rows_cnt, rows_n, side0, split)
        return found

    def weights(self, dep: Deployment, lam: np.ndarray, lam_cap: np.ndarray | None = None,
                need: float | None = None, routing: Routing | None = None) -> np.ndarray:
        """[J, K] router rates for ``dep``'s replicas: the dispatch ``routing`` picks at ``lam_cap`` (default
        ``lam``) keeping a load scale of ``need`` (or, if none does, with no floor); each replica of a row
        gets the row's rates. ``need=None`` (callers outside ``decide``, e.g. the RL envs): the headroom, or
        the balanced dispatch's load scale if that is lower, so a partition never costs the headroom.
        ``routing``: one of ``routings(dep, ...)`` to use instead of the pick (scripts/hetero_bound.py)."""
        rates = lam if lam_cap is None else lam_cap
        if need is None:
            need = min(self.headroom, self.alpha(dep, rates))
        r = routing or self.routing(dep, rates, need) or self.routing(dep, rates, 0.0)
        J, K = self.table.num_types, len(dep)
        w = np.zeros((J, K))
        if r is None:  # nothing can be served (no demand the deployment runs): throughput-proportional
            return self.table.for_deployment(dep).T.copy()
        # Rows are (config, side) groups; the first split[g] replicas of a config (deployment order) take side 0.
        taken: dict[Any, int] = {}
        side = np.zeros(K, dtype=int)
        for k, c in enumerate(dep.configs):
            i = taken.get(c, 0)
            taken[c] = i + 1
            if r.side0 is None:
                row = r.configs.index(c)
            else:
                g = r.configs.index(c) // 2
                side[k] = 0 if i < r.split[g] else 1
                row = 2 * g + side[k]
            w[:, k] = r.x[row]
        # A type the dispatch sends nowhere (no demand at these rates) still needs somewhere to go: the replicas
        # of its side (all of them when balanced), throughput-proportional.
        n = self.table.for_deployment(dep).T
        for j in np.flatnonzero(w.sum(axis=1) <= 0):
            mine = n[j] * (side == (0 if r.side0 is None or r.side0[j] else 1))
            w[j] = mine if mine.sum() > 0 else n[j]
        if r.side0 is not None and self.spill > 0:
            # Soft partition: the other side's replicas take a type at ``spill`` times its own side's weight.
            # The weighted least-work router then sends it there only when its own side holds 1/spill times
            # the backlog: a burst the peak-minute rates did not foresee (Azure code: 0 to 630 requests a
            # minute, 2,000-token prompts) spills over instead of queueing on a few replicas for minutes
            # (measured: a 1-replica prompt side, 143 s p99 -> 14 s with 0.05), while in steady state the sides
            # stay apart (the good partition: 7.8 s -> 8.6 s).
            for j in range(J):
                own = w[j] > 0
                if own.any():
                    w[j] = np.where(own, w[j], np.where(n[j] > 0, self.spill * w[j][own].mean(), 0.0))
        return w

    def alpha(self, dep: Deployment, lam: np.ndarray) -> float:
        """``dep``'s load scale at rates ``lam``, memoised per replica multiset for the current rates (a decision
        asks many times)."""
        lam = self._servable_lam(lam)
        if self._memo_lam is None or not np.array_equal(lam, self._memo_lam):
            self._memo, self._memo_lam = {}, lam
        key = shape_of(dep)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = float(load_scale(self.table.for_deployment(dep), lam))
        return hit

    def latency_s(self, dep: Deployment, lam: np.ndarray, need: float = 0.0) -> float:
        """Latency proxy: the predicted p99 E2E of ``dep`` at rates ``lam`` under its best dispatch
        (``routing``; inf if no dispatch keeps a load scale of ``need``)."""
        r = self.routing(dep, lam, need)
        return math.inf if r is None else float(r.p99_s)

    def objective(self, dep: Deployment, lam_cap: np.ndarray, plan: tuple[np.ndarray, float]) -> tuple[float, float]:
        """(load scale at ``lam_cap`` capped at the headroom, -latency proxy at the planning rates ``plan`` =
        (rates, load-scale floor) of ``planning_rates``): larger is better, in that order."""
        a = self.alpha(dep, lam_cap)
        if not self.latency_aware:
            return a, 0.0
        return min(a, self.headroom), -self.latency_s(dep, *plan)

    def planning_rates(self, lam_cap: np.ndarray, best_alpha: float) -> tuple[np.ndarray, float]:
        """(rates the latency proxy is evaluated at, the load-scale floor a dispatch must keep there).

        ``plan_load="peak"``: the capacity rates, floor ``min(headroom, best_alpha)``. ``"capacity"`` (default):
        the capacity rates' *mix* scaled up to the load at which the best deployment has just ``headroom`` to
        spare (never below the capacity rates), floor 1. A plan fitted to one minute's rates breaks on the
        next burst: Azure code moves between 0 and 630 requests a minute, and before the peak window has seen
        a burst only the typing window's mean stands in (llama-2-70b/azure-code: a 4xTP8 partition chosen at
        the mean left one replica for the 2,000-token prompts, p99 37-50 s). Planning at the cluster's
        capacity makes the choice depend on the mix only, not on how busy the last minutes happened to be
        (light load is not exploited for latency: the latency-only switches that did so cost more than they
        bought, docs/oserve.md).
        """
        need = min(self.headroom, float(best_alpha))
        if self.plan_load == "peak" or not math.isfinite(best_alpha) or best_alpha <= self.headroom:
            return lam_cap, need
        return lam_cap * (float(best_alpha) / self.headroom), 1.0

    def dispatch_plan(self, dep: Deployment) -> tuple[np.ndarray, float]:
        """(rates, load-scale floor) ``dep``'s dispatch is chosen at, in the state ``plan`` last saw.

        ``dispatch_load="current"`` (default): the capacity rates (the forecast, or the peak minute of the
        last ``peak_window_min``), keeping ``min(headroom, dep's load scale)`` there. ``"plan"``: the
        planning load the deployment was chosen at (``planning_rates``). The deployment is sticky (a switch
        costs downtime), so it is chosen for the load the cluster can take; the dispatch is re-chosen every
        interval for free, so it can fit the load there is. Planning it at the capacity load (4.9x the
        forecast on llama-2-70b/azure-code) gave the long-output types too few replicas for the load they
        actually bring: 8.82 -> 7.55 s p99 on opt-66b/azure-code, 9.38 -> 8.97 s on llama-2-70b/azure-code
        (EWMA forecast), 7.13 -> 7.02 s and 9.56 -> 9.41 s on azure_code.yaml's validation windows,
        Azure conv unchanged.
        """
        if self.dispatch_load == "plan":
            return self._plan
        return self._lam_cap, min(self.headroom, self.alpha(dep, self._lam_cap))

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
        """OServe's target for this state (before the switch-or-not rule).

        With ``latency_aware``: among the searched deployment, every homogeneous one and the running one,
        those whose best dispatch keeps a load scale of ``need = min(headroom, best load scale)`` at the
        capacity rates are ranked by the p99 proxy of that dispatch at the same rates (the busiest recent
        minute is where the p99 is made; a forecast from a lull would trade away what the next burst needs).
        """
        lam = self.rates(state)
        lam_cap = self.capacity_rates(state, lam)
        res = self.search(lam_cap, state.deployment)
        best = res.deployment
        need = min(self.headroom, float(res.objective))
        plan = self.planning_rates(lam_cap, float(res.objective))
        if self.latency_aware:
            pool = list(dict.fromkeys([best, *self.homogeneous] +
                                      ([state.deployment] if state.deployment is not None else [])))
            ok = [(r, d) for d in pool if self.alpha(d, lam_cap) >= need * (1 - 1e-6)
                  for r in [self.routing(d, *plan)] if r is not None and math.isfinite(r.p99_s)]
            if ok:
                best = ok[_fastest([r for r, _ in ok])][1]
        target = place_near(best.configs, state.deployment, self.ctx.cluster, self.ctx.model)
        self._plan, self._lam_cap = plan, lam_cap
        dp = self.dispatch_plan(target)
        r = self.routing(target, *dp) or self.routing(target, dp[0], 0.0)
        return target, {"alpha": self.alpha(target, lam_cap), "need": need,
                        "plan_scale": float(plan[0].sum() / max(lam_cap.sum(), 1e-12)),
                        "latency_proxy_s": r.p99_s if r is not None else math.inf,
                        "dispatch": r.label() if r is not None else "balanced"}

    def decide(self, state: ClusterState) -> Decision:
        lam = self.rates(state)
        if state.deployment is None:
            self._prior = np.array(lam, dtype=float)
            if lam.sum() <= 0:
                lam = np.ones(state.num_types) * 1e-3  # nothing forecast yet: a balanced mix
            target, info = self.plan(state)
            return Decision(target, self.weights(target, lam, *self.dispatch_plan(target)), info=info)
        cur = state.deployment
        if lam.sum() <= 0:
            return Decision()
        target, info = self.plan(state)
        lam_cap, plan = self._lam_cap, self._plan  # what plan() planned with
        gain = self.gain(cur, target, lam_cap, plan)
        downtime = estimate_switch_downtime_s(cur, target, self.ctx.switch_costs) if target != cur else 0.0
        info.update(gain=gain, est_downtime_s=downtime)
        wait = state.now_s - self.last_switch_s < self.min_switch_interval_s
        # A switch that only buys latency (both deployments keep the headroom) empties replicas for its
        # downtime; under load the backlog it builds costs more than the latency it buys (Azure code at 60 %
        # load: 80 s -> 525 s p99 with latency switches). So those need a light load: alpha >= 1/max_util.
        latency_only = self.alpha(target, lam_cap) <= self.alpha(cur, lam_cap) * (1 + 1e-6)
        too_busy = latency_only and self.alpha(cur, lam_cap) < 1.0 / self.latency_switch_max_util
        info.update(latency_only=latency_only)
        if target != cur and not state.switch_in_progress and not wait and not too_busy and \
                gain > self.hysteresis + downtime / self.amortise_s:
            self.last_switch_s = state.now_s
            return Decision(target, self.weights(target, lam, *self.dispatch_plan(target)), info=info)
        # Re-routing is free: the running deployment gets the dispatch that suits the current rates.
        dp = self.dispatch_plan(cur)
        r = self.routing(cur, *dp) or self.routing(cur, dp[0], 0.0)
        info.update(dispatch=r.label() if r is not None else "balanced",
                    latency_proxy_s=r.p99_s if r is not None else math.inf)
        return Decision(None, self.weights(cur, lam, *dp), info=info)

    def gain(self, cur: Deployment, target: Deployment, lam_cap: np.ndarray, plan: tuple[np.ndarray, float]) -> float:
        """Relative predicted improvement of ``target`` over ``cur``: in load scale while below the headroom
        target, else in the latency proxy (at the planning rates)."""
        (a_cur, l_cur), (a_new, l_new) = self.objective(cur, lam_cap, plan), self.objective(target, lam_cap, plan)
        if a_new > a_cur * (1 + 1e-6):
            return a_new / max(a_cur, 1e-12) - 1.0
        if a_new < a_cur * (1 - 1e-6):
            return -1.0
        if not self.latency_aware or l_new == l_cur:
            return 0.0
        if math.isinf(l_cur):
            return math.inf if math.isfinite(l_new) else 0.0
        return (l_new - l_cur) / max(-l_new, 1e-12)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "latency_aware": self.latency_aware, "headroom": self.headroom,
                "peak_window_min": self.peak_window_min, "latency_switch_max_util": self.latency_switch_max_util,
                "dispatch": self.dispatch, "spill": self.spill, "plan_load": self.plan_load,
                "dispatch_load": self.dispatch_load, "hysteresis": self.hysteresis, "amortise_s": self.amortise_s,
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
