"""Deployments as data (spec strings, placement, validation, enumeration) and the switch-cost model."""

from oserve_rl.cluster.deployment import (
    GRAMMAR,
    Deployment,
    PlacedReplica,
    ReplicaConfig,
    ReplicaGroup,
    cluster_nodes,
    enumerate_deployments,
    enumerate_replica_configs,
    parse_deployment,
    parse_groups,
    place_replicas,
    validate_deployment,
)
from oserve_rl.cluster.switching import (
    SwitchCosts,
    SwitchPlan,
    Transfer,
    estimate_switch_downtime_s,
    kv_transfer_s,
    load_switch_costs,
    plan_switch,
)

__all__ = [
    "GRAMMAR", "Deployment", "PlacedReplica", "ReplicaConfig", "ReplicaGroup", "SwitchCosts", "SwitchPlan",
    "Transfer", "cluster_nodes", "enumerate_deployments", "enumerate_replica_configs", "estimate_switch_downtime_s",
    "kv_transfer_s", "load_switch_costs", "parse_deployment", "parse_groups", "place_replicas", "plan_switch",
    "validate_deployment",
]
