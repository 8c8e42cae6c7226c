#!/usr/bin/env python
"""Reproduce the shape of OServe's evaluation (arXiv 2602.12151) in simulation.

Parts (all on the simulator and performance model of this repository):

  load    per main scenario, the load: the analytic capacity of the best
          homogeneous deployment (load-scale LP under the TPOT SLO) in the
          episode's busiest minute, then the p99 E2E of the best of three
          homogeneous deployments on the episode at fractions of it; the
          episode runs at the first fraction where p99 has climbed 25 % above
          its value at the lightest one (the "knee"). Part of ``main``.
  main    h100x32 x {Llama-2-70B, OPT-66B} x {Azure conv, Azure code} at the
          knee: vllm_static, llumnix, threshold_autoscaler, vllm_reload,
          oserve, oserve_oracle (and the ablation variants, below; on the
          Llama-2-70B scenarios also oserve with other values of its own
          headroom / latency_aware / min_switch_interval_s).
  skew    spatial skew: stationary synthetic mixes (oserve_rl.workload.mixes)
          whose type-mix CV goes 0.1 .. 0.7; vllm_static vs oserve.
  shift   temporal shift: mixes alternating every few minutes, levels T1..T4;
          vllm_static vs oserve (and the ablation variants on the last level).
  sched   wall time of one OServe decision on 8/16/32/64 H100s (and brute
          force on 8/16), through the policy itself.

Ablation (the paper's steps over vLLM-reload), as script-local variants of
the registry's vllm_reload, since agents/ has no parameter for them:
  A0 homog+reload   OServe's loop restricted to homogeneous deployments,
                    least-work routing, cold-reload switching (= vLLM-reload)
  A1 +hetero        flow-guided heterogeneous plans, least-work routing, reload
  A2 +max-flow      the registry's vllm_reload (LP dispatch, partitioned by the p99 proxy; reload)
  A3 +ad hoc switch the registry's oserve (re-sharding switches)

Requests longer than the model's context (Llama-2-70B 4,096, OPT-66B 2,048
tokens, prompt + output) are dropped from the base traces before anything
runs (every policy would reject them alike; counted in the load table).
Decision wall time is measured and charged (``decision_delay_s=None``), so
runs differ slightly between machines; ``--decision-delay 0.3`` makes them
bit-reproducible.

    .venv/bin/python scripts/reproduce_oserve.py --quick                       # ~25 s
    .venv/bin/python scripts/reproduce_oserve.py --out reports/oserve --json reports/oserve/all.json \\
        --update-docs docs/oserve.md                                           # ~3.5 min, docs/oserve.md
    .venv/bin/python scripts/reproduce_oserve.py --from-json reports/oserve/results.json  # re-render only
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from oserve_rl.agents import make_policy
from oserve_rl.agents.oserve import VLLMReload
from oserve_rl.catalog import ClusterSpec, NodeGroup, get_cluster, get_model
from oserve_rl.cluster import enumerate_replica_configs
from oserve_rl.errors import OServeError
from oserve_rl.evaluation import EvalTable, evaluate
from oserve_rl.evaluation.plots import save_figure
from oserve_rl.policy import ControlLoop, Scenario, counts_per_minute
from oserve_rl.policy.forecasting import bundled_lstm_dir, load_forecaster
from oserve_rl.sched import (
    ThroughputTable,
    TypeProfile,
    flow_guided_search,
    homogeneous_candidates,
    profiles_from_trace,
)
from oserve_rl.sim import ClusterSimulator
from oserve_rl.workload import RequestTyper, Trace, load_trace
from oserve_rl.workload.mixes import (
    SHIFT_LEVELS,
    decode_order,
    mix_cv,
    mix_trace,
    shares_with_cv,
    shift_segments,
    shift_shares,
)

CLUSTER = "h100x32"
MODELS = ("llama-2-70b", "opt-66b")
TRACES = ("azure-conv", "azure-code")
SWEEP_MODEL, SWEEP_TRACE = "llama-2-70b", "azure-conv"
KNEE_RISE = 1.25  # p99 this much above its light-load value marks the knee
MARK_BEGIN, MARK_END = "<!-- reproduce_oserve:begin -->", "<!-- reproduce_oserve:end -->"

# The paper's figures (../shared/research/oserve.md), for the plots and the comparison.
PAPER = {"vs_static_avg": 1.5, "vs_static_max": 2.0, "vs_reload_avg": 1.3, "vs_reload_max": 1.5,
         "skew": [(0.112, 1.14), (0.688, 2.66)], "shift": [(1, 1.23), (4, 1.98)],
         "ablation": {"A1": 0.34, "A2": 0.64, "A3_step": 0.12}, "sched_16": {"flow_guided_s": 12.0, "brute_force_s": 50.0}}


@dataclass(frozen=True)
class Sizes:
    main: tuple[tuple[str, str], ...]
    main_s: float
    knee_s: float
    knee_loads: tuple[float, ...]
    skew_cvs: tuple[float, ...]
    skew_s: float
    shift_levels: tuple[int, ...]
    shift_s: float
    segment_s: float
    sched_gpus: tuple[int, ...]
    brute_force_gpus: tuple[int, ...]
    sched_decisions: int
    oracle: bool = True
    ablation_main: tuple[tuple[str, str], ...] = field(default=())
    main_start_s: float = 0.0  # where the main episodes start on the trace (the typer is fitted on its first 600 s)
    sensitivity_main: tuple[tuple[str, str], ...] = field(default=())


# Sized for ~25 min on 2 shared cores: vllm_static's hindsight sweep (11 homogeneous deployments simulated on
# every episode) is most of the cost, so episodes are 6-12 minutes rather than the paper's 50-800.
FULL = Sizes(main=tuple(itertools.product(MODELS, TRACES)), main_s=720.0, knee_s=720.0,
             knee_loads=(0.4, 0.6, 0.8, 0.95), skew_cvs=(0.1, 0.25, 0.4, 0.55, 0.7), skew_s=360.0,
             shift_levels=(1, 2, 3, 4), shift_s=720.0, segment_s=240.0, sched_gpus=(8, 16, 32, 64),
             brute_force_gpus=(8, 16), sched_decisions=3,
             ablation_main=(("llama-2-70b", "azure-conv"), ("llama-2-70b", "azure-code")),
             sensitivity_main=(("llama-2-70b", "azure-conv"), ("llama-2-70b", "azure-code")))
QUICK = Sizes(main=(("llama-2-70b", "azure-conv"),), main_s=480.0, knee_s=480.0, knee_loads=(0.4, 0.7, 0.95),
              skew_cvs=(0.1, 0.7), skew_s=240.0, shift_levels=(1, 4), shift_s=360.0, segment_s=180.0,
              sched_gpus=(8, 16, 32), brute_force_gpus=(8,), sched_decisions=2, oracle=False,
              ablation_main=(("llama-2-70b", "azure-conv"),))


# --------------------------------------------------------------------------- ablation variants


class HomogeneousReload(VLLMReload):
    """A0, the paper's vLLM-reload: OServe's loop over homogeneous deployments only, least-work routing, reload."""

    name = "abl_homog_reload"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**{"dispatch": "balanced", **kw})  # its plans are ranked as least-work routing runs them

    def search(self, lam: np.ndarray, start: Any) -> Any:
        best = homogeneous_candidates(self.ctx.model, self.ctx.cluster, np.maximum(lam, 1e-9), self.table)[0]
        return SimpleNamespace(deployment=best.deployment, objective=best.objective)

    def weights(self, dep: Any, lam: np.ndarray, *args: Any, **kw: Any) -> None:
        return None  # no LP weights: the loop installs the load-based least-work router


class HeteroReload(VLLMReload):
    """A1: OServe's heterogeneous plans with least-work routing instead of the LP's dispatch, reload switching."""

    name = "abl_hetero_reload"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**{"dispatch": "balanced", **kw})

    def weights(self, dep: Any, lam: np.ndarray, *args: Any, **kw: Any) -> None:
        return None


ABLATION = (("A0 homog+reload", HomogeneousReload), ("A1 +hetero", HeteroReload))
ABLATION_REGISTRY = {"A2 +max-flow": "vllm_reload", "A3 +ad hoc switch": "oserve"}
# OServe with other values of its own parameters (agents/oserve.py): how much of the result is these choices.
SENSITIVITY = {"oserve headroom=1.5": {"headroom": 1.5}, "oserve latency_aware=False": {"latency_aware": False},
               "oserve min_switch_interval=300s": {"min_switch_interval_s": 300.0},
               "oserve dispatch=balanced": {"dispatch": "balanced"}, "oserve plan_load=peak": {"plan_load": "peak"},
               "oserve spill=0": {"spill": 0.0}, "oserve dispatch_load=plan": {"dispatch_load": "plan"}}


# --------------------------------------------------------------------------- helpers


def fitting_trace(name: str, model: str) -> tuple[Trace, int]:
    """``name`` without the requests longer than ``model``'s context (prompt + output); and how many were dropped."""
    tr = load_trace(name)
    ctx = get_model(model).max_context
    kept = dataclasses.replace(tr.fitting(ctx), name=f"{name}<={ctx}")
    return kept, len(tr) - len(kept)


