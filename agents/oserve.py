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

Throughput profiles n(config, type) come from the performance model under the
TPOT SLO (``oserve_rl.sched.ThroughputTable``, ``tpot_bound_s``): a config
that cannot keep a type's decode step within the SLO at any useful batch gets
less of that type. ``vllm_reload`` makes the same plans but every switch
cold-reloads weights from disk; ``brute_force`` replaces the search with an
exhaustive one (small clusters only).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from oserve_rl.cluster import Deployment, enumerate_replica_configs, estimate_switch_downtime_s
from oserve_rl.errors import ConfigError
from oserve_rl.policy import ClusterState, Decision, Policy, PolicyContext, place_near
from oserve_rl.sched import ThroughputTable, TypeProfile, brute_force_search, flow_guided_search, solve_dispatch


class OServe(Policy):
    name = "oserve"

    def __init__(self, hysteresis: float = 0.05, amortise_s: float = 600.0, patience: int = 20,
                 tpot_bound: str | float | None = "slo", min_switch_interval_s: float = 0.0, seed: int = 0):
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
        profiles = [TypeProfile(j, float(max(1.0, a)), float(max(1.0, b))) for j, (a, b) in enumerate(ctx.type_lengths)]
        self.table = ThroughputTable(ctx.model, configs, profiles, ctx.engine, tpot_bound_s=bound)
        self.last_switch_s = -math.inf

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

    def objective(self, dep: Deployment, lam: np.ndarray) -> float:
        return float(solve_dispatch(self.table.for_deployment(dep), np.maximum(lam, 1e-9)).alpha)

    # ------------------------------------------------------------------ decide
    def plan(self, state: ClusterState) -> tuple[Deployment, dict[str, Any]]:
        """OServe's target for this state (before the switch-or-not rule)."""
        lam = self.rates(state)
        res = self.search(lam, state.deployment)
        target = place_near(res.deployment.configs, state.deployment, self.ctx.cluster, self.ctx.model)
        return target, {"objective": float(res.objective)}

    def decide(self, state: ClusterState) -> Decision:
        lam = self.rates(state)
        if state.deployment is None:
            if lam.sum() <= 0:
                lam = np.ones(state.num_types) * 1e-3  # nothing forecast yet: a balanced mix
            target, info = self.plan(state)
            return Decision(target, self.weights(target, lam), info=info)
        cur = state.deployment
        if lam.sum() <= 0:
            return Decision()
        target, info = self.plan(state)
        cur_obj = self.objective(cur, lam)
        gain = info["objective"] / max(cur_obj, 1e-12) - 1.0
        downtime = estimate_switch_downtime_s(cur, target, self.ctx.switch_costs) if target != cur else 0.0
        info.update(current_objective=cur_obj, gain=gain, est_downtime_s=downtime)
        wait = state.now_s - self.last_switch_s < self.min_switch_interval_s
        if target != cur and not state.switch_in_progress and not wait and \
                gain > self.hysteresis + downtime / self.amortise_s:
            self.last_switch_s = state.now_s
            return Decision(target, self.weights(target, lam), info=info)
        return Decision(None, self.weights(cur, lam), info=info)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "hysteresis": self.hysteresis, "amortise_s": self.amortise_s,
                "patience": self.patience, "tpot_bound": self.tpot_bound,
                "min_switch_interval_s": self.min_switch_interval_s, "seed": self.seed}


class OServeOracle(OServe):
    """OServe with the true rates of the next interval instead of the forecast (an upper bound on prediction)."""

    name = "oserve_oracle"
    uses_hindsight = True

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
