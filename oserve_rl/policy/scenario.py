"""Scenarios: which cluster, model and trace window an episode runs, built the same way for every policy.

Two policies evaluated on the same scenario and seed see byte-identical
arrivals (the trace is built before any policy runs, and nothing a policy does
feeds back into it). What the seed changes: the copies that ``rate_scale``
adds (``Trace.scale_load``), synthetic traces (``servegen:*``, length pools),
the k-means start of the request typer, and the window when
``start_s="random"``. A real trace at ``rate_scale=1`` is the same for all seeds.

    >>> data = Scenario(cluster="h100x8", model="llama-2-70b", trace="azure-conv", duration_s=600).build(seed=0)
    >>> data.trace.duration_s <= 600
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from oserve_rl.catalog import ClusterSpec, get_cluster, get_model
from oserve_rl.checks import check_number, is_seed
from oserve_rl.errors import ConfigError
from oserve_rl.perf import EngineConfig
from oserve_rl.workload import RequestTyper, Trace, load_trace

MINUTE_S = 60.0


@dataclass(frozen=True)
class Scenario:
    """An evaluation or training setting (all fields plain data, so it round-trips through YAML/JSON)."""

    cluster: str
    model: str
    trace: str | Trace               # a load_trace name or path, or a Trace built in code (e.g. synthetic mixes)
    rate_scale: float = 1.0          # load multiplier, keeping the trace's span (Trace.scale_load)
    duration_s: float | None = None  # episode length; None: to the end of the trace
    start_s: float | str = 0.0       # window start on the trace clock, or "random" (seeded)
    num_types: int = 4               # k-means request types
    typing_window_s: float = 600.0   # trace head the typer and per-type lengths are fitted on
    slo_ttft_s: float | None = 2.0
    slo_tpot_s: float | None = 0.1
    max_model_len: int | None = None  # engine limit; None: the model's context
    typer_seed: int | None = None    # k-means seed; None: the build seed (the env fixes it so types keep their meaning)

    def __post_init__(self) -> None:
        if not isinstance(self.trace, (str, Trace)):
            raise ConfigError(f"scenario: trace must be a trace name or path (str) or a Trace, got {self.trace!r}")
        check_number("scenario", "rate_scale", self.rate_scale, low=0, low_open=True)
        check_number("scenario", "duration_s", self.duration_s, low=0, low_open=True, none_ok=True)  # None: whole trace
        if self.start_s != "random":
            check_number("scenario", "start_s", self.start_s, low=0)  # seconds into the trace, or "random"
        check_number("scenario", "num_types", self.num_types, low=1, integer=True)
        check_number("scenario", "typing_window_s", self.typing_window_s, low=0, low_open=True)
        for name in ("slo_ttft_s", "slo_tpot_s"):  # None: no SLO; 0 or less could never be met
            check_number("scenario", name, getattr(self, name), low=0, low_open=True, none_ok=True)
        check_number("scenario", "max_model_len", self.max_model_len, low=1, integer=True, none_ok=True)
        check_number("scenario", "typer_seed", self.typer_seed, low=0, integer=True, none_ok=True)
        get_cluster(self.cluster)  # unknown names fail here, with suggestions
        get_model(self.model)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self) if isinstance(self.trace, str) else {**asdict(self.__class__(**{**self.__dict__, "trace": ""})),
                                                              "trace": self.trace.name}
        return d

    def build(self, seed: int = 0) -> EpisodeData:
        if not is_seed(seed):
            raise ConfigError(f"scenario: build seed must be a whole number >= 0 (a numpy generator seed), got {seed!r}")
        cluster = get_cluster(self.cluster)
        model = get_model(self.model).name
        full = load_trace(self.trace, seed=seed) if isinstance(self.trace, str) else self.trace
        if len(full) == 0:
            raise ConfigError(f"scenario: trace {self.trace!r} has no requests")
        base = full.rebase()
        full = base.scale_load(self.rate_scale, seed=seed)
        span = float(full.arrival_s[-1])
        dur = self.duration_s if self.duration_s is not None else span + 1e-9
        if self.start_s == "random":
            hi = max(0.0, span - dur)
            start = float(np.floor(np.random.default_rng(seed).uniform(0, hi) / MINUTE_S) * MINUTE_S) if hi > 0 else 0.0
        else:
            start = float(self.start_s)
        if start >= span:
            raise ConfigError(f"scenario: start_s={start:g} is past the end of trace {self.trace!r} ({span:g} s)")
        window = full.slice(start, start + dur, rebase=True)
        if len(window) == 0:
            raise ConfigError(f"scenario: trace {self.trace!r} has no arrivals in [{start:g}, {start + dur:g}) s")
        # Types are a property of the trace, not of the load multiplier: fit them on the unscaled head, so
        # every rate scale of one trace shares types, lengths and (in the env) candidate deployments.
        # Requests longer than the context are rejected on arrival whatever runs, so they are not typed: a
        # k-means centre spent on them is a type no replica serves (Azure code on Llama-2-70B: 14 % of the
        # requests; OServe's p99 on its first 12 minutes, 32 H100s: 13.78 s typed with them, 8.95 s without).
        engine = EngineConfig() if self.max_model_len is None else EngineConfig(max_model_len=self.max_model_len)
        context = engine.context_tokens(model)
        head = base.slice(0.0, max(self.typing_window_s, 1.0)).fitting(context)
        if len(head) < 10 * self.num_types:
            servable = base.fitting(context)  # the whole trace only when its head is too short
            if len(servable) < 10 * self.num_types:
                raise ConfigError(f"scenario: only {len(servable)} requests of trace {self.trace!r} fit the "
                                  f"{context}-token context of {model}; typing them into {self.num_types} types "
                                  f"needs at least {10 * self.num_types}")
            head = servable.head(max(10 * self.num_types, len(head)))
        typer = RequestTyper.fit(head, k=int(self.num_types), seed=seed if self.typer_seed is None else self.typer_seed)
        head_types = typer.predict(head)
        lengths = np.zeros((typer.k, 2))
        for j in range(typer.k):
            sel = head_types == j
            if sel.any():
                lengths[j] = head.input_tokens[sel].mean(), head.output_tokens[sel].mean()
            else:  # a type k-means created but the head never used: its centre stands in
                lengths[j] = typer.centers_tokens[j]
        head_span = max(float(head.arrival_s[-1] - head.arrival_s[0]), 1.0)
        prior_rps = np.bincount(head_types, minlength=typer.k).astype(float) / head_span * self.rate_scale
        history = full.slice(0.0, start) if start > 0 else None
        hist_counts = (counts_per_minute(history.arrival_s, typer.predict(history), typer.k, 0.0, start)
                       if history is not None and len(history) else np.zeros((0, typer.k)))
        return EpisodeData(self, seed, cluster, model, window, typer.predict(window), typer, lengths,
                           hist_counts, engine, float(dur if self.duration_s is not None else window.arrival_s[-1]),
                           prior_rps)


@dataclass
class EpisodeData:
    scenario: Scenario
    seed: int
    cluster: ClusterSpec
    model: str
    trace: Trace                 # the episode window, t = 0 at its start
    types: np.ndarray            # type id per request of ``trace``
    typer: RequestTyper
    type_lengths: np.ndarray     # [J, 2]
    history_counts: np.ndarray   # [minutes before the window, J]
    engine: EngineConfig
    duration_s: float
    prior_rps: np.ndarray        # [J] per-type rates on the typing window: the forecast before any minute is seen

    @property
    def num_types(self) -> int:
        return self.typer.k


def counts_per_minute(arrival_s: np.ndarray, types: np.ndarray, num_types: int, start_s: float,
                      end_s: float) -> np.ndarray:
    """[minutes, J] arrivals per whole minute in ``[start_s, end_s)`` (a partial last minute is dropped)."""
    minutes = int((end_s - start_s) // MINUTE_S)
    if minutes <= 0:
        return np.zeros((0, num_types))
    idx = ((np.asarray(arrival_s) - start_s) // MINUTE_S).astype(np.int64)
    ok = (idx >= 0) & (idx < minutes)
    flat = np.bincount(idx[ok] * num_types + np.asarray(types)[ok], minlength=minutes * num_types)
    return flat.reshape(minutes, num_types).astype(np.float64)