def scenario(trace: Trace, model: str, rate_scale: float = 1.0, duration_s: float | None = None,
             cluster: Any = CLUSTER, start_s: float = 0.0) -> Scenario:
    return Scenario(cluster=cluster, model=model, trace=trace, rate_scale=rate_scale, duration_s=duration_s,
                    start_s=start_s, max_model_len=get_model(model).max_context)


def table_for(model: str, cluster: Any, profiles: list[TypeProfile], engine: Any, tpot_s: float | None):
    return ThroughputTable(model, enumerate_replica_configs(model, cluster, engine), profiles, engine, tpot_bound_s=tpot_s)


def capacity(sc: Scenario, seed: int) -> dict[str, Any]:
    """What the best homogeneous deployment can take, as a multiple of the episode's own rate (``sc`` at scale 1).

    ``mean_scale``: load scale of the episode's mean per-type rates; ``peak_scale``: of its busiest minute
    (the smallest per-minute scale). Azure code comes in bursts (0 to 630 requests a minute), so a load
    set from the mean overloads its peaks; loads are set from ``peak_scale``. Also: the homogeneous
    candidates (best for the mean first), the mean rps and what heterogeneity adds (``analytic``).
    """
    data = sc.build(seed)
    J = data.num_types
    lam = np.bincount(data.types, minlength=J) / data.duration_s
    profiles = [TypeProfile(j, max(1.0, a), max(1.0, b)) for j, (a, b) in enumerate(data.type_lengths)]
    table = table_for(data.model, data.cluster, profiles, data.engine, sc.slo_tpot_s)
    cands = homogeneous_candidates(data.model, data.cluster, lam, table)
    per_min = counts_per_minute(data.trace.arrival_s, data.types, J, 0.0, data.duration_s) / 60.0
    busy = [m for m in per_min if m.sum() > 0] or [lam]
    peaks = [homogeneous_candidates(data.model, data.cluster, m, table)[0].objective for m in busy]
    return {"mean_scale": float(cands[0].objective), "peak_scale": float(min(peaks)),
            "peak_to_mean": float(cands[0].objective / min(peaks)), "candidates": cands, "rps": float(lam.sum()),
            "analytic": analytic(data.model, data.cluster, lam, table)}


def analytic(model: str, cluster: Any, lam: np.ndarray, table: ThroughputTable) -> dict[str, Any]:
    """Best homogeneous vs flow-guided (heterogeneous) deployment by load scale: the capacity heterogeneity adds."""
    homog = homogeneous_candidates(model, cluster, lam, table)[0]
    fg = flow_guided_search(model, cluster, lam, table, start=homog.deployment)
    return {"homogeneous": homog.deployment.spec_string(), "homogeneous_alpha": float(homog.objective),
            "heterogeneous": fg.deployment.spec_string(), "heterogeneous_alpha": float(fg.objective),
            "capacity_gain": float(fg.objective / homog.objective)}


