"""The control loop: a policy (or an RL agent, through the env) deciding every interval of a simulated episode.

    data = Scenario("h100x16", "llama-2-70b", "azure-conv").build(seed=0)
    result = run_policy(make_policy("oserve"), data)

Per interval: ``observe()`` builds the :class:`ClusterState` at ``now_s``,
the policy decides, ``apply()`` hands the decision to the simulator, and
``advance()`` simulates the next ``interval_s``. ``apply`` charges the
decision's wall time (times ``decision_time_scale``; or a fixed
``decision_delay_s``, which makes runs bit-reproducible) as simulated delay
before the switch or the new weights take effect, and the switch itself costs
what the simulator's switch model says. The first decision installs the
initial deployment at t = 0 for free: it was loaded before the episode.

The environment (``oserve_rl.envs``) drives the same class, so heuristics and
agents are measured on identical footing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from oserve_rl.cluster import Deployment, SwitchCosts, load_switch_costs
from oserve_rl.errors import ConfigError
from oserve_rl.policy.base import ClusterState, Decision, Policy, PolicyContext, ReplicaState
from oserve_rl.policy.scenario import MINUTE_S, EpisodeData, counts_per_minute
from oserve_rl.sim import metrics
from oserve_rl.sim.requests import STATUS_COMPLETED
from oserve_rl.sim.router import Router, make_router
from oserve_rl.sim.simulator import ClusterSimulator, SimResult


class Forecaster(Protocol):
    """Anything with ``predict(history [minutes, J]) -> next-minute counts [J]`` (see ``oserve_rl.forecast``).

    If it also has ``predict_series(counts [T, J], first_min) -> [T - first_min, J]`` (every minute's
    forecast from the minutes before it, as ``oserve_rl.forecast.Predictor`` defines it), the control loop
    forecasts a whole episode with one call to it.
    """

    def predict(self, history: np.ndarray) -> np.ndarray: ...


@dataclass
class EpisodeResult:
    policy: str
    seed: int
    sim: SimResult
    decisions: list[dict[str, Any]] = field(default_factory=list)  # per interval: t_s, decision_s, target, switched
    interval_s: float = 60.0

    @property
    def summary(self) -> dict[str, Any]:
        return self.sim.summary


class ControlLoop:
    """One episode of ``data`` under decisions handed in from outside (a policy or an agent)."""

    def __init__(self, data: EpisodeData, *, interval_s: float = 60.0, forecaster: Forecaster | None = None,
                 decision_time_scale: float = 1.0, decision_delay_s: float | None = None, mode: str = "fast",
                 switch_costs: SwitchCosts | None = None, hindsight: bool = False):
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ConfigError(f"control loop: interval_s must be > 0, got {interval_s!r}")
        if decision_delay_s is not None and not 0 <= decision_delay_s < math.inf:
            raise ConfigError(f"control loop: decision_delay_s must be finite seconds >= 0 or None (measured), got {decision_delay_s!r}")
        if not decision_time_scale >= 0:
            raise ConfigError(f"control loop: decision_time_scale must be >= 0, got {decision_time_scale!r}")
        self.data = data
        self.interval_s = float(interval_s)
        self.forecaster = forecaster
        self.decision_time_scale = float(decision_time_scale)
        self.decision_delay_s = decision_delay_s
        self.mode = mode
        self.costs = switch_costs or load_switch_costs()
        self.hindsight = hindsight
        self.J = data.num_types
        trace = data.trace
        self.end_s = float(data.duration_s)
        self.num_steps = max(1, math.ceil(self.end_s / self.interval_s - 1e-9))
        # Per-minute counts of the whole window, computed once; observe() only ever slices the past.
        self._counts = np.vstack([data.history_counts,
                                  counts_per_minute(trace.arrival_s, data.types, self.J, 0.0, self.end_s + MINUTE_S)])
        self._hist_minutes = len(data.history_counts)
        if forecaster is not None:
            need = int(getattr(forecaster, "min_history_min", 0) or 0)
            have = self._hist_minutes + int(self.end_s // MINUTE_S)
            if need > have:
                raise ConfigError(f"the trace window gives {have} whole minutes of arrivals (history included) but the "
                                  f"predictor {getattr(forecaster, 'name', forecaster)!r} needs at least {need}; "
                                  "use a longer --duration or a predictor with a shorter history (ewma)")
            types = getattr(forecaster, "num_types", None)
            if types is not None and int(types) != self.J:
                raise ConfigError(f"the predictor forecasts {types} request types but the scenario has {self.J} "
                                  f"(num_types); retrain it with --types {self.J} or set num_types: {types}")
        self.sim: ClusterSimulator | None = None
        self.now_s = 0.0
        self.step_index = 0
        self.decisions: list[dict[str, Any]] = []
        self._last_spec: str | None = None
        self._forecast_memo: dict[int, np.ndarray] = {}  # history minutes -> forecast rps

    # ------------------------------------------------------------------ context
    def context(self) -> PolicyContext:
        d = self.data
        return PolicyContext(d.cluster, d.model, d.engine, d.typer, d.type_lengths, self.costs, self.interval_s,
                             d.seed, d.scenario.slo_ttft_s, d.scenario.slo_tpot_s,
                             d.trace if self.hindsight else None)

    @property
    def done(self) -> bool:
        return self.sim is not None and self.now_s >= self.end_s - 1e-9

    # ------------------------------------------------------------------ observe
    def counts_so_far(self) -> np.ndarray:
        return self._counts[: self._hist_minutes + int(self.now_s // MINUTE_S)]

    def forecast_rps(self) -> np.ndarray:
        hist = self.counts_so_far()
        if len(hist) == 0:  # nothing observed yet: the typing window's rates stand in (the same for every policy)
            return np.array(self.data.prior_rps, dtype=float)
        if self.forecaster is None:
            return hist[-1] / MINUTE_S
        # The history is a prefix of the episode's fixed counts, so its length identifies it.
        if len(hist) not in self._forecast_memo:
            self._forecast_rest(len(hist))  # this minute and the rest of the episode, in one batch
        if len(hist) not in self._forecast_memo:  # no predict_series, or a minute past the episode
            self._forecast_memo[len(hist)] = np.maximum(np.asarray(self.forecaster.predict(hist), dtype=float),
                                                        0.0) / MINUTE_S
        return self._forecast_memo[len(hist)].copy()

    def _forecast_rest(self, first_min: int) -> None:
        """The forecast of every minute from ``first_min`` to the episode's end, in one ``predict_series`` call.

        Each forecast reads only the minutes before it (all policies see the same ones, step by step), and one
        batch costs what ~3 single LSTM calls do (2.5 ms for a 30-minute episode against ~0.7 ms per call).
        ``predict_series`` is also what the forecast benchmark scores (``score_predictors``).
        """
        series = getattr(self.forecaster, "predict_series", None)
        last = min(len(self._counts), self._hist_minutes + int(self.end_s // MINUTE_S) + 1)
        if series is None or not 1 <= first_min < last:
            return
        try:
            rows = np.asarray(series(self._counts[:last], first_min), dtype=float)
        except ConfigError:  # a forecaster that needs more history than first_min: predict() says so clearly
            return
        for t, row in zip(range(first_min, last), rows):
            self._forecast_memo.setdefault(t, np.maximum(row, 0.0) / MINUTE_S)

    def true_next_rps(self) -> np.ndarray:
        tr, t0 = self.data.trace, self.now_s
        lo, hi = np.searchsorted(tr.arrival_s, [t0, t0 + self.interval_s])
        return np.bincount(self.data.types[lo:hi], minlength=self.J).astype(float) / self.interval_s

    def observe(self) -> ClusterState:
        sim, now = self.sim, self.now_s
        tr = self.data.trace
        lo, hi = np.searchsorted(tr.arrival_s, [now - self.interval_s, now])
        recent = np.full((self.J, 2), np.nan)
        if hi > lo:
            ty = self.data.types[lo:hi]
            cnt = np.bincount(ty, minlength=self.J)
            has = cnt > 0
            recent[has, 0] = np.bincount(ty, tr.input_tokens[lo:hi], self.J)[has] / cnt[has]
            recent[has, 1] = np.bincount(ty, tr.output_tokens[lo:hi], self.J)[has] / cnt[has]
        replicas: tuple[ReplicaState, ...] = ()
        if sim is not None:
            replicas = self._replica_states()
        return ClusterState(
            now_s=now, step=self.step_index, interval_s=self.interval_s,
            deployment=None if sim is None else sim.deployment, replicas=replicas,
            type_counts_per_min=self.counts_so_far(), forecast_rps=self.forecast_rps(), recent_lengths=recent,
            switch_in_progress=bool(sim is not None and sim.switch_time_left_s > 0),
            switch_time_left_s=0.0 if sim is None else sim.switch_time_left_s,
            true_next_rps=self.true_next_rps() if self.hindsight else None,
        )

    def _replica_states(self) -> tuple[ReplicaState, ...]:
        sim = self.sim
        rec = sim.rec
        t0 = self.now_s - self.interval_s
        done = (rec.status == STATUS_COMPLETED) & (rec.finish_s > t0) & (rec.finish_s <= self.now_s)
        ids = np.flatnonzero(done)
        e2e = rec.finish_s[ids] - rec.arrival_s[ids]
        # Replica ids only grow (every engine ever started has its own), so they index the p99s directly.
        p99s = metrics.grouped_p99(e2e, rec.replica[ids], sim.num_replicas_started)
        out = []
        for placed, eng in zip(sim.deployment.replicas, sim.replicas):
            if eng is None:
                out.append(ReplicaState(placed.config, False, 0, 0, 0.0, 0, math.nan))
                continue
            out.append(ReplicaState(placed.config, bool(eng.accepting), eng.num_waiting, eng.num_running,
                                    eng.kv_used_blocks / max(1, eng.kv_capacity_blocks), eng.outstanding_tokens,
                                    float(p99s[eng.replica_id])))
        return tuple(out)

    # ------------------------------------------------------------------ act
    def _router_for(self, decision: Decision, dep: Deployment) -> Router:
        if decision.weights is not None:
            w = np.asarray(decision.weights, dtype=float)
            if w.shape != (self.J, len(dep)):
                raise ConfigError(f"decision weights must be [types={self.J}, replicas={len(dep)}], got {w.shape}")
            kind = decision.router or "weighted_least_work"
            if kind not in ("weighted", "weighted_least_work"):
                raise ConfigError(f"decision has weights but names router {kind!r}; weights go with "
                                  "'weighted_least_work' (default) or 'weighted'")
            return make_router(kind, rates=w)
        return make_router(decision.router or "least_work")

    def apply(self, decision: Decision, decision_s: float = 0.0) -> None:
        """Hand a decision to the simulator, ``decision_s`` (wall seconds the policy took) after ``now_s``."""
        if self.sim is None:
            if decision.deployment is None:
                raise ConfigError("the first decision of an episode must name a deployment (there is none to keep)")
            dep = decision.deployment
            self.sim = ClusterSimulator(dep, self.data.trace, router=self._router_for(decision, dep),
                                        engine=self.data.engine, mode=self.mode, switch_costs=self.costs,
                                        request_types=self.data.types, slo_ttft_s=self.data.scenario.slo_ttft_s,
                                        slo_tpot_s=self.data.scenario.slo_tpot_s, progress=False)
            self._last_spec = dep.spec_string()
            self.decisions.append({"t_s": 0.0, "decision_s": decision_s, "target": self._last_spec, "switched": False,
                                   **decision.info})
            return
        delay = self.decision_delay_s if self.decision_delay_s is not None else decision_s * self.decision_time_scale
        at = self.now_s + delay
        sim = self.sim
        target = decision.deployment
        switched = target is not None and target != sim.deployment
        if switched:
            sim.schedule_switch(at, target, router=self._router_for(decision, target))
        elif decision.weights is not None or decision.router is not None:
            sim.schedule_router(at, self._router_for(decision, sim.deployment))
        self.decisions.append({"t_s": self.now_s, "decision_s": decision_s,
                               "target": target.spec_string() if target is not None else None,
                               "switched": bool(switched), **decision.info})

    def advance(self) -> None:
        """Simulate the next interval (the last one ends at the episode's end)."""
        if self.sim is None:
            raise ConfigError("advance() before the first decision: apply() a deployment first")
        t = min(self.now_s + self.interval_s, self.end_s)
        self.sim.step_to(t)
        self.now_s = t
        self.step_index += 1

    def result(self, policy_name: str, finish: bool = True) -> EpisodeResult:
        """Episode result; ``finish`` lets requests still in flight at the end complete (no new arrivals)."""
        sim = self.sim
        if finish:
            res = sim.run()  # arrivals are exhausted within the window: this only finishes in-flight work
        else:
            res = sim.result(end_s=self.now_s)
        return EpisodeResult(policy_name, self.data.seed, res, self.decisions, self.interval_s)


def run_policy(policy: Policy, data: EpisodeData, *, interval_s: float = 60.0, forecaster: Forecaster | None = None,
               decision_time_scale: float = 1.0, decision_delay_s: float | None = None, mode: str = "fast",
               switch_costs: SwitchCosts | None = None, progress: Any = None) -> EpisodeResult:
    """Run ``policy`` over the episode ``data``; ``progress`` is an optional tqdm-like bar (``update(1)`` per interval)."""
    if getattr(policy, "needs_forecaster", False) and forecaster is None:
        raise ConfigError(f"policy {policy.name!r} plans on forecast arrival rates and needs a trained predictor; "
                          "pass one (evaluate.py --predictor lstm|ewma|DIR)")
    costs = switch_costs or load_switch_costs()
    if policy.switch_mode is not None:
        costs = costs.model_copy(update={"mode": policy.switch_mode})
    loop = ControlLoop(data, interval_s=interval_s, forecaster=forecaster, decision_time_scale=decision_time_scale,
                       decision_delay_s=decision_delay_s, mode=mode, switch_costs=costs,
                       hindsight=policy.uses_hindsight)
    policy.reset(loop.context())
    while True:
        state = loop.observe()
        t0 = time.perf_counter()
        decision = policy.decide(state)
        loop.apply(decision, time.perf_counter() - t0)
        loop.advance()
        if progress is not None:
            progress.update(1)
        if loop.done:
            break
    return loop.result(policy.name)


def interval_p99_s(rec: Any, interval_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(interval start times, p99 E2E of requests finishing in each interval; nan where none)."""
    e2e = metrics.per_request(rec)["e2e_s"]
    fin = rec.finish_s
    ok = np.isfinite(e2e)
    n = max(1, math.ceil(end_s / interval_s))
    idx = np.minimum((fin[ok] // interval_s).astype(np.int64), n - 1)
    return np.arange(n) * interval_s, metrics.grouped_p99(e2e[ok], idx, n)
