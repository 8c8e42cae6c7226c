"""``oserve_rl/Deploy-v0``: choose the deployment of an LLM cluster every decision interval.

An episode is a trace window on a cluster and model (domain-randomised from
the config); a step is one decision interval (60 simulated seconds by
default) of the same simulator and control loop the heuristics use
(``oserve_rl.policy.ControlLoop``).

Actions, ``Discrete(K + 2)``:

- ``0`` keep the current deployment (at the first step: install ``initial``);
- ``1`` do what OServe decides now (its flow-guided search on the forecast,
  with its switch rule), so an agent can always do at least what OServe does;
- ``2 .. K+1`` switch to candidate ``k`` (placed so unchanged replicas keep
  their GPUs). Candidates are computed once per (cluster, model, trace):
  every homogeneous deployment plus OServe's search results for demand mixes
  (uniform, and each type up-weighted), the best ``K`` by load scale. Unused slots and the current deployment are masked.

Requests are dispatched with the LP weights of the chosen deployment for the
forecast (OServe's lower level), for agents and heuristics alike. The first
step installs the chosen deployment for free (it was loaded before the episode).

Observation: a ``Dict`` (choose entries with ``obs_keys``), all 1-D ``float32`` Boxes
(2-D entries below are flattened row-major):

| key | shape | content |
|---|---|---|
| rate_history | (history_min, J) | log1p(per-type arrivals per second) of the last minutes |
| forecast | (J,) | log1p(the shared predictor's per-type rate for the next interval) |
| lengths | (J, 2) | log(mean input, output tokens) of each type's arrivals in the last interval |
| deployment | (8,) | current deployment: GPUs used share, replicas share, mean log2 TP, mean log2 PP, TP1/2/4/8 GPU shares |
| replicas | (max_replicas, 8) | per replica: present, ready, log2 TP/3, log2 PP/2, log1p queue, log1p running, KV use, log1p p99 E2E |
| switch | (2,) | switch in progress, time left / interval |
| time | (3,) | episode progress, sin and cos of the time of day on the trace clock |
| candidates | (K + 2, 4 + J) | per action: valid, is-current, GPUs share, replicas share, then capacity / forecast per type (log1p) |
| action_mask | (K + 2,) | 1 where the action is allowed (``env.action_masks()`` for MaskablePPO) |

Reward (``RewardConfig``): by default ``-(p99 E2E of the interval / p99_ref_s)
- slo_penalty * (1 - SLO attainment) - switch_penalty_per_s * switch downtime``.
``info`` carries the raw metrics of the interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from oserve_rl.agents.static import ROUTERS as STATIC_ROUTERS
from oserve_rl.envs.config import DeployEnvConfig, make_config

from oserve_rl.catalog import get_cluster, get_gpu, get_model
from oserve_rl.checks import is_seed
from oserve_rl.cluster import Deployment, parse_deployment
from oserve_rl.errors import ConfigError
from oserve_rl.policy import ClusterState, ControlLoop, Decision, Scenario, place_near
from oserve_rl.policy.forecasting import load_forecaster
from oserve_rl.sim.requests import STATUS_COMPLETED, STATUS_REJECTED
from oserve_rl.workload import trace_span_s

KEEP, OSERVE = 0, 1
RESET_OPTIONS = ("scenario", "data_seed", "episode", "initial", "initial_router")
N_ACTION_FEATURES = 4
DEP_FEATURES = 8
REP_FEATURES = 8


class DeployEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, config: DeployEnvConfig | dict[str, Any] | None = None, **options: Any):
        super().__init__()
        self.cfg = make_config(config, **options)
        c = self.cfg
        J, K, R, H = c.num_types, c.num_candidates, c.max_replicas, c.history_min
        self.J, self.K, self.R, self.H = J, K, R, H
        self.num_actions = K + 2
        # Finite bounds (log-scaled features stay far inside them) and 1-D entries: what both env checkers want.
        box = lambda shape, lo=-1e3, hi=1e3: spaces.Box(lo, hi, (int(np.prod(shape)),), np.float32)  # noqa: E731
        all_spaces = {
            "rate_history": box((H, J), 0.0), "forecast": box((J,), 0.0), "lengths": box((J, 2), 0.0),
            "deployment": box((DEP_FEATURES,), -1.0, 8.0), "replicas": box((R, REP_FEATURES), -1.0),
            "switch": box((2,), 0.0), "time": box((3,), -1.0, 1.0),
            "candidates": box((self.num_actions, N_ACTION_FEATURES + J)),
            "action_mask": box((self.num_actions,), 0.0, 1.0),
        }
        self.observation_space = spaces.Dict({k: all_spaces[k] for k in c.obs_keys})
        self.action_space = spaces.Discrete(self.num_actions)
        self.forecaster = load_forecaster(c.predictor)
        self.loop: ControlLoop | None = None
        self._mask = np.zeros(self.num_actions, dtype=np.float32)

    # ---------------------------------------------------------------- episode
    def _draw_scenario(self) -> tuple[Scenario, int]:
        c, rng = self.cfg, self.np_random
        pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
        rate = c.rate_scale if isinstance(c.rate_scale, (int, float)) else float(rng.uniform(*c.rate_scale))
        trace = pick(c.traces)
        start: float | str = c.start
        if c.start == "random" and c.episode_s is not None:
            span = trace_span_s(trace)
            starts = np.arange(0.0, max(60.0, span - c.episode_s), 60.0)
            held = np.zeros(len(starts), dtype=bool)
            for v in c.validation_windows:  # keep validation windows out of training episodes
                held |= (starts + c.episode_s > v) & (starts < v + c.episode_s)
            allowed = starts[~held] if (~held).any() else starts
            start = float(allowed[int(rng.integers(len(allowed)))])
        elif c.start == "random":
            start = 0.0
        seed = int(rng.integers(2**31 - 1))
        return Scenario(cluster=pick(c.clusters), model=pick(c.models), trace=trace, rate_scale=float(rate),
                        duration_s=c.episode_s, start_s=start, num_types=int(c.num_types),
                        slo_ttft_s=c.slo_ttft_s, slo_tpot_s=c.slo_tpot_s, typer_seed=0), seed

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None and not is_seed(seed):
            raise ConfigError(f"reset(seed={seed!r}): the seed must be a whole number >= 0, or None")
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"reset(options={options!r}): expected a mapping of reset options "
                              f"({', '.join(RESET_OPTIONS)})")
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ConfigError(f"reset options {sorted(unknown)} unknown; valid: {', '.join(RESET_OPTIONS)}")
        initial_router = options.get("initial_router")  # type-blind routing instead of the LP weights (vllm_static)
        if initial_router not in (None, *STATIC_ROUTERS):
            raise ConfigError(f"reset option initial_router={initial_router!r}: valid are {', '.join(STATIC_ROUTERS)} "
                              "(or leave it out for the LP dispatch)")
        if "episode" in options:  # a prebuilt EpisodeData (evaluate.py runs agents on its own episodes)
            data = options["episode"]
            scen, data_seed = data.scenario, data.seed
        else:
            if "scenario" in options:
                scen = _scenario_option(options["scenario"])
                data_seed = options.get("data_seed", 0)  # Scenario.build checks it
            elif "data_seed" in options:  # a drawn scenario's data seed comes from the reset seed
                raise ConfigError("reset option data_seed needs a scenario (options={'scenario': ..., 'data_seed': "
                                  "N}); without one, the reset seed draws the scenario and its data seed")
            else:
                scen, data_seed = self._draw_scenario()
            data = scen.build(seed=data_seed)
        self.data_seed = data_seed
        self._initial_spec = options.get("initial", self.cfg.initial)
        if initial_router is not None and self._initial_spec == "oserve":
            raise ConfigError("reset option initial_router needs a deployment spec as `initial` (e.g. '4xTP4'): "
                              "OServe's own pick comes with its dispatch weights")
        self._initial_router = initial_router
        if data.num_types != self.J:
            raise ConfigError(f"scenario has {data.num_types} request types, the env's spaces are for {self.J}")
        self.scenario = scen
        self.loop = ControlLoop(data, interval_s=self.cfg.interval_s, forecaster=self.forecaster,
                                decision_delay_s=self.cfg.decision_delay_s, mode=self.cfg.mode)
        from oserve_rl.agents.oserve import OServe

        self.oserve = OServe()
        self.oserve.reset(self.loop.context())
        self.candidates = _candidates(scen.cluster, scen.model, tuple(map(tuple, np.round(data.type_lengths))),
                                      self.K, self.cfg.slo_tpot_s)
        self._cand_capacity = np.array([self.oserve.table.for_deployment(d).sum(axis=0) for d in self.candidates]) \
            if self.candidates else np.zeros((0, self.J))
        self.num_gpus = data.cluster.num_gpus
        self._downtime_seen = 0.0
        self._state = self.loop.observe()
        self._episode_reward = 0.0
        return self._obs(), {"scenario": scen.to_dict(), "data_seed": data_seed,
                             "candidates": [d.spec_string() for d in self.candidates]}

    # ---------------------------------------------------------------- acting
    def action_masks(self) -> np.ndarray:
        """Valid actions (sb3-contrib MaskablePPO reads this)."""
        return self._mask.astype(bool)

    def decision_for(self, action: int) -> Decision:
        """The decision an action stands for in the current state."""
        state, loop = self._state, self.loop
        lam = state.forecast_rps
        if action == OSERVE:
            return self.oserve.decide(state)
        if action == KEEP:
            if state.deployment is None:
                return self._initial(state)
            return Decision()  # keep everything, dispatch weights included
        k = action - 2
        if not 0 <= k < len(self.candidates):
            raise ConfigError(f"action {action} is masked: only {len(self.candidates)} candidates exist")
        target = place_near(self.candidates[k].configs, state.deployment, loop.data.cluster, loop.data.model)
        lam_w = lam if lam.sum() > 0 else np.ones(self.J)
        return Decision(target, self.oserve.weights(target, lam_w))

    def _initial(self, state: ClusterState) -> Decision:
        if self._initial_spec == "oserve":
            return self.oserve.decide(state)
        dep = parse_deployment(self._initial_spec, self.loop.data.cluster, self.loop.data.model,
                               engine=self.loop.data.engine)
        if self._initial_router is not None:
            return Decision(dep, router=self._initial_router)
        return Decision(dep, self.oserve.weights(dep, np.ones(self.J)))

    def step(self, action: Any):
        if self.loop is None:
            raise ConfigError("step() before reset()")
        if self.loop.done:
            raise ConfigError("step() after the episode ended (terminated): call reset()")
        action = _action_index(action, self.num_actions)
        invalid = not (0 <= action < self.num_actions) or not self._mask[action]
        if invalid:
            if self.cfg.invalid_action == "error":
                raise ConfigError(f"action {action} is not allowed now (mask {self._mask.astype(int).tolist()}); "
                                  "use a maskable algorithm or the env option invalid_action='keep'")
            action = KEEP
        loop = self.loop
        decision = self.decision_for(action)
        t0 = loop.now_s
        loop.apply(decision, 0.0)
        loop.advance()
        info = self._interval_metrics(t0, loop.now_s)
        info["action"] = action
        info["invalid_action"] = invalid
        info["deployment"] = loop.sim.deployment.spec_string()
        reward = self._reward(info)
        self._episode_reward += reward
        terminated = loop.done
        self._state = loop.observe()
        if terminated:
            info["episode_metrics"] = self.episode_metrics()
        return self._obs(), float(reward), terminated, False, info

    # ---------------------------------------------------------------- metrics
    def _interval_metrics(self, t0: float, t1: float) -> dict[str, Any]:
        sim = self.loop.sim
        rec = sim.rec
        n = sim.arrived
        fin = rec.finish_s[:n]
        done = (rec.status[:n] == STATUS_COMPLETED) & (fin > t0) & (fin <= t1)
        ids = np.flatnonzero(done)
        e2e = fin[ids] - rec.arrival_s[ids]
        ttft = rec.first_token_s[ids] - rec.arrival_s[ids]
        out = rec.output_tokens[ids]
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(out > 1, (fin[ids] - rec.first_token_s[ids]) / np.maximum(out - 1, 1), 0.0)
        ok = np.ones(len(ids), dtype=bool)
        if self.cfg.slo_ttft_s is not None:
            ok &= ttft <= self.cfg.slo_ttft_s
        if self.cfg.slo_tpot_s is not None:
            ok &= tpot <= self.cfg.slo_tpot_s
        rejected = int(((rec.status[:n] == STATUS_REJECTED) & (rec.finish_s[:n] > t0) & (rec.finish_s[:n] <= t1)).sum())
        total = len(ids) + rejected
        downtime = sum(s.downtime_s for s in sim.switches) - self._downtime_seen
        self._downtime_seen += downtime
        dur = max(t1 - t0, 1e-9)
        price = float(np.mean([get_gpu(r.config.gpu).price_per_gpu_hour for r in sim.deployment.replicas]))
        return {
            "t_s": t1, "completed": len(ids), "rejected": rejected,
            "p99_e2e_s": float(np.percentile(e2e, 99)) if len(ids) else 0.0,
            "p50_e2e_s": float(np.percentile(e2e, 50)) if len(ids) else 0.0,
            "slo_attainment": float(ok.sum() / total) if total else 1.0,
            "goodput_rps": float(ok.sum() / dur), "switch_downtime_s": downtime,
            "cost_usd": sim.deployment.num_gpus * price * dur / 3600.0,
            "switches": len(sim.switches),
        }

    def _reward(self, m: dict[str, Any]) -> float:
        r = self.cfg.reward
        slo_miss = 1.0 - m["slo_attainment"]
        if r.kind == "p99":
            return -(m["p99_e2e_s"] / r.p99_ref_s) - r.slo_penalty * slo_miss - r.switch_penalty_per_s * m["switch_downtime_s"]
        if r.kind == "goodput":
            return m["goodput_rps"] / r.goodput_ref_rps - r.switch_penalty_per_s * m["switch_downtime_s"]
        if r.kind == "slo":
            return m["slo_attainment"] - r.switch_penalty_per_s * m["switch_downtime_s"]
        return -m["cost_usd"] - r.slo_penalty * slo_miss

    def episode_metrics(self) -> dict[str, Any]:
        """Whole-episode figures. Once the episode is over, the requests still in flight first run to the end
        (no new arrivals), as evaluate.py counts them, so a validation in TensorBoard reads what evaluate.py
        reports; before that, figures so far with those requests left out."""
        from oserve_rl.sim import metrics

        sim = self.loop.sim
        if self.loop.done:
            sim.finish()  # only finishes in-flight work: the window's arrivals are all in
        s = metrics.summary(sim.rec, slo_ttft_s=self.cfg.slo_ttft_s, slo_tpot_s=self.cfg.slo_tpot_s)
        return {"p99_e2e_s": s["e2e_s"]["p99"], "p50_e2e_s": s["e2e_s"]["p50"], "slo_attainment": s["slo"]["attainment"],
                "throughput_rps": s["throughput_rps"], "switches": len(sim.switches),
                "switch_downtime_s": sum(w.downtime_s for w in sim.switches), "return": self._episode_reward}

    # ---------------------------------------------------------------- observation
    def _obs(self) -> dict[str, np.ndarray]:
        # One builder for the env and the live controller (oserve_rl.envs.observation): they cannot drift.
        from oserve_rl.envs.observation import ObsContext, build_observation

        obs, self._mask = build_observation(self._state, ObsContext.from_env(self))
        return obs


def _dep_features(dep: Deployment | None, num_gpus: int, max_replicas: int) -> np.ndarray:
    f = np.zeros(DEP_FEATURES)
    if dep is None or not len(dep):
        return f
    g = dep.num_gpus
    f[0], f[1] = g / num_gpus, len(dep) / max_replicas
    f[2] = float(np.mean([math.log2(c.tp) for c in dep.configs]))
    f[3] = float(np.mean([math.log2(c.pp) for c in dep.configs]))
    for i, tp in enumerate((1, 2, 4, 8)):
        f[4 + i] = sum(c.num_gpus for c in dep.configs if c.tp == tp) / g
    return f


@lru_cache(maxsize=32)
def _candidates(cluster: str, model: str, type_lengths: tuple[tuple[float, float], ...], k: int,
                tpot_bound_s: float | None) -> list[Deployment]:
    """K candidate deployments: all homogeneous ones plus OServe's picks for demand mixes (see module doc)."""
    from oserve_rl.agents.oserve import _tables

    from oserve_rl.cluster import enumerate_replica_configs
    from oserve_rl.perf import EngineConfig
    from oserve_rl.sched import flow_guided_search, load_scale

    spec, model = get_cluster(cluster), get_model(model).name
    engine = EngineConfig()
    configs = enumerate_replica_configs(model, spec, engine)
    if not configs:
        raise ConfigError(f"no replica config of {model} fits cluster {cluster}")
    J = len(type_lengths)
    # The same (cached) throughput table and homogeneous deployments OServe plans with.
    table, _, homogeneous = _tables(model, spec, tuple(configs), type_lengths, engine, tpot_bound_s)
    pool: dict[str, Deployment] = {}
    for d in homogeneous:
        pool.setdefault(d.spec_string(), d)
    # Demand mixes: uniform, and each type tripled. The load level does not matter: scaling every rate
    # divides every deployment's load scale alike, so the search's pick depends on the mix only.
    for m in [np.ones(J)] + [np.where(np.arange(J) == j, 3.0, 1.0) for j in range(J)]:
        res = flow_guided_search(model, spec, m / m.sum(), table, engine=engine, seed=0)
        pool.setdefault(res.deployment.spec_string(), res.deployment)
    lam_ref = np.ones(J) / J
    ranked = sorted(pool.values(), key=lambda d: (-load_scale(table.for_deployment(d), lam_ref), d.spec_string()))
    return ranked[:k]