def p99_of(summary: dict[str, Any]) -> float:
    v = summary["e2e_s"]["p99"]
    return float(v) if v is not None else math.inf


def find_knee(trace: Trace, model: str, sizes: Sizes, seed: int, bar: Any) -> dict[str, Any]:
    """p99 of the best of a few homogeneous deployments at fractions of the busiest minute's capacity, on the
    whole episode; the knee is the first fraction where it has climbed ``KNEE_RISE`` x above the lightest one."""
    c = capacity(scenario(trace, model, 1.0, sizes.main_s, start_s=sizes.main_start_s), seed)
    cap, cands, rps1 = c["peak_scale"], c["candidates"], c["rps"]
    # The analytically best two, and the widest (fewest replicas: the lowest latency at light load).
    picks = list(dict.fromkeys([c.deployment for c in cands[:2]] +
                               [min(cands, key=lambda c: len(c.deployment)).deployment]))
    rows = []
    for load in sizes.knee_loads:
        rs = load * cap
        data = scenario(trace, model, rs, sizes.knee_s, start_s=sizes.main_start_s).build(seed)
        best, best_dep = math.inf, None
        for dep in picks:
            s = ClusterSimulator(dep, data.trace, router="least_work", engine=data.engine, progress=False,
                                 slo_ttft_s=data.scenario.slo_ttft_s, slo_tpot_s=data.scenario.slo_tpot_s).run().summary
            if p99_of(s) < best:
                best, best_dep = p99_of(s), dep.spec_string()
            bar.update(1)
        rows.append({"load": load, "rate_scale": rs, "rps": rs * rps1, "p99_e2e_s": best, "deployment": best_dep})
    base = rows[0]["p99_e2e_s"]
    knee = next((r for r in rows[1:] if r["p99_e2e_s"] >= KNEE_RISE * base), rows[-1])
    return {"capacity_scale": cap, "mean_capacity_scale": c["mean_scale"], "peak_to_mean": c["peak_to_mean"],
            "rps_at_scale_1": rps1, "grid": rows, "knee_load": knee["load"],
            "rate_scale": knee["rate_scale"], "rps": knee["rps"], "climbed": knee["p99_e2e_s"] >= KNEE_RISE * base,
            "candidates": [d.spec_string() for d in picks], "analytic": c["analytic"]}


def deployments_of(res: Any) -> list[str]:
    return list(dict.fromkeys(spec for _, spec in res.sim.timeline))


def policy_rows(table: EvalTable) -> dict[str, dict[str, Any]]:
    out = {}
    for label, f in table.figures.items():
        res = table.results[label][0]
        out[label] = {"p50_e2e_s": f["e2e_s"]["p50"], "p99_e2e_s": f["e2e_s"]["p99"], "p99_ttft_s": f["ttft_s"]["p99"],
                      "throughput_rps": f["throughput_rps"], "slo_attainment": f["slo_attainment"],
                      "completed": f["completed"], "rejected": f["rejected"], "switches": f["switches"],
                      "switch_downtime_s": f["switch_downtime_s"], "decision_s_mean": f["decision_s_mean"],
                      "deployments": deployments_of(res)}
    return out


def gain(rows: dict[str, dict[str, Any]], base: str, new: str = "oserve") -> float | None:
    a, b = rows.get(base, {}).get("p99_e2e_s"), rows.get(new, {}).get("p99_e2e_s")
    return float(a / b) if a and b else None


@dataclass
class Ctx:
    args: argparse.Namespace
    sizes: Sizes
    seeds: list[int]
    forecaster: Any
    out: Path

    def eval(self, sc: Scenario, policies: list[Any], name: str) -> EvalTable:
        table = evaluate(sc, policies, self.seeds, forecaster=self.forecaster, decision_delay_s=self.args.decision_delay,
                         progress=not self.args.no_progress, jobs=self.args.jobs)
        table.write(self.out / name, plots=self.args.eval_plots)
        # Every decision of the OServe-family policies (target, switched, alpha, latency proxy, predicted gain):
        # what explains a switch that did not pay.
        log = {label: [{k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, type(None)))}
                       for d in res[0].decisions]
               for label, res in table.results.items() if any("alpha" in d for d in res[0].decisions)}
        (self.out / name / "decisions.json").write_text(json.dumps(log, indent=1) + "\n")
        return table


def main_policies(ctx: Ctx, ablation: bool, oracle: bool, extra: tuple[str, ...] = (), llumnix_too: bool = True) -> list[Any]:
    """Registry names and (label, factory) pairs; llumnix reuses vllm_static's pick (no second sweep)."""
    picks: list[Any] = []
    calls = itertools.count()

    def static() -> Any:
        p = make_policy("vllm_static")
        picks.append(p)
        return p

    def llumnix() -> Any:
        return make_policy("llumnix", deployment=picks[next(calls)].dep.spec_string())

    # In worker processes (--jobs) llumnix cannot read vllm_static's pick: it sweeps on its own, the same
    # sweep (least-work routing on the same episode), so the same deployment, at the cost of a second sweep.
    lx: Any = "llumnix" if ctx.args.jobs > 1 else ("llumnix", llumnix)
    pols: list[Any] = [("vllm_static", static), *([lx] if llumnix_too else []), *extra, "vllm_reload", "oserve"]
    if oracle:
        pols.append("oserve_oracle")
    if ablation:
        pols += [(label, cls) for label, cls in ABLATION]
    return pols


# --------------------------------------------------------------------------- parts


