"""Live clusters: real vLLM replicas behind a real router, switched without losing requests.

The simulator's decisions (deployments, per-type routing weights) executed on
real servers. Everything here runs in the main venv and only spawns processes
and talks HTTP; vLLM itself lives in a separate venv (``scripts/setup_live.sh``).

- :mod:`~oserve_rl.live.backend`: :class:`Backend` interface, :class:`ProcessBackend`, :class:`ReplicaSpec`,
  the cluster config (``configs/live/*.yaml``).
- :mod:`~oserve_rl.live.router`: vllm-router control (:class:`RouterClient`, :class:`RouterProcess`) and
  :class:`WeightedDispatcher` for per-type weights.
- :mod:`~oserve_rl.live.plan`: diff a target deployment against the running one and execute the switch
  (:class:`LiveCluster`), with a health monitor.
- :mod:`~oserve_rl.live.metrics`: replica load from ``/metrics``.
- :mod:`~oserve_rl.live.replay`: load replay with TTFT/E2E/failure records.
- :mod:`~oserve_rl.live.tiny_model`: a tiny local Llama for tests.

See docs/live.md.
"""

from oserve_rl.live.backend import (
    Backend,
    LiveClusterConfig,
    LiveClusterError,
    ProcessBackend,
    Replica,
    ReplicaSpec,
    StopResult,
    load_live_config,
)
from oserve_rl.live.metrics import ReplicaMetrics, parse_metrics, scrape
from oserve_rl.live.plan import (
    BREAK_BEFORE_MAKE,
    MAKE_BEFORE_BREAK,
    HealthEvent,
    LiveCluster,
    SwitchDiff,
    SwitchReport,
    choose_order,
    diff_deployment,
)
from oserve_rl.live.replay import (
    ReplayRequest,
    ReplayResult,
    ReplayThread,
    RequestRecord,
    poisson_requests,
    recovery_time_s,
    requests_from_trace,
    run_replay,
)
from oserve_rl.live.router import RouterClient, RouterProcess, WeightedDispatcher

__all__ = [
    "BREAK_BEFORE_MAKE", "MAKE_BEFORE_BREAK", "Backend", "HealthEvent", "LiveCluster", "LiveClusterConfig",
    "LiveClusterError", "ProcessBackend", "ReplayRequest", "ReplayResult", "ReplayThread", "Replica",
    "ReplicaMetrics", "ReplicaSpec", "RequestRecord", "RouterClient", "RouterProcess", "StopResult",
    "SwitchDiff", "SwitchReport", "WeightedDispatcher", "choose_order", "diff_deployment", "load_live_config",
    "parse_metrics", "poisson_requests", "recovery_time_s", "requests_from_trace", "run_replay", "scrape",
]
