"""Deployment policies' common ground: the interface, scenarios and the control loop.

Heuristics and baselines live in ``oserve_rl.agents``; the reusable algorithms
they share with the RL environment (dispatch, deployment search, throughput
profiles) in ``oserve_rl.sched``.
"""

from oserve_rl.policy.base import ClusterState, Decision, Policy, PolicyContext, ReplicaState, place_near
from oserve_rl.policy.loop import ControlLoop, EpisodeResult, Forecaster, interval_p99_s, run_policy
from oserve_rl.policy.scenario import EpisodeData, Scenario, counts_per_minute

__all__ = [
    "ClusterState", "ControlLoop", "Decision", "EpisodeData", "EpisodeResult", "Forecaster", "Policy", "PolicyContext",
    "ReplicaState", "Scenario", "counts_per_minute", "interval_p99_s", "place_near", "run_policy",
]