def part_main(ctx: Ctx, knees: dict[str, Any]) -> list[dict[str, Any]]:
    from tqdm import tqdm

    rows = []
    for model, trace_name in ctx.sizes.main:
        label = f"{model}/{trace_name}"
        print(f"\n== {label} on {CLUSTER}", flush=True)
        trace, dropped = fitting_trace(trace_name, model)
        with tqdm(total=len(ctx.sizes.knee_loads) * 3, desc=f"{'knee':>22}", unit="sim",
                  disable=ctx.args.no_progress) as bar:
            knee = find_knee(trace, model, ctx.sizes, ctx.seeds[0], bar)
        knee.update(dropped=dropped, requests=len(trace) + dropped)
        knees[label] = knee
        print(f"capacity x{knee['capacity_scale']:.2f} (busiest minute; mean x{knee['mean_capacity_scale']:.2f}); "
              f"knee at {knee['knee_load']:.0%} of it: rate_scale "
              f"{knee['rate_scale']:.2f} ({knee['rps']:.1f} rps); dropped {dropped} requests over the context",
              flush=True)
        ablation = (model, trace_name) in ctx.sizes.ablation_main and not ctx.args.no_ablation
        sc = scenario(trace, model, knee["rate_scale"], ctx.sizes.main_s, start_s=ctx.sizes.main_start_s)
        pols = main_policies(ctx, ablation, ctx.sizes.oracle, extra=("threshold_autoscaler",))
        sensitivity = (model, trace_name) in ctx.sizes.sensitivity_main
        if sensitivity:
            pols += [(label, lambda kw=kw: make_policy("oserve", **kw)) for label, kw in SENSITIVITY.items()]
        table = ctx.eval(sc, pols, f"main/{model}-{trace_name}")
        pr = policy_rows(table)
        rows.append({"scenario": label, "model": model, "trace": trace_name, "rate_scale": knee["rate_scale"],
                     "rps": knee["rps"], "duration_s": ctx.sizes.main_s, "policies": pr,
                     "gain_vs_static": gain(pr, "vllm_static"), "gain_vs_reload": gain(pr, "vllm_reload"),
                     "gain_vs_llumnix": gain(pr, "llumnix"), "gain_vs_autoscaler": gain(pr, "threshold_autoscaler"),
                     "ablation": ablation, "sensitivity": sensitivity})
    return rows


def sweep_setup(ctx: Ctx, knees: dict[str, Any]) -> dict[str, Any]:
    """Base trace, typer, per-type profiles and the load fraction the sweeps run at."""
    trace_name = ctx.args.sweep_trace
    base, dropped = fitting_trace(trace_name, SWEEP_MODEL)
    key = f"{SWEEP_MODEL}/{trace_name}"
    rho = ctx.args.rho if ctx.args.rho is not None else knees.get(key, {}).get("knee_load", 0.7)
    typer = RequestTyper.fit(base, k=4, seed=0)
    profiles = profiles_from_trace(base, typer.predict(base), 4, typer)
    model_ctx = get_model(SWEEP_MODEL).max_context
    sc = scenario(base, SWEEP_MODEL)
    from oserve_rl.perf import EngineConfig

    table = table_for(SWEEP_MODEL, CLUSTER, profiles, EngineConfig(max_model_len=model_ctx), sc.slo_tpot_s)
    per_gpu = {c.label(False): (table.row(c) / (c.tp * c.pp)).tolist() for c in table.configs}
    return {"base": base, "trace": trace_name, "typer": typer, "table": table, "rho": float(rho), "dropped": dropped,
            "profiles": [(round(p.input_tokens), round(p.output_tokens)) for p in profiles], "per_gpu_rps": per_gpu}


def mix_rate_rps(setup: dict[str, Any], mixes: list[np.ndarray]) -> float:
    """rho x the smallest per-mix capacity (rps) of the best homogeneous deployment: no mix is overloaded for it."""
    caps = [homogeneous_candidates(SWEEP_MODEL, CLUSTER, np.asarray(m), setup["table"])[0].objective for m in mixes]
    return setup["rho"] * min(caps)


