"""Static baselines: one homogeneous deployment for the whole episode.

``vllm_static`` is the paper's "vLLM static" baseline at its best: every
feasible homogeneous deployment of the cluster (``enumerate_deployments``) is
simulated on the whole episode with least-outstanding-work routing, and the
one with the lowest p99 E2E runs. That choice uses hindsight (the episode's
own trace), which only makes the baseline stronger; the sweep runs in
``reset`` so it is not charged as decision time.

``llumnix`` runs the same deployment with Llumnix's dispatching rule:
each request goes to the replica with the most *freeness* (free KV after
its queued demand, per running request); see ``LlumnixRouter``. Live
migration between replicas is not modelled (documented gap).
"""

from __future__ import annotations

import math
from typing import Any

from oserve_rl.checks import check_number
from oserve_rl.cluster import Deployment, enumerate_deployments
from oserve_rl.errors import ConfigError
from oserve_rl.policy import ClusterState, Decision, Policy, PolicyContext
from oserve_rl.sim import ClusterSimulator


def sweep_homogeneous(ctx: PolicyContext, router: str = "least_work", max_candidates: int | None = None,
                      sweep_s: float | None = None) -> tuple[Deployment, list[dict[str, Any]]]:
    """Simulate every homogeneous deployment on the episode (hindsight); return the best by p99 E2E and the table."""
    if ctx.episode_trace is None:
        raise ConfigError("vllm_static needs the episode trace (uses_hindsight); run it through run_policy/evaluate.py")
    trace = ctx.episode_trace if sweep_s is None else ctx.episode_trace.slice(0.0, sweep_s)
    cands = enumerate_deployments(ctx.model, ctx.cluster, homogeneous=True, engine=ctx.engine)
    if not cands:
        raise ConfigError(f"no homogeneous deployment of {ctx.model} fits cluster {ctx.cluster.name}")
    if max_candidates is not None:
        cands = cands[:max_candidates]
    rows = []
    for dep in cands:
        res = ClusterSimulator(dep, trace, router=router, engine=ctx.engine, progress=False,
                               slo_ttft_s=ctx.slo_ttft_s, slo_tpot_s=ctx.slo_tpot_s).run()
        s = res.summary
        p99 = s["e2e_s"]["p99"]
        rows.append({"deployment": dep.spec_string(), "p99_e2e_s": p99 if p99 is not None else math.inf,
                     "completed": s["completed"], "slo_attainment": s["slo"]["attainment"], "dep": dep})
    # Most completed first (a deployment that rejects more looks faster on the rest), then p99.
    best = min(rows, key=lambda r: (-r["completed"], r["p99_e2e_s"]))
    return best["dep"], [{k: v for k, v in r.items() if k != "dep"} for r in rows]


# The type-blind routers a static deployment runs with (the env's ``initial_router`` accepts the same).
ROUTERS = ("least_work", "round_robin")


class VLLMStatic(Policy):
    name = "vllm_static"
    uses_hindsight = True

    def __init__(self, router: str = "least_work", deployment: str | None = None, sweep_s: float | None = None):
        if router not in ROUTERS:
            raise ConfigError(f"vllm_static: router must be one of {', '.join(ROUTERS)}, got {router!r}")

        if deployment is not None and not isinstance(deployment, str):
            raise ConfigError(f"{self.name}: deployment must be a deployment spec string such as '2xTP4+8xTP1' "
                              f"(or None to sweep), got {deployment!r}")
        check_number(self.name, "sweep_s", sweep_s, low=0, low_open=True, none_ok=True)
        self.router = router
        self.fixed = deployment
        self.sweep_s = sweep_s
        self.sweep: list[dict[str, Any]] = []

    def reset(self, ctx: PolicyContext) -> None:
        super().reset(ctx)
        if self.fixed:
            from oserve_rl.cluster import parse_deployment

            self.dep = parse_deployment(self.fixed, ctx.cluster, ctx.model, engine=ctx.engine)
        else:
            self.dep, self.sweep = sweep_homogeneous(ctx, self.router, sweep_s=self.sweep_s)

    def decide(self, state: ClusterState) -> Decision:
        if state.deployment is None:
            return Decision(self.dep, router=self._router_name())
        return Decision()

    def _router_name(self) -> str:
        return self.router

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "router": self.router, "deployment": self.dep.spec_string() if hasattr(self, "dep")
                else self.fixed}


class Llumnix(VLLMStatic):
    name = "llumnix"

    def __init__(self, deployment: str | None = None, sweep_s: float | None = None):
        super().__init__("least_work", deployment, sweep_s)

    def _router_name(self) -> str:
        return "llumnix"
