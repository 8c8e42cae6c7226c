"""OServe's reusable algorithms: per-type throughput profiles, max-flow / load-scale dispatch, deployment search,
a p99 proxy for dispatches (latency.py).

    >>> import numpy as np
    >>> from oserve_rl.cluster import enumerate_replica_configs
    >>> from oserve_rl.sched import ThroughputTable, TypeProfile, flow_guided_search
    >>> types = [TypeProfile(0, 300, 100), TypeProfile(1, 2500, 300)]
    >>> table = ThroughputTable("llama-2-70b", enumerate_replica_configs("llama-2-70b", "h100x8"), types)
    >>> res = flow_guided_search("llama-2-70b", "h100x8", np.array([10.0, 1.0]), table)
    >>> res.dispatch.router_rates().shape == (2, len(res.deployment))   # [type, replica] for WeightedTypeRouter
    True

See docs/sched.md for the formulas and the choices made where the paper is silent.
"""

from oserve_rl.sched.dispatch import (
    disjoint_dispatch,
    dispatch_rates,
    DispatchResult,
    LoadScale,
    LoadScaleBound,
    dispatch_for_deployment,
    load_scale,
    load_scale_bound,
    load_scale_lp,
    max_flow_csgraph,
    max_flow_lp,
    solve_dispatch,
)
from oserve_rl.sched.latency import (
    LatencyModel,
    OutputSpread,
    p99_e2e_s,
    partition_candidates,
    replica_latency,
    tail_order,
)
from oserve_rl.sched.profiles import (
    ThroughputTable,
    TypeProfile,
    profiles_from_trace,
    replica_throughput_rps,
    simulated_throughput_rps,
    type_rates_rps,
)
from oserve_rl.sched.search import (
    Candidate,
    SearchResult,
    brute_force_search,
    count_shapes,
    flow_guided_search,
    homogeneous_candidates,
)

__all__ = [
    "Candidate", "DispatchResult", "LatencyModel", "LoadScale", "LoadScaleBound", "OutputSpread", "SearchResult", "ThroughputTable",
    "TypeProfile", "brute_force_search", "count_shapes", "disjoint_dispatch", "dispatch_for_deployment",
    "dispatch_rates", "flow_guided_search", "homogeneous_candidates", "load_scale", "load_scale_bound",
    "load_scale_lp", "max_flow_csgraph", "max_flow_lp", "p99_e2e_s", "partition_candidates", "profiles_from_trace",
    "replica_latency", "replica_throughput_rps", "simulated_throughput_rps", "solve_dispatch", "tail_order",
    "type_rates_rps",
]