def part_skew(ctx: Ctx, setup: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for cv in ctx.sizes.skew_cvs:
        shares = shares_with_cv(cv, 4, seed=ctx.seeds[0])
        rate = mix_rate_rps(setup, [shares])
        trace = mix_trace(setup["base"], setup["typer"], [(ctx.sizes.skew_s, rate, shares)], seed=ctx.seeds[0],
                          name=f"skew-cv{cv:g}")
        print(f"\n== skew CV {cv:g}: shares {np.round(shares, 3).tolist()} at {rate:.1f} rps", flush=True)
        table = ctx.eval(scenario(trace, SWEEP_MODEL, 1.0, ctx.sizes.skew_s), ["vllm_static", "oserve"],
                         f"skew/cv{cv:g}")
        pr = policy_rows(table)
        rows.append({"cv": cv, "cv_achieved": mix_cv(shares), "shares": shares.tolist(), "rps": rate,
                     "analytic": analytic(SWEEP_MODEL, CLUSTER, shares, setup["table"]),
                     "policies": pr, "gain_vs_static": gain(pr, "vllm_static")})
    return rows


def part_shift(ctx: Ctx, setup: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    last = max(ctx.sizes.shift_levels)
    for level in ctx.sizes.shift_levels:
        order = decode_order(setup["typer"])
        a, b = shift_shares(level, 4, order)
        rate = mix_rate_rps(setup, [a, b])
        segs = shift_segments(level, rate, ctx.sizes.shift_s, 4, ctx.sizes.segment_s, order)
        trace = mix_trace(setup["base"], setup["typer"], segs, seed=ctx.seeds[0], name=f"shift-T{level}")
        print(f"\n== shift T{level}: {np.round(a, 3).tolist()} <-> {np.round(b, 3).tolist()} every "
              f"{ctx.sizes.segment_s:g} s at {rate:.1f} rps", flush=True)
        ablation = level == last and not ctx.args.no_ablation
        pols = main_policies(ctx, ablation, oracle=False, llumnix_too=False)
        table = ctx.eval(scenario(trace, SWEEP_MODEL, 1.0, ctx.sizes.shift_s), pols, f"shift/T{level}")
        pr = policy_rows(table)
        rows.append({"level": f"T{level}", "cv": SHIFT_LEVELS[level], "shares_a": a.tolist(), "shares_b": b.tolist(),
                     "decode_order": order.tolist(), "analytic_a": analytic(SWEEP_MODEL, CLUSTER, a, setup["table"]),
                     "analytic_b": analytic(SWEEP_MODEL, CLUSTER, b, setup["table"]),
                     "tv_distance": float(0.5 * np.abs(a - b).sum()), "rps": rate, "policies": pr,
                     "gain_vs_static": gain(pr, "vllm_static"), "gain_vs_reload": gain(pr, "vllm_reload"),
                     "ablation": ablation})
    return rows


def h100_cluster(gpus: int) -> Any:
    """The catalog preset where one exists (h100x8/16/32), else nodes of 8 H100s like h100x32's."""
    name = f"h100x{gpus}"
    try:
        return get_cluster(name)
    except OServeError:
        if gpus % 8:
            raise OServeError(f"--sched-gpus: {gpus} is not a multiple of 8 (nodes of 8 H100s)") from None
        return ClusterSpec(name=name, nodes=(NodeGroup(gpu="h100-sxm", count=gpus // 8, gpus_per_node=8,
                                                       intra_node_gbps=400),), inter_node_gbps=200)


def time_policy(policy_name: str, sc: Scenario, seed: int, decisions: int, forecaster: Any) -> dict[str, Any]:
    """Wall time of ``reset`` and of each decision of ``policy_name`` in a live control loop on ``sc``."""
    data = sc.build(seed)
    loop = ControlLoop(data, forecaster=forecaster)
    policy = make_policy(policy_name)
    t0 = time.perf_counter()
    policy.reset(loop.context())
    reset_s = time.perf_counter() - t0
    times = []
    for _ in range(decisions + 1):
        state = loop.observe()
        t0 = time.perf_counter()
        dec = policy.decide(state)
        dt = time.perf_counter() - t0
        times.append(dt)
        loop.apply(dec, dt)
        loop.advance()
    return {"reset_s": reset_s, "first_s": times[0], "steady_s_mean": float(np.mean(times[1:])),
            "steady_s_max": float(np.max(times[1:])), "deployment": loop.sim.deployment.spec_string()}


def part_sched(ctx: Ctx, knees: dict[str, Any]) -> list[dict[str, Any]]:
    from tqdm import tqdm

    base, _ = fitting_trace(SWEEP_TRACE, SWEEP_MODEL)
    rho = knees.get(f"{SWEEP_MODEL}/{SWEEP_TRACE}", {}).get("knee_load", 0.7)
    duration = 60.0 * (ctx.sizes.sched_decisions + 2)
    rows = []
    for gpus in tqdm(ctx.sizes.sched_gpus, desc=f"{'decision time':>22}", unit="cluster",
                     disable=ctx.args.no_progress):
        cluster = h100_cluster(gpus)
        cap = capacity(scenario(base, SWEEP_MODEL, 1.0, duration, cluster), ctx.seeds[0])["peak_scale"]
        sc = scenario(base, SWEEP_MODEL, rho * cap, duration, cluster)
        row = {"gpus": gpus, "rate_scale": rho * cap,
               "configs": len(enumerate_replica_configs(SWEEP_MODEL, cluster)),
               "oserve": time_policy("oserve", sc, ctx.seeds[0], ctx.sizes.sched_decisions, ctx.forecaster)}
        if gpus in ctx.sizes.brute_force_gpus:
            row["brute_force"] = time_policy("brute_force", sc, ctx.seeds[0], ctx.sizes.sched_decisions, ctx.forecaster)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- tables, plots


def _f(v: Any, fmt: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def _md(headers: list[str], rows: list[list[Any]]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _short(deps: list[str], n: int = 3) -> str:
    return " -> ".join(deps[:n]) + (f" (+{len(deps) - n})" if len(deps) > n else "")


def ablation_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    sources = [(r["scenario"], r["policies"]) for r in results.get("main", []) if r.get("ablation")]
    sources += [(f"shift {r['level']}", r["policies"]) for r in results.get("shift", []) if r.get("ablation")]
    for name, pr in sources:
        p = {label: pr[label]["p99_e2e_s"] for label, _ in ABLATION}
        p.update({label: pr[reg]["p99_e2e_s"] for label, reg in ABLATION_REGISTRY.items()})
        base = p["A0 homog+reload"]
        out.append({"scenario": name, "p99": p,
                    "vs_A0": {k: (base / v - 1.0) if base and v else None for k, v in p.items()},
                    "A3_step": (p["A2 +max-flow"] / p["A3 +ad hoc switch"] - 1.0)
                    if p["A2 +max-flow"] and p["A3 +ad hoc switch"] else None,
                    "switches": {label: pr[label]["switches"] for label, _ in ABLATION} |
                    {label: pr[reg]["switches"] for label, reg in ABLATION_REGISTRY.items()}})
    return out


def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def markdown(results: dict[str, Any]) -> str:
    parts = []
    knees = results.get("knees", {})
    if knees:
        rows = []
        for label, k in knees.items():
            grid = ", ".join(f"{g['load']:.0%}: {g['p99_e2e_s']:.1f}" for g in k["grid"])
            a = k["analytic"]
            rows.append([label, f"{k['requests']} ({k['dropped']})",
                         f"{_f(k['capacity_scale'])} ({_f(k['mean_capacity_scale'])})", grid,
                         f"{k['knee_load']:.0%}" + ("" if k["climbed"] else " (no climb)"), _f(k["rate_scale"]),
                         _f(k["rps"], ".1f"), f"{a['homogeneous']} -> {a['heterogeneous']}: "
                         f"{100 * (a['capacity_gain'] - 1):+.1f} %"])
        parts.append("### Load: where vllm_static's p99 starts to climb\n\n" + _md(
            ["scenario", "requests (dropped > context)", "capacity, busiest minute (mean) x trace rate",
             "p99 E2E s at % of it", "knee", "rate scale", "mean rps",
             "capacity heterogeneity adds (analytic)"], rows))
    main = results.get("main", [])
    if main:
        names = ["vllm_static", "llumnix", "threshold_autoscaler", "vllm_reload", "oserve", "oserve_oracle"]
        rows = []
        for r in main:
            pr = r["policies"]
            rows.append([r["scenario"], _f(r["rps"], ".1f"), _f(pr["vllm_static"]["slo_attainment"], ".2f")] +
                        [_f(pr.get(n, {}).get("p99_e2e_s")) for n in names] +
                        [_f(r["gain_vs_static"]) + "x", _f(r["gain_vs_reload"]) + "x", _f(r["gain_vs_llumnix"]) + "x",
                         _f(r["gain_vs_autoscaler"]) + "x"])
        gs = [r["gain_vs_static"] for r in main]
        gr = [r["gain_vs_reload"] for r in main]
        rows.append(["**mean**", "", "", "", "", "", "", "", "", _f(_mean(gs)) + "x", _f(_mean(gr)) + "x",
                     _f(_mean([r["gain_vs_llumnix"] for r in main])) + "x",
                     _f(_mean([r["gain_vs_autoscaler"] for r in main])) + "x"])
        rows.append(["**max**", "", "", "", "", "", "", "", "", _f(max((g for g in gs if g), default=None)) + "x",
                     _f(max((g for g in gr if g), default=None)) + "x", "", ""])
        parts.append(f"### Main: p99 E2E latency (s) on {CLUSTER}\n\n" + _md(
            ["scenario", "rps", "static SLO attain"] + names +
            ["OServe vs static", "vs reload", "vs llumnix", "vs autoscaler"], rows))
        rows = []
        for r in main:
            for n, f in r["policies"].items():
                rows.append([r["scenario"], n, _f(f["p50_e2e_s"]), _f(f["p99_e2e_s"]), _f(f["p99_ttft_s"]),
                             _f(f["throughput_rps"], ".1f"), _f(f["slo_attainment"], ".3f"), _f(f["completed"], ".0f"),
                             _f(f["switches"], ".0f"), _f(f["decision_s_mean"], ".3f"), _short(f["deployments"])])
        parts.append("### Main: details\n\n" + _md(
            ["scenario", "policy", "p50 E2E s", "p99 E2E s", "p99 TTFT s", "thr rps", "SLO attain", "completed",
             "switches", "decision s", "deployment(s)"], rows))
    sweep = results.get("sweep")
    sweep_trace = (sweep or {}).get("trace", SWEEP_TRACE)  # results from before --sweep-trace: the default
    if sweep:
        prof = sweep["profiles"]
        best = np.max(np.array(list(sweep["per_gpu_rps"].values())), axis=0)
        rows = [[cfg] + [f"{v:.2f} ({v / b:.0%})" for v, b in zip(vals, best)]
                for cfg, vals in sweep["per_gpu_rps"].items()]
        parts.append(f"### Sweep types: requests/s per GPU under the {sweep['tpot_s']:g} s TPOT SLO (share of the best config)\n\n"
                     f"{SWEEP_MODEL}, types of {sweep_trace} (k-means, k = 4, seed 0), load "
                     f"{sweep['rho']:.0%} of the best homogeneous deployment's capacity in the sweeps.\n\n" +
                     _md(["config"] + [f"type {j}: {i}/{o} tok" for j, (i, o) in enumerate(prof)], rows))
    sens = [r for r in main if r.get("sensitivity")]
    if sens:
        labels = ["vllm_static", "oserve", *SENSITIVITY]
        rows = [[r["scenario"]] + [f"{_f(r['policies'][k]['p99_e2e_s'])} ({_f(r['policies'][k]['switches'], '.0f')})"
                                   for k in labels] for r in sens]
        parts.append("### OServe's own parameters: p99 E2E s (switches)\n\n" + _md(["scenario", *labels], rows))
    skew = results.get("skew", [])
    if skew:
        rows = [[_f(r["cv"]), "/".join(f"{x:.2f}" for x in r["shares"]), _f(r["rps"], ".1f"),
                 _short(r["policies"]["vllm_static"]["deployments"]), _f(r["policies"]["vllm_static"]["p99_e2e_s"]),
                 _short(r["policies"]["oserve"]["deployments"]), _f(r["policies"]["oserve"]["p99_e2e_s"]),
                 _f(r["gain_vs_static"]) + "x",
                 f"{r['analytic']['heterogeneous']}: {100 * (r['analytic']['capacity_gain'] - 1):+.1f} %"] for r in skew]
        parts.append(f"### Spatial skew ({SWEEP_MODEL}, {sweep_trace} lengths, {CLUSTER})\n\n" + _md(
            ["CV", "type shares", "rps", "vllm_static", "p99 s", "oserve", "p99 s", "gain",
             "best heterogeneous (analytic capacity vs homogeneous)"], rows))
    shift = results.get("shift", [])
    if shift:
        rows = [[r["level"], "/".join(f"{x:.2f}" for x in r["shares_a"]) + " <-> " +
                 "/".join(f"{x:.2f}" for x in r["shares_b"]), _f(r["tv_distance"]), _f(r["rps"], ".1f"),
                 _short(r["policies"]["vllm_static"]["deployments"]),
                 _f(r["policies"]["vllm_static"]["p99_e2e_s"]), _f(r["policies"]["vllm_reload"]["p99_e2e_s"]),
                 _f(r["policies"]["oserve"]["p99_e2e_s"]), _f(r["policies"]["oserve"]["switches"], ".0f"),
                 _short(r["policies"]["oserve"]["deployments"]), _f(r["gain_vs_static"]) + "x",
                 _f(r["gain_vs_reload"]) + "x",
                 f"{r['analytic_a']['heterogeneous']} / {r['analytic_b']['heterogeneous']}"] for r in shift]
        parts.append(f"### Temporal shift ({SWEEP_MODEL}, {sweep_trace} lengths, {CLUSTER})\n\n" + _md(
            ["level", "mix A <-> B", "TV dist", "rps", "vllm_static", "vllm_static p99", "vllm_reload p99", "oserve p99",
             "oserve switches", "oserve deployments", "gain vs static", "gain vs reload",
             "best deployment for A / B (analytic)"], rows))
    abl = results.get("ablation", [])
    if abl:
        labels = [label for label, _ in ABLATION] + list(ABLATION_REGISTRY)
        rows = []
        for r in abl:
            rows.append([r["scenario"]] + [f"{_f(r['p99'][k])} ({_f(r['switches'][k], '.0f')})" for k in labels] +
                        [(_f(100 * r["vs_A0"][k], "+.0f") + " %") if r["vs_A0"][k] is not None else "-"
                         for k in labels[1:]] + [_f(100 * r["A3_step"], "+.0f") + " %" if r["A3_step"] is not None else "-"])
        rows.append(["**mean**"] + [""] * len(labels) +
                    [_f(100 * _mean([r["vs_A0"][k] for r in abl]), "+.0f") + " %" for k in labels[1:]] +
                    [_f(100 * _mean([r["A3_step"] for r in abl]), "+.0f") + " %"])
        parts.append("### Ablation over vLLM-reload (A0): p99 E2E s (switches); speed-up - 1 vs A0\n\n" + _md(
            ["scenario"] + labels + [f"{k} vs A0" for k in labels[1:]] + ["A3 vs A2"], rows))
    sched = results.get("sched", [])
    if sched:
        rows = []
        for r in sched:
            o, bf = r["oserve"], r.get("brute_force")
            rows.append([str(r["gpus"]), str(r["configs"]), _f(o["reset_s"], ".3f"), _f(o["first_s"], ".3f"),
                         _f(o["steady_s_mean"], ".3f"), _f(o["steady_s_max"], ".3f"), o["deployment"],
                         _f(bf["steady_s_mean"], ".3f") if bf else "-"])
        parts.append(f"### Decision time ({SWEEP_MODEL}, {SWEEP_TRACE})\n\n" + _md(
            ["GPUs", "replica configs", "oserve reset s", "first decision s", "decision s mean", "decision s max",
             "deployment", "brute_force decision s"], rows))
    return "\n\n".join(parts) + "\n"


def plots(results: dict[str, Any], img: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    written = []
    skew = results.get("skew", [])
    if skew:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.plot([r["cv"] for r in skew], [r["gain_vs_static"] for r in skew], "o-", label="simulated (this repo)")
        ax.plot(*zip(*PAPER["skew"]), "s--", color="grey", label="paper (end points)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("CV of the type mix (std / mean of the shares)")
        ax.set_ylabel("p99 E2E: vllm_static / oserve")
        ax.set_title("Spatial skew")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(save_figure(plt, fig, img / "oserve_skew.png"))
    shift = results.get("shift", [])
    if shift:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        x = [int(r["level"][1:]) for r in shift]
        ax.plot(x, [r["gain_vs_static"] for r in shift], "o-", label="oserve vs vllm_static")
        ax.plot(x, [r["gain_vs_reload"] for r in shift], "^-", label="oserve vs vllm_reload")
        ax.plot(*zip(*PAPER["shift"]), "s--", color="grey", label="paper vs static (end points)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([1, 2, 3, 4], ["T1", "T2", "T3", "T4"])
        ax.set_xlabel("temporal shift level")
        ax.set_ylabel("p99 E2E speed-up of oserve")
        ax.set_title("Temporal shift")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(save_figure(plt, fig, img / "oserve_shift.png"))
    sched = results.get("sched", [])
    if sched:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        g = [r["gpus"] for r in sched]
        ax.plot(g, [r["oserve"]["steady_s_mean"] for r in sched], "o-", label="oserve decision (mean)")
        ax.plot(g, [r["oserve"]["first_s"] for r in sched], "x:", label="oserve first decision")
        bf = [(r["gpus"], r["brute_force"]["steady_s_mean"]) for r in sched if "brute_force" in r]
        if bf:
            ax.plot(*zip(*bf), "^-", label="brute force decision (mean)")
        ax.plot([16, 16], [PAPER["sched_16"]["flow_guided_s"], PAPER["sched_16"]["brute_force_s"]], "s", color="grey",
                label="paper, 16 GPUs: 12 s / 50 s")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(g, [str(v) for v in g])
        ax.set_xlabel("GPUs (H100)")
        ax.set_ylabel("wall seconds")
        ax.set_title("Scheduler time vs cluster size")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        written.append(save_figure(plt, fig, img / "oserve_sched.png"))
    main = results.get("main", [])
    if main:
        names = [n for n in ("vllm_static", "llumnix", "threshold_autoscaler", "vllm_reload", "oserve", "oserve_oracle")
                 if any(n in r["policies"] for r in main)]
        fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(main)), 4))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar(np.arange(len(main)) + i * width, [r["policies"].get(n, {}).get("p99_e2e_s") or 0 for r in main],
                   width, label=n)
        ax.set_xticks(np.arange(len(main)) + 0.4 - width / 2, [r["scenario"] for r in main], fontsize=8)
        ax.set_yscale("log")  # threshold_autoscaler's overloaded start is 100x the rest
        ax.set_ylabel("p99 E2E (s), log scale")
        ax.set_title(f"{CLUSTER}, load at the knee")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, ncol=2)
        written.append(save_figure(plt, fig, img / "oserve_main.png"))
    return written


def update_docs(path: Path, block: str) -> None:
    text = path.read_text()
    if MARK_BEGIN not in text or MARK_END not in text:
        raise OServeError(f"--update-docs {path}: markers {MARK_BEGIN} / {MARK_END} not found")
    head, rest = text.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(head + MARK_BEGIN + "\n" + block + MARK_END + tail)


# --------------------------------------------------------------------------- main


PARTS = ("main", "skew", "shift", "sched")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("reports/oserve"), help="output folder (default reports/oserve)")
    p.add_argument("--quick", action="store_true", help="a small version (one scenario, 2-point sweeps): a few minutes")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--json", help="also write every figure as JSON here ('-' for stdout)")
    p.add_argument("--img-dir", type=Path, help="where the oserve_*.png plots go (default docs/img; --quick: OUT/img)")
    p.add_argument("--update-docs", type=Path, help="replace the generated block of this markdown file (docs/oserve.md)")
    p.add_argument("--predictor", help="shared forecast (default: the bundled LSTM if present, else ewma)")
    p.add_argument("--decision-delay", type=float, default=None,
                   help="charge this fixed delay per decision instead of the measured wall time (reproducible runs)")
    p.add_argument("--rho", type=float, default=None,
                   help="load fraction for the sweeps (default: the Llama-2-70B knee on the sweep trace, else 0.7)")
    p.add_argument("--sweep-trace", default=SWEEP_TRACE, choices=TRACES,
                   help=f"whose request lengths and types the skew and shift sweeps use (default {SWEEP_TRACE})")
    p.add_argument("--main-s", type=float, default=None,
                   help=f"episode length of the main scenarios and of their knee search (default {FULL.main_s:g} s; "
                        "3600 runs the whole hour-long Azure traces)")
    p.add_argument("--main-start", type=float, default=None,
                   help="where the main episodes start on the trace, s (default 0: the typing window, the trace's "
                        "first 600 s, overlaps them; 600 starts them after it)")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablation variants")
    p.add_argument("--eval-plots", action="store_true", help="also write evaluate.py's plots per scenario")
    p.add_argument("--jobs", "-j", type=int, default=1,
                   help="worker processes for each evaluation's (policy, seed) episodes (default 1; "
                        "with measured decision times, at most the free cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--from-json", type=Path,
                   help="simulate nothing: re-render the tables, plots and --update-docs block from a results.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.time()
    try:
        parts = [x.strip() for x in args.parts.split(",") if x.strip()]
        bad = [x for x in parts if x not in PARTS]
        if bad:
            raise OServeError(f"--parts: unknown {bad}; valid: {', '.join(PARTS)}")
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise OServeError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
        if not seeds:
            raise OServeError("--seeds: give at least one seed")
        if args.rho is not None and not 0 < args.rho <= 1.5:
            raise OServeError(f"--rho must be in (0, 1.5], got {args.rho}")
        if args.update_docs and (not args.update_docs.is_file() or MARK_BEGIN not in args.update_docs.read_text()):
            raise OServeError(f"--update-docs {args.update_docs}: no such file, or it lacks the marker {MARK_BEGIN}")
        sizes = QUICK if args.quick else FULL
        if args.main_s is not None:
            if not args.main_s >= 120:
                raise OServeError(f"--main-s must be at least 120 s (two decisions), got {args.main_s:g}")
            sizes = dataclasses.replace(sizes, main_s=float(args.main_s), knee_s=float(args.main_s))
        if args.main_start is not None:
            if not args.main_start >= 0:
                raise OServeError(f"--main-start must be >= 0 s, got {args.main_start:g}")
            sizes = dataclasses.replace(sizes, main_start_s=float(args.main_start))
        predictor = args.predictor or ("lstm" if bundled_lstm_dir().exists() else "ewma")
        ctx = Ctx(args, sizes, seeds, load_forecaster(predictor), args.out)
        args.out.mkdir(parents=True, exist_ok=True)
        img = args.img_dir or (args.out / "img" if args.quick else Path("docs/img"))
        if args.from_json:
            return render(args, img)
        results: dict[str, Any] = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                                   "quick": args.quick, "seeds": seeds, "predictor": predictor,
                                   "decision_delay_s": args.decision_delay, "cluster": CLUSTER, "knees": {},
                                   "wall_s": {}}
        knees = results["knees"]
        if "main" in parts:
            t0 = time.time()
            results["main"] = part_main(ctx, knees)
            results["wall_s"]["main"] = time.time() - t0
        if "skew" in parts or "shift" in parts:
            setup = sweep_setup(ctx, knees)
            results["sweep"] = {"trace": setup["trace"], "rho": setup["rho"], "profiles": setup["profiles"], "dropped": setup["dropped"],
                                "per_gpu_rps": setup["per_gpu_rps"], "tpot_s": scenario(setup["base"], SWEEP_MODEL).slo_tpot_s}
            print(f"\nsweeps: {SWEEP_MODEL} on {CLUSTER}, {setup['trace']} lengths, types (in/out tokens) "
                  f"{setup['profiles']}, load {setup['rho']:.0%} of the best homogeneous deployment's capacity")
            for part, fn in (("skew", part_skew), ("shift", part_shift)):
                if part in parts:
                    t0 = time.time()
                    results[part] = fn(ctx, setup)
                    results["wall_s"][part] = time.time() - t0
        results["ablation"] = ablation_rows(results)
        if "sched" in parts:
            t0 = time.time()
            results["sched"] = part_sched(ctx, knees)
            results["wall_s"]["sched"] = time.time() - t0
        results["wall_s"]["total"] = time.time() - t_start
        results["cores"] = len(os.sched_getaffinity(0))
        blob = json.dumps(results, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        (args.out / "results.json").write_text(blob + "\n")
        if args.json:
            if args.json == "-":
                print(blob)
            else:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(blob + "\n")
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return render(args, img, json.loads(blob))


def render(args: argparse.Namespace, img: Path, results: dict[str, Any] | None = None) -> int:
    """report.md, the plots and the --update-docs block, from ``results`` (or ``args.from_json``)."""
    try:
        if results is None:
            try:
                results = json.loads(args.from_json.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise OServeError(f"--from-json {args.from_json}: not a results.json of this script ({e})") from None
            if "wall_s" not in results or "command" not in results:
                raise OServeError(f"--from-json {args.from_json}: not a results.json of this script (no command/wall_s)")
        md = markdown(results)
        delay = results.get("decision_delay_s")
        footer = (f"\n`{results['command']}`: {results['wall_s']['total'] / 60:.1f} min wall on "
                  f"{results.get('cores', '?')} shared cores; predictor {results['predictor']}; decision delay "
                  f"{'measured' if delay is None else f'{delay:g} s'}; seeds {results['seeds']}."
                  + (f" Rendered from {args.from_json}." if args.from_json else "") + "\n")
        (args.out / "report.md").write_text(md + footer)
        written = plots(results, img)
        if args.update_docs:
            update_docs(args.update_docs, md + footer)
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n" + md + footer)
    print(f"wrote {args.out}/report.md" + "".join(f", {p}" for p in written)
          + (f"; updated {args.update_docs}" if args.update_docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
