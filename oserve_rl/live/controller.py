"""The live controller: a policy trained on the simulator deciding a real cluster's deployment.

Every decision interval the controller

1. scrapes each serving replica's ``/metrics`` (:func:`read_replica`: queue,
   running, KV use summed over engines, and the E2E histogram for a p99 over
   the interval),
2. builds the *same* observation ``oserve_rl/Deploy-v0`` builds
   (:func:`build_observation`, one function for both: the unit tests feed it
   the env's own states and compare with ``DeployEnv._obs`` bit for bit), from
   a :class:`~oserve_rl.policy.ClusterState` whose arrivals are what the
   controller replayed (or, without a trace, what the replicas' counters say
   arrived: :class:`MetricsArrivals`), whose forecast is the shared predictor's
   and whose deployment is the *simulated* deployment the live one stands for,
3. runs the policy (an ONNX export through ``oserve_rl.export.load_exported``, or
   a heuristic such as OServe) and turns its action into a simulated
   deployment exactly as ``DeployEnv.decision_for`` does (keep / OServe /
   candidate ``k``, candidates from the env's own ``_candidates``),
4. maps that deployment to live replicas (:class:`ReplicaMap`), diffs it against
   the running replicas into keep / start / stop and executes the switch with
   :meth:`LiveCluster.apply` (make-before-break when old and new fit together)
   in a background thread, so decisions go on during a switch (they see
   ``switch_in_progress``; a new switch waits until the running one is done).

Sim -> live mapping (:class:`ReplicaMap`, ``replica_map`` in the controller
config): the policy's actions are deployments of the cluster and model it was
trained on (e.g. Llama-2-70B on 8 H100s). Each simulated replica config
(TP, PP, GPU type) is mapped to a live :class:`ReplicaSpec` (TP, PP, CPU cores or
GPU ids, extra server flags) by the first matching rule; then ``count:
per_shape`` makes one live replica per distinct live spec (``per_replica``: one
per simulated replica), and ``max_replicas`` keeps the groups with the most
simulated GPUs, folding the rest into the largest one. The policy keeps seeing
the simulated deployment (its observation must stay in distribution); a live
replica standing for ``n`` simulated replicas reports ``1/n`` of its queue and
running requests to each of them. Two simulated deployments that map to the
same live replicas switch nothing live (the "sim-only" outcome).

Clocks: with a trace, the controller replays it ``replay_speed`` times faster
than recorded; the observation runs on the *trace* clock (rates in trace
requests per second, decision intervals of the env's ``interval_s`` trace
seconds = ``interval_s / replay_speed`` wall seconds), so a policy sees the
rates and minutes it was trained on. Latencies in the observation are measured
wall seconds of the live cluster.

>>> from oserve_rl.live.controller import load_controller_config, open_controller
>>> control = load_controller_config("configs/live/cpu-tiny-sim.yaml")            # doctest: +SKIP
>>> with open_controller("exports/quickstart", control, trace="azure-conv", slice_s=(600, 900),
...                      run_dir="runs/live/ctl") as ctl:                          # doctest: +SKIP
...     result = ctl.run(initial="4xTP2")
...     print(result.replay_summary["failed"], [r.summary() for r in result.switch_reports])
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from oserve_rl.errors import CheckpointError, ConfigError, OServeError, UnknownNameError
from oserve_rl.live.backend import LiveClusterConfig, LiveClusterError, ReplicaSpec, load_live_config
from oserve_rl.live.metrics import ReplicaMetrics, fetch_text, parse_metrics
# The observation is the env's own builder (the env needs gymnasium: the [rl] extra).
from oserve_rl.envs.observation import ObsContext, build_observation

E2E_BUCKET = "vllm:e2e_request_latency_seconds_bucket"


# =========================================================================== config
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimMatch(_Strict):
    """Which simulated replica configs a rule covers (absent field: any). Values may be one or a list."""

    tp: int | list[int] | None = None
    pp: int | list[int] | None = None
    gpu: str | list[str] | None = None

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: Any) -> Any:
        from oserve_rl.catalog import get_gpu

        for name in [v] if isinstance(v, str) else (v or []):
            get_gpu(name)  # UnknownNameError with suggestions
        return v

    def matches(self, config: Any) -> bool:
        from oserve_rl.catalog import get_gpu

        def ok(want: Any, have: Any) -> bool:
            return want is None or have in (want if isinstance(want, list) else [want])

        gpus = None if self.gpu is None else [get_gpu(g).name for g in ([self.gpu] if isinstance(self.gpu, str)
                                                                          else self.gpu)]
        return ok(self.tp, config.tp) and ok(self.pp, config.pp) and ok(gpus, config.gpu)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in (("tp", self.tp), ("pp", self.pp), ("gpu", self.gpu)) if v is not None]
        return "{" + ", ".join(parts) + "}" if parts else "{any}"


class LiveReplica(_Strict):
    """A live replica: :class:`ReplicaSpec` fields (``devices``: CPU cores or GPU ids)."""

    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    devices: list[int] = []
    extra_args: list[str] = []
    label: str = ""

    def spec(self) -> ReplicaSpec:
        return ReplicaSpec(tp=self.tp, pp=self.pp, devices=tuple(self.devices), extra_args=tuple(self.extra_args),
                           label=self.label)


class ReplicaRule(_Strict):
    sim: SimMatch = SimMatch()
    live: LiveReplica


class ReplicaMapConfig(_Strict):
    """How a simulated deployment becomes live replicas (see the module doc)."""

    count: Literal["per_shape", "per_replica"] = "per_shape"
    max_replicas: int = Field(1, ge=1)
    rules: list[ReplicaRule] = Field(min_length=1)


class SimConfig(_Strict):
    """The simulated world the policy's observations describe.

    ``cluster`` / ``model`` / ``trace`` default to the first of the policy's
    env config (an ONNX export carries it); with a policy that carries none (a
    heuristic), ``env`` gives the Deploy-v0 options (``num_types``,
    ``num_candidates``, ``predictor``, ...). ``trace`` fits the request types
    (k-means on its first 10 minutes, seed 0, as the env does) when the
    controller replays no trace of its own. ``rate_scale`` and ``data_seed``
    build the scenario exactly as an env episode with those values.
    """

    cluster: str | None = None
    model: str | None = None
    trace: str | None = None
    rate_scale: float = Field(1.0, gt=0)
    data_seed: int = 0
    env: dict[str, Any] = {}


class ReplayConfig(_Strict):
    """Load replay: prompt/output lengths are clipped to what the live model serves."""

    replay_speed: float = Field(1.0, gt=0)
    max_prompt_tokens: int = Field(64, ge=1)
    max_output_tokens: int = Field(16, ge=1)
    concurrency: int = Field(16, ge=1)
    max_attempts: int = Field(8, ge=1)
    seed: int = 0


class ControllerConfig(_Strict):
    """``configs/live/*-sim.yaml``: a live cluster config plus what the controller needs on top."""

    live: str
    live_overrides: dict[str, Any] = {}
    sim: SimConfig = SimConfig()
    replica_map: ReplicaMapConfig
    replay: ReplayConfig = ReplayConfig()
    # Base switch-cost YAML for the simulator (default: configs/switching/default.yaml).
    switch_costs: str | None = None


@dataclass(frozen=True)
class ControlConfig:
    """A loaded controller config: the validated YAML, the live cluster config and the base switch costs."""

    path: Path
    config: ControllerConfig
    live: LiveClusterConfig
    switch_costs: Any  # SwitchCosts

    @property
    def replica_map(self) -> ReplicaMap:
        return ReplicaMap(self.config.replica_map)


def _fmt_errors(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            model: type[BaseModel] = ControllerConfig
            for part in e["loc"][:-1]:
                f = model.model_fields.get(str(part))
                ann = getattr(f, "annotation", None) if f else None
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    model = ann
            parts.append(f"{loc}: unknown key (valid: {', '.join(model.model_fields)})")
        else:
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            parts.append(f"{loc}: {e['msg']}{got}")
    return f"{source}: " + "; ".join(parts)


def load_controller_config(path: str | Path, *, base_dir: str | Path | None = None,
                           live: LiveClusterConfig | None = None, **live_overrides: Any) -> ControlConfig:
    """Read a controller config. ``live`` (a path) is resolved against the file's folder; ``live_overrides``
    (e.g. ``model=DIR``, ``router_port=8123``) replace keys of the live config; ``live`` given here
    replaces the file's live cluster altogether (tests pass the fixture's)."""
    from oserve_rl.cluster import load_switch_costs
    from oserve_rl.yamlio import read_yaml_mapping

    p = Path(path)
    data = read_yaml_mapping(p, hint=" (controller configs live in configs/live/*-sim.yaml)")
    if "live" not in data and set(data) & set(LiveClusterConfig.model_fields):
        raise ConfigError(f"{p} is a live cluster config (load_live_config), not a controller config: the controller "
                          "also needs `sim` and `replica_map`; pass a file like configs/live/cpu-tiny-sim.yaml, "
                          f"whose `live:` names {p.name}")
    try:
        cfg = ControllerConfig(**data)
    except ValidationError as e:
        raise ConfigError(_fmt_errors(e, str(p))) from None
    overrides = {**cfg.live_overrides, **live_overrides}
    if live is None:
        lp = Path(cfg.live)
        if not lp.is_absolute():
            lp = p.parent / lp
        if not lp.is_file():
            raise ConfigError(f"{p}: live: {cfg.live!r} -> {lp} does not exist")
        live = load_live_config(lp, base_dir=base_dir, **overrides)
    elif overrides:
        try:
            live = LiveClusterConfig(**{**live.model_dump(), **overrides})
        except ValidationError as e:
            raise ConfigError(f"{p}: live overrides {sorted(overrides)}: {e.errors()[0]['msg']}") from None
    costs_path = None
    if cfg.switch_costs:
        costs_path = Path(cfg.switch_costs)
        if not costs_path.is_absolute():
            costs_path = p.parent / costs_path
    return ControlConfig(p, cfg, live, load_switch_costs(costs_path))


# =========================================================================== sim -> live replicas
@dataclass(frozen=True)
class LiveGroup:
    """One live replica and the simulated replicas (indices into the deployment) it stands for."""

    spec: ReplicaSpec
    sim_replicas: tuple[int, ...]


class ReplicaMap:
    """Simulated deployment -> live replicas, by the config's rules (first match wins).

    >>> from oserve_rl.catalog import get_cluster
    >>> from oserve_rl.cluster import parse_deployment
    >>> m = ReplicaMap(ReplicaMapConfig(rules=[{"sim": {"tp": 4}, "live": {"tp": 1, "extra_args": ["--max-num-seqs=16"]}},
    ...                                        {"live": {"tp": 1, "extra_args": ["--max-num-seqs=8"]}}]))
    >>> [g.spec.extra_args for g in m.groups(parse_deployment("1xTP4+2xTP2", get_cluster("h100x8"), "llama-2-70b"))]
    [('--max-num-seqs=16',)]
    """

    def __init__(self, config: ReplicaMapConfig | Mapping[str, Any]):
        self.config = config if isinstance(config, ReplicaMapConfig) else ReplicaMapConfig(**config)

    def spec_for(self, config: Any) -> ReplicaSpec:
        """The live spec of one simulated replica config."""
        for rule in self.config.rules:
            if rule.sim.matches(config):
                return rule.live.spec()
        raise ConfigError(
            f"replica_map: no rule matches the simulated replica TP{config.tp} PP{config.pp} on {config.gpu} "
            f"(rules: {', '.join(r.sim.describe() for r in self.config.rules)}); add a catch-all rule `sim: {{}}`")

    def groups(self, deployment: Any) -> list[LiveGroup]:
        """Live replicas of ``deployment``, the one holding the most simulated GPUs first."""
        configs = deployment.configs
        if not configs:
            return []
        specs = [self.spec_for(c) for c in configs]
        if self.config.count == "per_replica":
            raw: list[tuple[ReplicaSpec, list[int]]] = [(s, [i]) for i, s in enumerate(specs)]
        else:
            by_spec: dict[ReplicaSpec, list[int]] = {}
            for i, s in enumerate(specs):
                by_spec.setdefault(s, []).append(i)
            raw = list(by_spec.items())
        raw.sort(key=lambda g: (-sum(configs[i].num_gpus for i in g[1]), min(g[1])))
        kept = [(s, list(ix)) for s, ix in raw[: self.config.max_replicas]]
        for spec, ix in raw[self.config.max_replicas:]:
            home = next((k for k in kept if k[0] == spec), kept[0])
            home[1].extend(ix)
        return [LiveGroup(s, tuple(sorted(ix))) for s, ix in kept]

    def specs(self, deployment: Any) -> list[ReplicaSpec]:
        return [g.spec for g in self.groups(deployment)]


# =========================================================================== the simulated world
@dataclass
class SimWorld:
    """What the policy was trained on, rebuilt for one live run: env config, scenario data, OServe, candidates."""

    env_config: Any               # DeployEnvConfig
    data: Any                     # EpisodeData (trace window, types, typer, type lengths, history, prior rates)
    context: Any                  # PolicyContext
    oserve: Any                   # OServe reset on the context (action 1, candidate capacities)
    candidates: list[Any]         # Deployments, as DeployEnv computes them
    cand_capacity: np.ndarray     # [len(candidates), J]
    forecaster: Any

    @property
    def cluster(self) -> Any:
        return self.data.cluster

    @property
    def model(self) -> str:
        return self.data.model

    @property
    def num_types(self) -> int:
        return int(self.data.num_types)

    def parse(self, spec: str) -> Any:
        from oserve_rl.cluster import parse_deployment

        return parse_deployment(spec, self.data.cluster, self.data.model, engine=self.data.engine)

    def capacity(self, deployment: Any) -> np.ndarray:
        return self.oserve.table.for_deployment(deployment).sum(axis=0)

    def obs_context(self, end_s: float | None = None) -> ObsContext:
        start = self.data.scenario.start_s
        return ObsContext(self.env_config, tuple(self.candidates), self.cand_capacity, self.capacity,
                          int(self.data.cluster.num_gpus), np.asarray(self.data.type_lengths),
                          float(start) if isinstance(start, (int, float)) else 0.0,
                          float(self.data.duration_s if end_s is None else end_s))


def build_sim_world(env_config: Any, *, cluster: str, model: str, trace: Any, start_s: float = 0.0,
                    duration_s: float | None = None, rate_scale: float = 1.0, data_seed: int = 0,
                    switch_costs: Any = None) -> SimWorld:
    """The scenario, OServe and candidates a ``Deploy-v0`` episode with these values would have."""
    from oserve_rl.agents.oserve import OServe
    from oserve_rl.cluster import load_switch_costs
    from oserve_rl.envs.deploy import _candidates
    from oserve_rl.policy import PolicyContext, Scenario
    from oserve_rl.policy.forecasting import load_forecaster

    c = env_config
    scen = Scenario(cluster=cluster, model=model, trace=trace, rate_scale=float(rate_scale), duration_s=duration_s,
                    start_s=float(start_s), num_types=int(c.num_types), slo_ttft_s=c.slo_ttft_s,
                    slo_tpot_s=c.slo_tpot_s, typer_seed=0)
    data = scen.build(seed=int(data_seed))
    forecaster = load_forecaster(c.predictor)
    types = getattr(forecaster, "num_types", None)
    if types is not None and int(types) != data.num_types:
        raise ConfigError(f"the predictor {c.predictor!r} forecasts {types} request types but the policy's env has "
                          f"{data.num_types} (num_types)")
    ctx = PolicyContext(data.cluster, data.model, data.engine, data.typer, data.type_lengths,
                        switch_costs or load_switch_costs(), float(c.interval_s), data.seed,
                        scen.slo_ttft_s, scen.slo_tpot_s, None)
    oserve = OServe()
    oserve.reset(ctx)
    cands = _candidates(scen.cluster, scen.model, tuple(map(tuple, np.round(data.type_lengths))),
                        int(c.num_candidates), c.slo_tpot_s)
    cap = (np.array([oserve.table.for_deployment(d).sum(axis=0) for d in cands]) if cands
           else np.zeros((0, data.num_types)))
    return SimWorld(c, data, ctx, oserve, list(cands), cap, forecaster)


# =========================================================================== arrivals and state
class ArrivalBook:
    """Arrivals the controller knows of (trace clock, seconds from the episode start) and what the env
    derives from them: per-minute type counts (history first), last-interval mean lengths, the forecast.

    The arithmetic is ``ControlLoop.observe``'s, so the same arrivals give the same state (the LSTM's forecast
    to float32 rounding: ``ControlLoop`` forecasts an episode in one batch, this one minute at a time).
    """

    def __init__(self, num_types: int, *, interval_s: float, prior_rps: np.ndarray,
                 history_counts: np.ndarray | None = None):
        self.J = int(num_types)
        self.interval_s = float(interval_s)
        self.prior_rps = np.asarray(prior_rps, dtype=float)
        self.history = (np.zeros((0, self.J)) if history_counts is None
                        else np.asarray(history_counts, dtype=np.float64).reshape(-1, self.J))
        self._t = np.zeros(0)
        self._type = np.zeros(0, dtype=np.int64)
        self._in = np.zeros(0, dtype=np.int64)
        self._out = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._t)

    def add(self, arrival_s: Sequence[float], types: Sequence[int], input_tokens: Sequence[int],
            output_tokens: Sequence[int]) -> None:
        t = np.asarray(arrival_s, dtype=np.float64)
        if not len(t):
            return
        ty = np.asarray(types, dtype=np.int64)
        if ty.min() < 0 or ty.max() >= self.J:
            raise ConfigError(f"arrival types must be in 0..{self.J - 1}, got {sorted(set(ty.tolist()))}")
        t_all = np.concatenate([self._t, t])
        order = np.argsort(t_all, kind="stable")
        self._t = t_all[order]
        self._type = np.concatenate([self._type, ty])[order]
        self._in = np.concatenate([self._in, np.asarray(input_tokens, dtype=np.int64)])[order]
        self._out = np.concatenate([self._out, np.asarray(output_tokens, dtype=np.int64)])[order]

    def counts_so_far(self, now_s: float) -> np.ndarray:
        from oserve_rl.policy import counts_per_minute

        return np.vstack([self.history, counts_per_minute(self._t, self._type, self.J, 0.0, now_s)])

    def recent_lengths(self, now_s: float) -> np.ndarray:
        lo, hi = np.searchsorted(self._t, [now_s - self.interval_s, now_s])
        recent = np.full((self.J, 2), np.nan)
        if hi > lo:
            ty = self._type[lo:hi]
            cnt = np.bincount(ty, minlength=self.J)
            has = cnt > 0
            recent[has, 0] = np.bincount(ty, self._in[lo:hi], self.J)[has] / cnt[has]
            recent[has, 1] = np.bincount(ty, self._out[lo:hi], self.J)[has] / cnt[has]
        return recent

    def forecast_rps(self, now_s: float, forecaster: Any) -> np.ndarray:
        hist = self.counts_so_far(now_s)
        if len(hist) == 0:
            return np.array(self.prior_rps, dtype=float)
        if forecaster is None:
            return hist[-1] / 60.0
        return np.maximum(np.asarray(forecaster.predict(hist), dtype=float), 0.0) / 60.0

    def state(self, now_s: float, step: int, *, forecaster: Any, deployment: Any = None,
              replicas: tuple[Any, ...] = (), switch_in_progress: bool = False,
              switch_time_left_s: float = 0.0) -> Any:
        from oserve_rl.policy import ClusterState

        return ClusterState(
            now_s=float(now_s), step=int(step), interval_s=self.interval_s, deployment=deployment,
            replicas=tuple(replicas), type_counts_per_min=self.counts_so_far(now_s),
            forecast_rps=self.forecast_rps(now_s, forecaster), recent_lengths=self.recent_lengths(now_s),
            switch_in_progress=bool(switch_in_progress), switch_time_left_s=float(switch_time_left_s),
        )


class MetricsArrivals:
    """Arrivals of traffic the controller does not send, read off the replicas' counters.

    Per replica, new requests in an interval = successes added + change of
    running + waiting (a new replica counts from 0). Each interval's requests
    get one type: the typer's type of their mean (prompt, generated) tokens
    from the token counters, and times spread evenly over the interval. Cruder
    than a replay (types are per interval, not per request); documented as such.
    """

    def __init__(self, book: ArrivalBook, typer: Any):
        self.book, self.typer = book, typer
        self._last: dict[str, tuple[float, float, float, float]] = {}
        self._last_t: float | None = None

    def update(self, now_s: float, readings: Mapping[str, ReplicaMetrics | None]) -> int:
        """Add the arrivals since the previous call; returns how many."""
        from oserve_rl.workload import Trace

        arrived = prompt = gen = done = 0.0
        for rid, m in readings.items():
            if m is None:
                continue
            vals = tuple(0.0 if math.isnan(x) else float(x) for x in
                         (m.requests_success_total, m.in_flight, m.prompt_tokens_total, m.generation_tokens_total))
            prev = self._last.get(rid, (0.0, 0.0, 0.0, 0.0))
            self._last[rid] = vals  # type: ignore[assignment]
            d_done = max(0.0, vals[0] - prev[0])
            arrived += max(0.0, d_done + vals[1] - prev[1])
            done += d_done
            prompt += max(0.0, vals[2] - prev[2])
            gen += max(0.0, vals[3] - prev[3])
        t_prev = self._last_t if self._last_t is not None else max(0.0, now_s - self.book.interval_s)
        self._last_t = now_s
        n = int(round(arrived))
        if n <= 0 or now_s <= t_prev:
            return 0
        mean_in = max(1, int(round(prompt / done))) if done else 1
        mean_out = max(1, int(round(gen / done))) if done else 1
        probe = Trace(np.zeros(1), np.array([mean_in]), np.array([mean_out]), name="live-metrics", source="metrics")
        j = int(self.typer.predict(probe)[0])
        times = t_prev + (np.arange(n) + 0.5) * (now_s - t_prev) / n
        self.book.add(times, np.full(n, j), np.full(n, mean_in), np.full(n, mean_out))
        return n


# =========================================================================== replica metrics
@dataclass(frozen=True)
class ReplicaReading:
    """One scrape: the summed metrics and the E2E histogram's cumulative bucket counts (le -> count)."""

    metrics: ReplicaMetrics
    e2e_buckets: dict[float, float]


def e2e_buckets(text: str) -> dict[float, float]:
    """Cumulative ``vllm:e2e_request_latency_seconds`` bucket counts, summed over engines and models."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == E2E_BUCKET and "le" in s.labels:
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + float(s.value)
    return out


def read_replica(url: str, timeout_s: float = 2.0) -> ReplicaReading:
    """Scrape ``<url>/metrics`` once (:func:`parse_metrics` + E2E buckets); :class:`LiveClusterError` naming the URL."""
    text = fetch_text(url.rstrip("/") + "/metrics", timeout_s)
    return ReplicaReading(parse_metrics(text), e2e_buckets(text))


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus ``histogram_quantile`` of cumulative ``le -> count`` buckets (NaN without observations).

    >>> histogram_quantile(0.5, {0.1: 0, 0.5: 10, 1.0: 20, float("inf"): 20})
    0.5
    """
    if not buckets:
        return math.nan
    les = sorted(buckets)
    counts = [buckets[le] for le in les]
    total = counts[-1]
    if not total > 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (c - prev_count)
        prev_le, prev_count = le, c
    return prev_le


# =========================================================================== policies
@dataclass
class PolicyHandle:
    """An exported ONNX policy or a heuristic, loaded for the controller."""

    name: str
    kind: Literal["onnx", "heuristic"]
    exported: Any = None          # ExportedPolicy (ONNX)
    heuristic: Any = None         # oserve_rl.policy.Policy
    env_config: dict[str, Any] | None = None
    env_hash: str | None = None
    path: Path | None = None


def load_policy(spec: str | Path) -> PolicyHandle:
    """``DIR`` of ``python -m oserve_rl export`` (ONNX or heuristic), or a heuristic's registry name (``oserve``)."""
    p = Path(spec)
    if p.exists():
        from oserve_rl.export import load_exported

        pol = load_exported(p)
        env = pol.spec.get("env") or {}
        cfg = env.get("config") if isinstance(env, dict) else None
        h = env.get("space_hash") if isinstance(env, dict) else None
        if pol.kind == "heuristic":
            return PolicyHandle(pol.name, "heuristic", heuristic=pol.make_heuristic(), env_config=cfg, env_hash=h,
                                path=p)
        return PolicyHandle(pol.name, "onnx", exported=pol, env_config=cfg, env_hash=h, path=p)
    from oserve_rl.agents import make_policy, policy_class, policy_names

    key = str(spec).strip().lower().replace("-", "_")
    if key not in policy_names():
        raise UnknownNameError("policy (export directory or heuristic)", str(spec), policy_names())
    if policy_class(key).uses_hindsight:
        raise ConfigError(f"policy {key!r} needs the episode's future (hindsight) and cannot run live")
    pol = make_policy(key)
    return PolicyHandle(pol.name, "heuristic", heuristic=pol)


def resolve_env_config(policy: PolicyHandle, control: ControlConfig, trace: str | None = None) -> tuple[Any, str, str, str]:
    """``(DeployEnvConfig, cluster, model, trace)``: the policy's env (its config wins) and which of its
    clusters / models the live cluster stands for."""
    from oserve_rl.envs.config import make_config

    sim = control.config.sim
    if policy.env_config is not None:
        cfg = make_config(dict(policy.env_config))
        if policy.env_hash and cfg.space_hash() != policy.env_hash:
            raise CheckpointError(f"{policy.path}: the env config in policy.json does not give its space_hash "
                                  f"{policy.env_hash} (re-export the policy)")
        for what, want, have in (("cluster", sim.cluster, cfg.clusters), ("model", sim.model, cfg.models)):
            if want is not None and want not in have:
                raise ConfigError(f"{control.path}: sim.{what} {want!r} is not one the policy was trained on "
                                  f"({', '.join(have)}); its candidate deployments are for those")
    else:
        opts = dict(sim.env)
        for single in ("cluster", "model", "trace"):
            if getattr(sim, single) is not None:
                opts[single] = getattr(sim, single)
        cfg = make_config(opts)
    cluster = sim.cluster or cfg.clusters[0]
    model = sim.model or cfg.models[0]
    tr = trace or sim.trace or cfg.traces[0]
    return cfg, cluster, model, tr


# =========================================================================== the controller
@dataclass
class DecisionRecord:
    """One decision: trace-clock time, what the policy chose and what happened live."""

    step: int
    t_s: float                       # trace clock
    wall_s: float                    # seconds since the controller started
    action: int | None               # None for heuristics
    meaning: str
    target: str | None               # simulated deployment chosen (None: keep)
    live_target: list[str] = field(default_factory=list)
    diff: str = ""
    outcome: str = ""
    decide_ms: float = 0.0
    forecast_rps: list[float] = field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        what = f"action {self.action} ({self.meaning})" if self.action is not None else self.meaning
        tgt = f" -> {self.target}" if self.target else ""
        live = f" | live {self.diff}" if self.diff else ""
        err = f" | error: {self.error}" if self.error else ""
        return f"[t={self.t_s:7.1f}s step {self.step}] {what}{tgt}: {self.outcome}{live}{err}"


@dataclass
class ControllerResult:
    decisions: list[DecisionRecord]
    switch_reports: list[Any]        # SwitchReport, in order (the first installs the initial deployment)
    replay_summary: dict[str, Any] | None
    replay: Any = None               # ReplayResult
    final_deployment: str | None = None
    final_live: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": [dataclasses.asdict(d) for d in self.decisions],
            "switches": [switch_report_dict(r) for r in self.switch_reports],
            "replay": self.replay_summary, "final_deployment": self.final_deployment, "final_live": self.final_live,
        }


def switch_report_dict(report: Any) -> dict[str, Any]:
    return {"order": report.order, "kept": report.kept, "started": report.started, "stopped": report.stopped,
            "phases_s": dict(report.phases_s), "total_s": report.total_s,
            "replicas": [{"replica_id": r.replica_id, "action": r.action, "url": r.url, "phases_s": dict(r.phases_s),
                          "drained": r.drained, "stop_signal": r.stop_signal} for r in report.replicas]}


@dataclass
class _Switch:
    target: Any
    groups: list[LiveGroup]
    previous: tuple[Any, list[LiveGroup]]
    started_t_s: float
    estimate_s: float
    record: DecisionRecord
    thread: threading.Thread | None = None
    report: Any = None
    error: BaseException | None = None


def trace_requests(data: Any, replay: ReplayConfig, replay_speed: float) -> list[Any]:
    """Replay requests for the scenario window: send at ``arrival / replay_speed``, lengths clipped."""
    from oserve_rl.live.replay import requests_from_trace

    reqs = requests_from_trace(data.trace, max_prompt_tokens=replay.max_prompt_tokens,
                               max_output_tokens=replay.max_output_tokens, types=data.types, seed=replay.seed)
    # requests_from_trace counts from the first arrival; the trace clock counts from the window start.
    return [dataclasses.replace(r, send_at_s=float(data.trace.arrival_s[i]) / replay_speed)
            for i, r in enumerate(reqs)]


class LiveController:
    """Runs a policy against a :class:`LiveCluster` (see the module doc). Use :func:`open_controller`."""

    def __init__(self, policy: PolicyHandle, world: SimWorld, cluster: Any, replica_map: ReplicaMap, *,
                 replay: ReplayConfig | None = None, requests: list[Any] | None = None, replay_speed: float = 1.0,
                 interval_wall_s: float | None = None, end_s: float | None = None,
                 log: Callable[[str], None] | None = print, run_dir: str | Path | None = None):
        if not replay_speed > 0:
            raise ConfigError(f"replay speed must be > 0, got {replay_speed!r}")
        self.policy, self.world, self.cluster, self.rmap = policy, world, cluster, replica_map
        self.replay_cfg = replay or ReplayConfig()
        self.requests = requests
        self.time_scale = float(replay_speed)  # trace seconds per wall second
        self.interval_wall_s = float(interval_wall_s or world.env_config.interval_s / self.time_scale)
        if not self.interval_wall_s > 0:
            raise ConfigError(f"decision interval must be > 0 s, got {interval_wall_s!r}")
        self.log = log or (lambda s: None)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        data = world.data
        J = world.num_types
        self.book = ArrivalBook(J, interval_s=world.env_config.interval_s, prior_rps=data.prior_rps,
                                history_counts=data.history_counts if requests is not None else None)
        self._metrics_arrivals = None if requests is not None else MetricsArrivals(self.book, data.typer)
        self._pending = 0  # next request of ``requests`` not yet in the book
        self.obs_ctx = world.obs_context(end_s)
        self.num_actions = int(world.env_config.num_candidates) + 2
        if policy.kind == "onnx":
            n = policy.exported.num_actions
            if n != self.num_actions:
                raise CheckpointError(f"{policy.path}: the policy has {n} actions, its env config gives "
                                      f"{self.num_actions}")
        else:
            policy.heuristic.reset(world.context)
        self._lock = threading.RLock()
        self.shadow: Any = None                      # the simulated deployment the live one stands for
        self.groups: list[LiveGroup] = []
        self._switch: _Switch | None = None
        self.decisions: list[DecisionRecord] = []
        self.switches_done = 0                       # live switches completed after the first deployment
        self._step = 0
        self._t0: float | None = None                # monotonic time of trace-clock 0 (the replay start)
        self._wall0 = time.monotonic()
        self._last_buckets: dict[str, dict[float, float]] = {}
        self.replay_thread: Any = None
        self._decisions_file = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._decisions_file = open(self.run_dir / "decisions.jsonl", "a")

    # ------------------------------------------------------------------ clocks and state
    def trace_now(self, mono: float | None = None) -> float:
        if self._t0 is None:
            return 0.0
        return max(0.0, ((time.monotonic() if mono is None else mono) - self._t0) * self.time_scale)

    def _take_arrivals(self, now_s: float) -> None:
        """Requests the replay has sent by ``now_s`` (trace clock) join the book."""
        if self.requests is None:
            return
        data = self.world.data
        n = int(np.searchsorted(data.trace.arrival_s, now_s, side="left"))
        if n > self._pending:
            sl = slice(self._pending, n)
            self.book.add(data.trace.arrival_s[sl], data.types[sl], data.trace.input_tokens[sl],
                          data.trace.output_tokens[sl])
            self._pending = n

    def _scrape(self) -> dict[str, ReplicaReading | None]:
        out: dict[str, ReplicaReading | None] = {}
        for r in self.cluster.serving():
            try:
                out[r.replica_id] = read_replica(r.url)
            except LiveClusterError:
                out[r.replica_id] = None
        return out

    def _p99(self, replica_id: str, reading: ReplicaReading) -> float:
        prev = self._last_buckets.get(replica_id, {})
        self._last_buckets[replica_id] = dict(reading.e2e_buckets)
        delta = {le: c - prev.get(le, 0.0) for le, c in reading.e2e_buckets.items()}
        return histogram_quantile(0.99, delta)

    def replica_states(self, readings: Mapping[str, ReplicaReading | None]) -> tuple[Any, ...]:
        """One ReplicaState per simulated replica of the shadow deployment, from its live replica's metrics."""
        from oserve_rl.policy import ReplicaState

        with self._lock:
            shadow, groups = self.shadow, list(self.groups)
        if shadow is None:
            return ()
        serving = self.cluster.serving()
        used: set[str] = set()
        live_of: dict[int, tuple[Any, int]] = {}
        for g in groups:
            rep = next((r for r in serving if r.spec == g.spec and r.replica_id not in used), None)
            if rep is not None:
                used.add(rep.replica_id)
            for i in g.sim_replicas:
                live_of[i] = (rep, len(g.sim_replicas))
        p99 = {rid: self._p99(rid, rd) for rid, rd in readings.items() if rd is not None}
        out = []
        for i, cfg in enumerate(shadow.configs):
            rep, n = live_of.get(i, (None, 1))
            if rep is None:
                out.append(ReplicaState(cfg, False, 0, 0, 0.0, 0, math.nan))
                continue
            rd = readings.get(rep.replica_id)
            if rd is None:  # serving but not answering /metrics this time: ready, load unknown
                out.append(ReplicaState(cfg, True, 0, 0, 0.0, 0, math.nan))
                continue
            m = rd.metrics
            nz = lambda x: 0.0 if math.isnan(x) else float(x)  # noqa: E731
            out.append(ReplicaState(cfg, True, nz(m.waiting) / n, nz(m.running) / n, nz(m.kv_cache_usage), 0,
                                    p99.get(rep.replica_id, math.nan)))
        return tuple(out)

    def observe(self) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
        """``(ClusterState, observation, mask)`` now."""
        now = self.trace_now()
        self._take_arrivals(now)
        readings = self._scrape()
        if self._metrics_arrivals is not None:
            self._metrics_arrivals.update(now, {k: (v.metrics if v else None) for k, v in readings.items()})
        reps = self.replica_states(readings)
        with self._lock:
            sw = self._switch
            shadow = self.shadow
        left = 0.0
        if sw is not None:
            left = max(0.0, sw.estimate_s - (now - sw.started_t_s))
        state = self.book.state(now, self._step, forecaster=self.world.forecaster, deployment=shadow, replicas=reps,
                                switch_in_progress=sw is not None, switch_time_left_s=left)
        obs, mask = build_observation(state, self.obs_ctx)
        return state, obs, mask

    # ------------------------------------------------------------------ deciding
    def decision_for(self, action: int, state: Any) -> Any:
        """``DeployEnv.decision_for`` on the live state (dispatch weights left out: the live router balances)."""
        from oserve_rl.envs.deploy import KEEP, OSERVE
        from oserve_rl.policy import Decision, place_near

        w = self.world
        if action == OSERVE:
            return w.oserve.decide(state)
        if action == KEEP:
            if state.deployment is None:
                initial = w.env_config.initial
                return w.oserve.decide(state) if initial == "oserve" else Decision(w.parse(initial))
            return Decision()
        k = action - 2
        if not 0 <= k < len(w.candidates):
            raise ConfigError(f"action {action} is masked: only {len(w.candidates)} candidates exist")
        return Decision(place_near(w.candidates[k].configs, state.deployment, w.cluster, w.model))

    def _meaning(self, action: int) -> str:
        if action == 0:
            return "keep"
        if action == 1:
            return "oserve"
        k = action - 2
        spec = self.world.candidates[k].spec_string() if k < len(self.world.candidates) else "unused"
        return f"candidate {k}: {spec}"

    def decide(self) -> DecisionRecord:
        """One decision now (it may start a switch in the background)."""
        t_wall = time.monotonic() - self._wall0
        state, obs, mask = self.observe()
        t0 = time.perf_counter()
        action: int | None = None
        if self.policy.kind == "onnx":
            action = int(self.policy.exported.act(obs))
            meaning = self._meaning(action)
            if not (0 <= action < self.num_actions) or not mask[action]:
                meaning = f"masked action {action} -> keep"
                action = 0
            decision = self.decision_for(action, state)
        else:
            decision = self.policy.heuristic.decide(state)
            meaning = self.policy.name
        ms = (time.perf_counter() - t0) * 1e3
        target = decision.deployment
        rec = DecisionRecord(self._step, state.now_s, t_wall, action, meaning,
                             target.spec_string() if target is not None else None, decide_ms=ms,
                             forecast_rps=[float(x) for x in state.forecast_rps])
        self._step += 1
        with self._lock:
            busy = self._switch is not None
            same = target is None or (self.shadow is not None and target == self.shadow)
        if same:
            rec.outcome = "keep"
        elif busy:
            rec.outcome = "deferred: a switch is in progress"
        else:
            self._begin_switch(target, state.now_s, rec)
        self._record(rec)
        return rec

    def _record(self, rec: DecisionRecord) -> None:
        self.decisions.append(rec)
        self.log(rec.line())
        if self._decisions_file is not None:
            self._decisions_file.write(json.dumps(dataclasses.asdict(rec)) + "\n")
            self._decisions_file.flush()

    # ------------------------------------------------------------------ switching
    def _begin_switch(self, target: Any, now_s: float, rec: DecisionRecord) -> None:
        from oserve_rl.cluster import estimate_switch_downtime_s

        groups = self.rmap.groups(target)
        specs = [g.spec for g in groups]
        diff = self.cluster.diff(specs)
        rec.live_target = [s.short() for s in specs]
        rec.diff = diff.summary()
        with self._lock:
            previous = (self.shadow, list(self.groups))
            if diff.is_noop:
                self.shadow, self.groups = target, groups
                rec.outcome = "sim-only: the live replicas stay"
                return
            est = (estimate_switch_downtime_s(previous[0], target, self.world.context.switch_costs)
                   if previous[0] is not None else 0.0)
            sw = _Switch(target, groups, previous, now_s, est, rec)
            self.shadow, self.groups, self._switch = target, groups, sw
        rec.outcome = "switching" if previous[0] is not None else "installing"

        def work() -> None:
            try:
                sw.report = self.cluster.apply(specs)
            except BaseException as e:  # noqa: BLE001 - reported by _reap
                sw.error = e

        sw.thread = threading.Thread(target=work, name="live-switch", daemon=True)
        sw.thread.start()

    def _reap(self, wait: bool = False) -> bool:
        """Finish a completed switch (revert the shadow if it failed). True when none is left running."""
        with self._lock:
            sw = self._switch
        if sw is None:
            return True
        if sw.thread is not None:
            if wait:
                sw.thread.join()
            elif sw.thread.is_alive():
                return False
        with self._lock:
            self._switch = None
            if sw.error is not None:
                self.shadow, self.groups = sw.previous
        if sw.error is not None:
            msg = f"switch to {sw.target.spec_string()} failed, the previous deployment stays: {sw.error}"
            sw.record.error = str(sw.error)
            self.log(msg)
            if not isinstance(sw.error, OServeError):
                raise sw.error
        else:
            if sw.previous[0] is not None:
                self.switches_done += 1
            self.log(f"  switch done: {sw.report.summary()}")
        return True

    def install(self, spec_or_deployment: Any) -> None:
        """Install a simulated deployment before any load (blocking), e.g. ``"4xTP2"``."""
        target = self.world.parse(spec_or_deployment) if isinstance(spec_or_deployment, str) else spec_or_deployment
        rec = DecisionRecord(self._step, self.trace_now(), time.monotonic() - self._wall0, None, "initial",
                             target.spec_string())
        self._begin_switch(target, rec.t_s, rec)
        self._record(rec)
        self._reap(wait=True)

    # ------------------------------------------------------------------ the loop
    def run(self, *, initial: str | None = None, duration_s: float | None = None,
            stop_when: Callable[[LiveController], bool] | None = None, poll_s: float = 0.2) -> ControllerResult:
        """Install the first deployment, start the replay, decide every interval until the replay is done,
        ``duration_s`` wall seconds passed or ``stop_when(self)``; then wait for a running switch."""
        from oserve_rl.live.replay import ReplayThread

        if initial is not None:
            self.install(initial)
        else:
            rec = self.decide()  # deployment None: the policy's first action installs (env: step 0)
            self._reap(wait=True)
            if self.shadow is None:
                raise ConfigError(f"the policy's first decision ({rec.meaning}) names no deployment")
        if self.shadow is None:
            raise LiveClusterError("the first deployment did not start; see the replica logs in the run folder")
        rt = None
        if self.requests is not None:
            rt = ReplayThread(self.requests, self.cluster.router.url, model=self.cluster.backend.served_model_name,
                              concurrency=self.replay_cfg.concurrency, max_attempts=self.replay_cfg.max_attempts)
            self.replay_thread = rt.start()
            self._t0 = rt.t0
        else:
            self._t0 = time.monotonic()
        next_at = self._t0 + self.interval_wall_s
        end_at = self._t0 + duration_s if duration_s is not None else math.inf
        try:
            while True:
                self._reap()
                now = time.monotonic()
                if now >= end_at:
                    break
                if rt is not None and rt.completed() >= len(self.requests):
                    break
                if stop_when is not None and stop_when(self):
                    break
                if now >= next_at:
                    self.decide()
                    while next_at <= time.monotonic():
                        next_at += self.interval_wall_s
                time.sleep(max(0.01, min(poll_s, next_at - time.monotonic(), end_at - time.monotonic())))
        finally:
            replay = rt.stop_and_join() if rt is not None else None
            self._reap(wait=True)
        return ControllerResult(
            self.decisions, list(self.cluster.reports), replay.summary() if replay is not None else None, replay,
            self.shadow.spec_string() if self.shadow is not None else None,
            [r.spec.short() for r in self.cluster.serving()],
        )

    def close(self) -> None:
        if self._decisions_file is not None:
            self._decisions_file.close()
            self._decisions_file = None
        self.cluster.close()

    def __enter__(self) -> LiveController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_slice(text: str | None) -> tuple[float, float] | None:
    """``"START:END"`` seconds of the trace -> (start, end); errors name the value."""
    if text is None:
        return None
    a, sep, b = str(text).partition(":")
    try:
        start, end = float(a), float(b)
    except ValueError:
        raise ConfigError(f"--slice {text!r}: expected START:END seconds, e.g. 600:900") from None
    if not sep or not (0 <= start < end):
        raise ConfigError(f"--slice {text!r}: expected START:END with 0 <= START < END")
    return start, end


def open_controller(policy: str | Path | PolicyHandle, control: ControlConfig, *, trace: str | None = None,
                    slice_s: tuple[float, float] | None = None, replay_speed: float | None = None,
                    interval_wall_s: float | None = None, duration_s: float | None = None,
                    run_dir: str | Path = "runs/live/controller", log: Callable[[str], None] | None = print,
                    cluster: Any = None) -> LiveController:
    """Everything :class:`LiveController` needs: policy, simulated world, replay and a started
    :class:`LiveCluster` (vllm-router up, no replica yet). Close it (``with``) to stop every process."""
    from oserve_rl.live.plan import LiveCluster

    pol = policy if isinstance(policy, PolicyHandle) else load_policy(policy)
    env_cfg, sim_cluster, sim_model, sim_trace = resolve_env_config(pol, control, trace)
    speed = float(control.config.replay.replay_speed if replay_speed is None else replay_speed)  # 0 is an error
    if not speed > 0:
        raise ConfigError(f"--replay-speed must be > 0, got {speed}")
    sim = control.config.sim
    if trace is not None:
        start, end = slice_s if slice_s is not None else (0.0, float(env_cfg.episode_s or 1800.0))
        world = build_sim_world(env_cfg, cluster=sim_cluster, model=sim_model, trace=trace, start_s=start,
                                duration_s=end - start, rate_scale=sim.rate_scale, data_seed=sim.data_seed,
                                switch_costs=control.switch_costs)
        requests = trace_requests(world.data, control.config.replay, speed)
        end_s = None
    else:
        episode = float(env_cfg.episode_s or 1800.0)
        world = build_sim_world(env_cfg, cluster=sim_cluster, model=sim_model, trace=sim_trace, start_s=0.0,
                                duration_s=episode, rate_scale=sim.rate_scale, data_seed=sim.data_seed,
                                switch_costs=control.switch_costs)
        requests = None
        end_s = duration_s * speed if duration_s is not None else episode
    if log is not None:
        log(f"policy {pol.name} ({pol.kind}) on simulated {sim_model} @ {sim_cluster}; candidates: "
            + ", ".join(f"{k}={d.spec_string()}" for k, d in enumerate(world.candidates)))
    run_dir = Path(run_dir)
    live = cluster if cluster is not None else LiveCluster.from_config(control.live, run_dir)
    try:
        return LiveController(pol, world, live, control.replica_map, replay=control.config.replay,
                              requests=requests, replay_speed=speed, interval_wall_s=interval_wall_s, end_s=end_s,
                              log=log, run_dir=run_dir)
    except BaseException:
        live.close()
        raise
