"""The one interface every deployment policy uses: heuristics, baselines and (through the env) RL agents.

At every decision point (every ``interval_s`` of simulated time, 60 s by
default) the control loop builds a :class:`ClusterState` and asks the policy
for a :class:`Decision`: the deployment to run (or ``None`` to keep the current
one) and how to dispatch requests to its replicas. The loop, not the policy,
charges the switch (through the simulator's switch-cost model) and the
policy's own decision wall time in simulated time.

A policy sees only the past and the shared forecast; the two baselines defined
with hindsight (``vllm_static``'s sweep over the episode, ``oserve_oracle``'s
true future rates) say so with ``uses_hindsight = True`` and read it from
``PolicyContext.episode_trace`` / ``ClusterState.true_next_rps``.

    >>> class KeepFirst(Policy):
    ...     name = "keep_first"
    ...     def decide(self, state):
    ...         if state.deployment is None:
    ...             return Decision(parse_deployment("4xTP2", self.ctx.cluster, self.ctx.model))
    ...         return Decision()
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from oserve_rl.catalog import ClusterSpec
from oserve_rl.cluster import Deployment, ReplicaConfig, SwitchCosts
from oserve_rl.cluster.deployment import place_replicas
from oserve_rl.errors import ConfigError, DoesNotFitError
from oserve_rl.perf import EngineConfig

if TYPE_CHECKING:
    from oserve_rl.workload import RequestTyper, Trace


@dataclass(frozen=True)
class ReplicaState:
    """What a control plane can read off one replica (vLLM's /metrics has the same fields)."""

    config: ReplicaConfig
    ready: bool                 # loaded and accepting (False while a switch starts it)
    num_waiting: int
    num_running: int
    kv_utilization: float       # used KV blocks / capacity, 0..1
    outstanding_tokens: int     # prefill + decode tokens still to compute
    p99_e2e_s: float            # over requests it completed in the last interval (nan if none)


@dataclass(frozen=True)
class ClusterState:
    """Everything a policy may look at when it decides at ``now_s``."""

    now_s: float
    step: int
    interval_s: float
    deployment: Deployment | None        # None before the episode's first decision
    replicas: tuple[ReplicaState, ...]
    type_counts_per_min: np.ndarray      # [minutes, J] arrivals per complete minute so far (incl. history)
    forecast_rps: np.ndarray             # [J] the shared predictor's rate for the next interval
    recent_lengths: np.ndarray           # [J, 2] mean (input, output) tokens of last interval's arrivals (nan: none)
    switch_in_progress: bool
    switch_time_left_s: float
    true_next_rps: np.ndarray | None = None  # [J] only for policies with uses_hindsight

    @property
    def num_types(self) -> int:
        return int(self.forecast_rps.shape[0])


@dataclass(frozen=True)
class Decision:
    """A policy's answer.

    ``deployment``: the target (``None``: keep the current one). Build it with
    :func:`place_near` so unchanged replicas keep their GPUs.
    ``weights``: ``[J, K]`` rates (any scale) of type ``j`` to replica ``k`` of
    the target (or current) deployment, for a weighted router
    (``weighted_least_work`` by default, or ``weighted``: open-loop smooth WRR);
    ``None`` with ``router`` naming a load-based router (``least_work``,
    ``round_robin``, ``llumnix``).
    """

    deployment: Deployment | None = None
    weights: np.ndarray | None = None
    router: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PolicyContext:
    """Fixed facts of an episode, handed to ``Policy.reset``."""

    cluster: ClusterSpec
    model: str
    engine: EngineConfig
    typer: RequestTyper
    type_lengths: np.ndarray             # [J, 2] mean (input, output) tokens per type on the typing window
    switch_costs: SwitchCosts
    interval_s: float
    seed: int
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    episode_trace: Trace | None = None   # for hindsight baselines only

    @property
    def num_types(self) -> int:
        return int(self.type_lengths.shape[0])


class Policy(ABC):
    """Base class of every deployment policy. Subclasses set ``name`` and implement ``decide``."""

    name: str = "policy"
    uses_hindsight: bool = False
    switch_mode: str | None = None  # "reload" for baselines whose switches cold-start replicas; None: the loop's model
    ctx: PolicyContext

    def reset(self, ctx: PolicyContext) -> None:
        """Start of an episode: remember the context, forget per-episode state."""
        self.ctx = ctx

    @abstractmethod
    def decide(self, state: ClusterState) -> Decision:
        """The decision at ``state.now_s``; the first call (``state.deployment is None``) must return a deployment."""

    def describe(self) -> dict[str, Any]:
        """Name and parameters (for result tables and exported heuristic policies)."""
        return {"name": self.name}


def place_near(configs: Sequence[ReplicaConfig], current: Deployment | None, cluster: ClusterSpec,
               model: str) -> Deployment:
    """Place ``configs`` (kept in this order) so replicas unchanged from ``current`` keep their GPUs.

    Falls back to the canonical placement when keeping them would fragment
    the nodes so that the rest no longer fits.
    """
    if not configs:
        raise ConfigError("place_near: a deployment needs at least one replica")
    if current is not None:
        try:
            return Deployment(model, cluster, tuple(place_replicas(list(configs), cluster, prefer=current)))
        except DoesNotFitError:
            pass
    return Deployment(model, cluster, tuple(place_replicas(list(configs), cluster)))