def _action_index(action: Any, num_actions: int) -> int:
    """An action as an int: integer scalars and one-element integer arrays (what vectorised code hands over).
    A float is refused rather than truncated (2.7 would silently be candidate 0)."""
    if isinstance(action, (int, np.integer)) and not isinstance(action, bool):
        return int(action)  # what trainers hand over: no array round trip per step
    a = np.asarray(action)
    if a.size != 1 or a.ndim > 1 or not np.issubdtype(a.dtype, np.integer):
        raise ConfigError(f"action {action!r}: expected one integer in [0, {num_actions}) (Discrete({num_actions}))")
    return int(a.reshape(()))


def _scenario_option(scen: Any) -> Scenario:
    """The ``scenario`` reset option: a Scenario or a mapping of its fields (unknown ones named)."""
    if isinstance(scen, Scenario):
        return scen
    if not isinstance(scen, Mapping):
        raise ConfigError(f"reset option scenario: expected a Scenario or a mapping of its fields, got {scen!r}")
    import dataclasses
    import difflib

    fields = [f.name for f in dataclasses.fields(Scenario)]
    for key in scen:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, 1)
            raise ConfigError(f"reset option scenario: unknown field {key!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "") + f"; valid: {', '.join(fields)}")
    return Scenario(**scen)
