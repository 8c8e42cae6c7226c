"""Per-type throughput of a replica config: the ``n[k, j]`` that OServe's dispatch and search use.

OServe profiles every (replica config, request type) pair offline; the paper
does not say under which bound. Here ``n`` is the *saturated* throughput of one
replica fed only requests of one type (all of the same, representative
lengths), optionally capped by a per-output-token latency bound. Two ways to
get it:

``replica_throughput_rps`` (closed form, ~20 us per entry). vLLM with chunked
prefill mixes decode tokens and prefill chunks in one iteration. In a steady
state that completes ``n`` requests per second with an average of ``B``
sequences decoding, every iteration carries ``B`` decode tokens and, on
average, ``B * input / output`` prefill tokens (prefill tokens per second must
equal ``n * input``, decode tokens per second ``n * output``). So::

    B = min(kv_capacity_tokens / (input + KV_OUTPUT_SHARE * output + block_size / 2),
            max_num_seqs,
            max_num_batched_tokens * output / (input + output))     # the iteration's token budget
    T = iteration_s_agg(tokens = B * (input + output) / output,
                        prefill pairs = B * input / output * (input + 1) / 2,
                        decode seqs = B, decode context = B * (input + output / 2))
    n = B / (output * T)

With ``tpot_bound_s``, ``B`` is the largest with ``T(B) <= tpot_bound_s`` (``n =
0`` if even one sequence is too slow). ``n = 0`` also when one request cannot
run at all (``input + output`` over ``max_model_len`` or the KV pool): that
dispatch edge is infeasible.

``KV_OUTPUT_SHARE``: on average a request holds ``input + output/2`` tokens of
KV, but vLLM (and the simulator) admits on the blocks a prompt needs *now* and
preempts (recomputes) the newest request when growing outputs no longer fit,
so a full pool completes fewer requests than the average suggests. 0.75 is
fitted to the simulator; with 0.5 (the plain average) KV-bound cases read
10-27 % high, with 1.0 (the peak) up to 31 % low. On 84 (config, length)
cases (Llama-2-70B and OPT-66B on H100, TP2..TP8, TP2PP2, TP1PP4, TP4PP2;
the Azure-conv types and 200/600 .. 3000/500) the median error is 2.7 %, 89 %
are within +-11 %, 99 % within +-30 % (range -17 % .. +87 %). The outlier:
prompts longer than ``max_num_batched_tokens`` on a replica whose pool holds
only ~10-15 of them (Llama-2-70B TP2, 3000/500) reads 1.9x too high, because a
prompt admitted for its first chunk often finds no blocks for its next one and
is preempted and recomputed.
``scripts/bench_sched.py --only profile`` reprints these figures.

``simulated_throughput_rps`` (the paper's offline profiling, 0.05-0.3 s per
entry): runs ``oserve_rl.sim.ClusterSimulator`` on one replica with a
saturating trace of fixed lengths and measures the steady-state completion
rate. ``ThroughputTable(..., method="simulate")`` uses it for every entry.

    >>> from oserve_rl.cluster import ReplicaConfig
    >>> n = replica_throughput_rps(ReplicaConfig("llama-2-70b", "h100", tp=4), 1100, 411)
    >>> 5.0 < n < 8.0
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from oserve_rl.catalog import ModelSpec, get_model
from oserve_rl.cluster import Deployment, ReplicaConfig
from oserve_rl.errors import ConfigError
from oserve_rl.perf import EngineConfig
from oserve_rl.workload import RequestTyper, Trace

Method = Literal["model", "simulate"]
METHODS: tuple[str, ...] = ("model", "simulate")
KV_OUTPUT_SHARE = 0.75  # see the module doc: fitted to the simulator's admission and preemption


# --------------------------------------------------------------------------- request types


@dataclass(frozen=True)
class TypeProfile:
    """Representative lengths of one request type (means over a training window)."""

    type_id: int
    input_tokens: float
    output_tokens: float
    num_requests: int = 0  # requests of the type the means came from (0: not from a trace)

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 1):
                raise ConfigError(f"TypeProfile {self.type_id}: {name} must be a finite number >= 1, got {v!r}")

    def label(self) -> str:
        return f"type {self.type_id} ({self.input_tokens:.0f} in / {self.output_tokens:.0f} out)"


def _check_types(trace: Trace, types: np.ndarray, k: int | None) -> tuple[np.ndarray, int]:
    t = np.asarray(types)
    if t.shape != (len(trace),) or (t.size and not np.issubdtype(t.dtype, np.integer)):
        raise ConfigError(
            f"types must be an integer array with one entry per request of trace {trace.name!r} "
            f"({len(trace)}), got shape {t.shape} dtype {t.dtype}"
        )
    if t.size and t.min() < 0:
        raise ConfigError(f"types must be >= 0, got {int(t.min())}")
    k = int(t.max()) + 1 if k is None and t.size else int(k or 0)
    if k < 1 or (t.size and t.max() >= k):
        raise ConfigError(f"k={k} types, but types hold ids up to {int(t.max()) if t.size else None}")
    return t.astype(np.int64), k


def profiles_from_trace(
    trace: Trace, types: np.ndarray, k: int | None = None, typer: RequestTyper | None = None
) -> list[TypeProfile]:
    """Mean input/output lengths per type id ``0..k-1``.

    A type with no request in ``trace`` takes the typer's centre (geometric
    means of its k-means cluster) if ``typer`` is given; otherwise that is an
    error, since a type without lengths has no throughput.

    >>> from oserve_rl.workload import load_trace, RequestTyper
    >>> tr = load_trace("azure-conv").head(2000)
    >>> typer = RequestTyper.fit(tr, k=4)
    >>> profiles = profiles_from_trace(tr, typer.predict(tr), 4, typer)
    >>> sum(p.num_requests for p in profiles)
    2000
    """
    t, k = _check_types(trace, types, k)
    counts = np.bincount(t, minlength=k)
    mean_in = np.bincount(t, weights=trace.input_tokens, minlength=k) / np.maximum(counts, 1)
    mean_out = np.bincount(t, weights=trace.output_tokens, minlength=k) / np.maximum(counts, 1)
    out = []
    for j in range(k):
        if counts[j]:
            out.append(TypeProfile(j, float(mean_in[j]), float(mean_out[j]), int(counts[j])))
        elif typer is not None and j < typer.k:
            c_in, c_out = typer.centers_tokens[j]
            out.append(TypeProfile(j, float(max(c_in, 1.0)), float(max(c_out, 1.0)), 0))
        else:
            raise ConfigError(
                f"profiles_from_trace: type {j} has no request in trace {trace.name!r} ({len(trace)} requests); "
                "pass the RequestTyper (typer=...) to use its centre, or a longer window"
            )
    return out


def type_rates_rps(types: np.ndarray, k: int, duration_s: float) -> np.ndarray:
    """Arrival rate of every type id ``0..k-1`` over a window of ``duration_s`` seconds."""
    t = np.asarray(types, dtype=np.int64)
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ConfigError(f"type_rates_rps: duration_s must be > 0, got {duration_s!r}")
    if t.size and (t.min() < 0 or t.max() >= k):
        raise ConfigError(f"type_rates_rps: type ids must be in 0..{k - 1}, got {int(t.min())}..{int(t.max())}")
    return np.bincount(t, minlength=k).astype(np.float64) / duration_s


# --------------------------------------------------------------------------- throughput of one replica


def replica_throughput_rps(
    config: ReplicaConfig,
    input_tokens: float,
    output_tokens: float,
    engine: EngineConfig | None = None,
    tpot_bound_s: float | None = None,
) -> float:
    """Saturated requests/s of one replica serving only requests of these lengths (closed form, module doc)."""
    engine = engine or EngineConfig()
    i, o = float(input_tokens), float(output_tokens)
    if not (math.isfinite(i) and math.isfinite(o) and i >= 1 and o >= 1):
        raise ConfigError(f"replica_throughput_rps: input_tokens and output_tokens must be >= 1, got {i!r}, {o!r}")
    if tpot_bound_s is not None and not (math.isfinite(tpot_bound_s) and tpot_bound_s > 0):
        raise ConfigError(f"replica_throughput_rps: tpot_bound_s must be > 0, got {tpot_bound_s!r}")
    perf = config.perf()
    kv_tokens = perf.kv_capacity_tokens(engine)
    bs = engine.block_size
    if i + o > engine.context_tokens(config.model_spec) or math.ceil((i + o - 1) / bs) * bs > kv_tokens:
        return 0.0  # the engine rejects such a request outright
    if not engine.enable_chunked_prefill and i > engine.max_num_batched_tokens:
        return 0.0
    budget = engine.max_num_batched_tokens
    b_max = min(kv_tokens / (i + KV_OUTPUT_SHARE * o + bs / 2.0), float(engine.max_num_seqs), budget * o / (i + o))

    def step_s(b: float) -> float:
        prefill_tokens = b * i / o
        tokens = max(int(round(b + prefill_tokens)), 1)
        seqs = max(int(round(b + max(prefill_tokens / i, 1.0))), 1)
        return perf.iteration_s_agg(tokens, seqs, prefill_tokens * (i + 1) / 2.0, max(int(round(b)), 1),
                                    int(b * (i + o / 2.0)))

    b = b_max
    if tpot_bound_s is not None and step_s(b) > tpot_bound_s:
        lo = min(1.0, b_max)
        if step_s(lo) > tpot_bound_s:
            return 0.0
        hi = b_max
        for _ in range(30):  # T(B) is increasing in B: bisection to ~1e-9 of b_max
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if step_s(mid) <= tpot_bound_s else (lo, mid)
        b = lo
    return float(b / (o * step_s(b)))


def _one_replica_deployment(config: ReplicaConfig) -> Deployment:
    from oserve_rl.catalog import ClusterSpec, NodeGroup
    from oserve_rl.cluster import place_replicas

    per_node = max(8, config.tp)
    nodes = max(1, math.ceil(config.num_gpus / per_node))
    group = NodeGroup(gpu=config.gpu, count=nodes, gpus_per_node=per_node)
    cluster = ClusterSpec(name=f"profile-{config.gpu}", nodes=(group,))
    return Deployment(config.model, cluster, tuple(place_replicas([config], cluster)))


def simulated_throughput_rps(
    config: ReplicaConfig,
    input_tokens: float,
    output_tokens: float,
    engine: EngineConfig | None = None,
    num_requests: int = 2000,
) -> float:
    """Steady-state requests/s of one simulated replica fed ``num_requests`` identical requests at t = 0.

    The rate is measured between the 25th and 75th percentile of completion
    times, where the queue is still full (no ramp-up, no drain). 0 if the
    engine rejects the request. Fewer than ~6 x ``max_num_seqs`` requests
    leave too few batch turnovers for a steady state (all start together).
    """
    from oserve_rl.sim import ClusterSimulator  # the simulator is only needed for this measurement
    from oserve_rl.sim.requests import STATUS_COMPLETED

    engine = engine or EngineConfig()
    if num_requests < 8:
        raise ConfigError(f"simulated_throughput_rps: num_requests must be >= 8, got {num_requests}")
    i, o = max(int(round(input_tokens)), 1), max(int(round(output_tokens)), 1)
    trace = Trace(np.zeros(num_requests), np.full(num_requests, i), np.full(num_requests, o),
                  name=f"saturate-{i}x{o}", source="synthetic")
    res = ClusterSimulator(_one_replica_deployment(config), trace, engine=engine, progress=False).run()
    rec = res.recorder
    finish = np.sort(rec.finish_s[rec.status == STATUS_COMPLETED])
    if len(finish) < num_requests:
        return 0.0  # rejected: too long for the model or the KV pool
    a, b = int(num_requests * 0.25), int(num_requests * 0.75)
    return (b - a) / (finish[b] - finish[a]) if finish[b] > finish[a] else math.inf


# --------------------------------------------------------------------------- the table


class ThroughputTable:
    """``n[c, j]``: requests/s of one replica of ``configs[c]`` on request type ``j`` (numpy, computed once).

    >>> from oserve_rl.cluster import enumerate_replica_configs
    >>> configs = enumerate_replica_configs("llama-2-70b", "h100x8")
    >>> table = ThroughputTable("llama-2-70b", configs, [TypeProfile(0, 300, 100), TypeProfile(1, 2000, 400)])
    >>> table.n.shape
    (8, 2)
    """

    def __init__(
        self,
        model: ModelSpec | str,
        configs: Sequence[ReplicaConfig],
        profiles: Sequence[TypeProfile],
        engine: EngineConfig | None = None,
        tpot_bound_s: float | None = None,
        method: Method = "model",
    ) -> None:
        self.model = get_model(model).name
        self.configs: tuple[ReplicaConfig, ...] = tuple(dict.fromkeys(configs))  # unique, order kept
        self.profiles: tuple[TypeProfile, ...] = tuple(profiles)
        self.engine = engine or EngineConfig()
        self.tpot_bound_s = tpot_bound_s
        self.method = method
        if method not in METHODS:
            raise ConfigError(f"ThroughputTable: method must be one of {', '.join(METHODS)}, got {method!r}")
        if method == "simulate" and tpot_bound_s is not None:
            raise ConfigError("ThroughputTable: method='simulate' measures saturated throughput (the simulator has no "
                              "TPOT cap); tpot_bound_s needs method='model'")
        if not self.configs:
            raise ConfigError("ThroughputTable: no replica configs given (enumerate_replica_configs(model, cluster))")
        if not self.profiles:
            raise ConfigError("ThroughputTable: no request types given (profiles_from_trace(trace, types))")
        for c in self.configs:
            if not isinstance(c, ReplicaConfig) or c.model != self.model:
                raise ConfigError(f"ThroughputTable: config {c!r} is not a ReplicaConfig of model {self.model}")
        ids = [p.type_id for p in self.profiles]
        if ids != list(range(len(ids))):
            raise ConfigError(f"ThroughputTable: profiles must have type ids 0..{len(ids) - 1} in order, got {ids}")
        self._index = {c: i for i, c in enumerate(self.configs)}
        self.n = np.array([[self._entry(c, p) for p in self.profiles] for c in self.configs], dtype=np.float64)
        self.n.setflags(write=False)

    def _entry(self, c: ReplicaConfig, p: TypeProfile) -> float:
        if self.method == "simulate":
            return simulated_throughput_rps(c, p.input_tokens, p.output_tokens, self.engine)
        return replica_throughput_rps(c, p.input_tokens, p.output_tokens, self.engine, self.tpot_bound_s)

    @property
    def num_types(self) -> int:
        return len(self.profiles)

    def index(self, config: ReplicaConfig) -> int:
        try:
            return self._index[config]
        except KeyError:
            valid = ", ".join(c.label() for c in self.configs)
            raise ConfigError(f"replica config {config.label()} of {config.model} is not in the throughput table "
                              f"(it has: {valid})") from None

    def row(self, config: ReplicaConfig) -> np.ndarray:
        return self.n[self.index(config)]

    def for_deployment(self, deployment: Deployment) -> np.ndarray:
        """``[replica, type]`` throughput matrix of a deployment's replicas, in replica order."""
        if deployment.model != self.model:
            raise ConfigError(f"deployment serves {deployment.model}, the throughput table is for {self.model}")
        return self.n[[self.index(c) for c in deployment.configs]] if len(deployment) else np.zeros((0, self.num_types))

    def __repr__(self) -> str:
        return f"ThroughputTable({self.model}, {len(self.configs)} configs x {self.num_types} types, {self.method})"


__all__ = [
    "METHODS", "ThroughputTable", "TypeProfile", "profiles_from_trace", "replica_throughput_rps",
    "simulated_throughput_rps", "type_rates_rps",
]
