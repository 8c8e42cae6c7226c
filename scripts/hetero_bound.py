#!/usr/bin/env python
"""Upper bound on what a *fixed* heterogeneous deployment + fixed dispatch buys over vllm_static (p99 E2E).

What it measures. On the four main scenarios of docs/oserve.md (h100x32, 720 s, seed 0, the load table's
rate scales), with the scenarios built exactly as ``scripts/reproduce_oserve.py`` builds them:

  1. the best homogeneous deployment with least-work routing, by simulation over all of
     ``enumerate_deployments(homogeneous=True)`` (what ``vllm_static`` picks with hindsight;
     same ranking: most completed first, then p99);
  2. whole-episode fixed candidates taken from OServe's own machinery (``agents/oserve.py``): for rates
     ``lam`` = the episode's true mean per-type rates ("mean") and the busiest minute's rates ("peak":
     the minute where the best homogeneous deployment's load scale is smallest, the docs' definition),
     every deployment of ``enumerate_deployments(homogeneous=False, limit=None)`` whose load scale
     ``OServe.alpha(dep, lam)`` is >= ``--min-alpha`` (1.2, OServe's headroom) is scored by
     OServe's p99 proxy under its best dispatch (``OServe.routing``: the LP's balanced dispatch and every
     partition of types and replicas into two sides). The ``--top`` best by proxy are simulated with
     OServe's dispatch for them (``OServe.weights``, spill included); for the ``--deep`` best also the
     next ``--alts`` partition candidates by proxy and the balanced dispatch, so the simulator, not only
     the proxy, picks the dispatch.

  Each candidate runs through ``run_policy`` as a fixed policy (first decision: the deployment and its
  [J, K] weights, then keep), ``decision_delay_s=0``: bit-reproducible.

Why. OServe's gain over vllm_static on these scenarios (docs/oserve.md: 0.96x / 1.24x / 1.00x / 1.42x)
is well short of the paper's 1.5x. Hindsight-best fixed heterogeneous plans bound what OServe's
deployment + dispatch choice could gain here without switching (switching is not what helps on these
stationary-ish 12-minute episodes: OServe makes no switch in any of them). The script also reports the
Spearman rank correlation between the proxy's p99 and the simulated p99 over the simulated candidates:
whether the proxy, which OServe uses to choose, ranks them the way the simulator does.

Proxy cost: scoring every feasible deployment's partitions takes ~0.1-0.2 s each, and thousands pass the
load-scale filter, so the full proxy is computed for a prefilter (the ``--prefilter`` best by the balanced
dispatch's proxy plus the ``--prefilter`` best by load scale); ``--check`` random deployments outside the
prefilter are also scored fully, and the output says how many of them would have entered the top ``--top``
(prefilter misses).

Also for the validation windows of configs/train/azure_code.yaml (``--scenarios azure_code.yaml@2.5,
azure_code.yaml@3.5``) and azure_code_busy.yaml (``azure_code_busy.yaml@5.5,azure_code_busy.yaml@6.5``): the
most any fixed plan gives an agent trained with that config (docs/training.md).

    .venv/bin/python scripts/hetero_bound.py --json reports/hetero_bound.json | tee reports/hetero_bound.txt
    .venv/bin/python scripts/hetero_bound.py --scenarios llama-2-70b/azure-code --top 10 --deep 3   # a few minutes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_oserve", ROOT / "scripts" / "reproduce_oserve.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_oserve"] = mod
    spec.loader.exec_module(mod)
    return mod


R = _load_reproduce()

from oserve_rl.agents.oserve import OServe, Routing  # noqa: E402
from oserve_rl.cluster import Deployment, enumerate_deployments  # noqa: E402
from oserve_rl.policy import ControlLoop, Decision, Policy, Scenario, counts_per_minute  # noqa: E402
from oserve_rl.policy.loop import run_policy  # noqa: E402

SCENARIOS = {  # rate scales: the load table of docs/oserve.md
    "llama-2-70b/azure-conv": 7.84,
    "llama-2-70b/azure-code": 5.35,
    "opt-66b/azure-conv": 5.69,
    "opt-66b/azure-code": 13.71,
}
DURATION_S, SEED = 720.0, 0
# Not in the default set: the validation windows of configs/train/azure_code.yaml and azure_code_busy.yaml (what
# an agent trained with them is scored on; evaluate.py builds them the same way: whole trace, h100x16, the last
# 20 minutes).
VALIDATION = {**{f"azure_code.yaml@{x:g}": x for x in (2.5, 3.5)},
              **{f"azure_code_busy.yaml@{x:g}": x for x in (5.5, 6.5)}}


# --------------------------------------------------------------------------- fixed policies


class Fixed(Policy):
    """One deployment and one dispatch for the whole episode."""

    name = "fixed"

    def __init__(self, dep: Deployment, weights: np.ndarray | None = None, router: str | None = None):
        self.dep, self.w, self.router = dep, weights, router

    def decide(self, state):
        if state.deployment is None:
            return Decision(deployment=self.dep, weights=self.w, router=self.router)
        return Decision()


def simulate(data, dep: Deployment, weights: np.ndarray | None = None, router: str | None = None) -> dict[str, Any]:
    res = run_policy(Fixed(dep, weights, router), data, interval_s=60.0, forecaster=None, decision_delay_s=0.0)
    s = res.summary
    p50 = s["e2e_s"]["p50"]
    return {"sim_p99_s": R.p99_of(s), "sim_p50_s": float(p50) if p50 is not None else math.inf,
            "completed": int(s["completed"]), "rejected": int(s["rejected"])}


# --------------------------------------------------------------------------- OServe's candidate loop


def all_routings(pol: OServe, dep: Deployment, lam: np.ndarray, need: float) -> list[Routing]:
    """Every dispatch ``OServe.routing`` chooses from for ``dep``, sorted by the p99 proxy."""
    return sorted(pol.routings(dep, lam, need), key=lambda r: r.p99_s)


# --------------------------------------------------------------------------- docs


def docs_rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(scenario, policy) -> p99 and deployment(s) from the 'Main: details' table of docs/oserve.md."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.is_file():
        return out
    text = path.read_text()
    block = text.split("### Main: details", 1)[-1].split("###", 1)[0] if "### Main: details" in text else ""
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 11 and cells[0] in SCENARIOS and re.fullmatch(r"[\d.]+", cells[3] or ""):
            out[(cells[0], cells[1])] = {"p99_e2e_s": float(cells[3]), "deployment": cells[-1]}
    return out


# --------------------------------------------------------------------------- one scenario


def rate_sets(pol: OServe, data) -> dict[str, np.ndarray]:
    J = data.num_types
    mean = np.bincount(data.types, minlength=J).astype(float) / data.duration_s
    per_min = counts_per_minute(data.trace.arrival_s, data.types, J, 0.0, data.duration_s) / 60.0
    busy = [m for m in per_min if m.sum() > 0]
    caps = [max(pol.alpha(d, m) for d in pol.homogeneous) for m in busy]
    return {"mean": mean, "peak": busy[int(np.argmin(caps))]}


def run_scenario(label: str, args, bar_factory) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if label in VALIDATION:
        model = "llama-2-70b"
        data = Scenario(cluster="h100x16", model=model, trace="azure-code", rate_scale=VALIDATION[label],
                        start_s=2220.0, duration_s=1200.0).build(SEED)
    else:
        model, trace_name = label.split("/")
        trace, _ = R.fitting_trace(trace_name, model)
        data = R.scenario(trace, model, SCENARIOS[label], DURATION_S).build(SEED)
    loop = ControlLoop(data, interval_s=60.0, decision_delay_s=0.0)
    pol = OServe()
    pol.reset(loop.context())
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"scenario": label, "rate_scale": {**SCENARIOS, **VALIDATION}[label],
                            "requests": len(data.trace)}

    # 1. homogeneous sweep, least-work routing (vllm_static)
    homog = enumerate_deployments(model, data.cluster, homogeneous=True, engine=data.engine)
    with bar_factory(len(homog), f"{label} homog") as bar:
        for dep in homog:
            rows.append({"scenario": label, "kind": "homog_least_work", "rates": None, "deployment": dep.spec_string(),
                         "homogeneous": True, "dispatch": "least_work", "proxy_p99_s": None, "alpha": None,
                         **simulate(data, dep, router="least_work")})
            bar.update(1)

    # 2. heterogeneous (and homogeneous) deployments with OServe's dispatches
    allde = enumerate_deployments(model, data.cluster, homogeneous=False, limit=None, engine=data.engine)
    info["deployments"] = len(allde)
    rng = np.random.default_rng(0)
    for rname, lam in rate_sets(pol, data).items():
        t0 = time.time()
        alphas = np.array([pol.alpha(d, lam) for d in allde])
        need = min(args.min_alpha, float(alphas.max()))
        feas = [i for i in range(len(allde)) if alphas[i] >= need * (1 - 1e-6)]
        bal = OServe(dispatch="balanced")
        bal.reset(pol.ctx)
        bal_p99 = {i: bal.latency_s(allde[i], lam, need) for i in feas}
        pre = set(sorted(feas, key=lambda i: bal_p99[i])[: args.prefilter])
        pre |= set(sorted(feas, key=lambda i: -alphas[i])[: args.prefilter])
        rest = [i for i in feas if i not in pre]
        check = [int(i) for i in rng.choice(rest, size=min(args.check, len(rest)), replace=False)] if rest else []
        proxy = {}
        with bar_factory(len(pre) + len(check), f"{label} proxy@{rname}") as bar:
            for i in sorted(pre) + check:
                r = pol.routing(allde[i], lam, need)
                proxy[i] = (r.p99_s if r is not None else math.inf, r)
                bar.update(1)
        ranked = sorted(pre, key=lambda i: (proxy[i][0], i))
        top = [i for i in ranked[: args.top] if math.isfinite(proxy[i][0])]
        cut = proxy[top[-1]][0] if top else math.inf
        misses = [i for i in check if proxy[i][0] < cut]
        info[f"rates_{rname}"] = {
            "lam_rps": lam.round(4).tolist(), "need_alpha": need, "feasible": len(feas), "prefilter": len(pre),
            "checked_outside": len(check), "check_misses": len(misses),
            "check_miss_examples": [(allde[i].spec_string(), proxy[i][0]) for i in misses[:3]],
            "proxy_s": time.time() - t0}
        # candidates to simulate: the proxy's pick for the top deployments; for the --deep best also more dispatches
        cands: list[tuple[int, Routing, str]] = []
        for rank, i in enumerate(top):
            pick = proxy[i][1]
            cands.append((i, pick, "proxy_pick"))
            if rank < args.deep:
                alts = [r for r in all_routings(pol, allde[i], lam, need) if r.label() != pick.label()]
                chosen = alts[: args.alts] + [r for r in alts[args.alts:] if r.side0 is None][:1]
                cands += [(i, r, "alt") for r in chosen]
        with bar_factory(len(cands), f"{label} sim@{rname}") as bar:
            for rank_key, (i, r, kind) in enumerate(cands):
                dep = allde[i]
                W = pol.weights(dep, lam, need=need, routing=None if kind == "proxy_pick" else r)  # spill and all
                rows.append({"scenario": label, "kind": kind, "rates": rname, "deployment": dep.spec_string(),
                             "homogeneous": len(set(dep.configs)) == 1, "dispatch": r.label(),
                             "proxy_p99_s": float(r.p99_s), "alpha": float(alphas[i]),
                             "dispatch_alpha": float(r.alpha), "balanced_proxy_p99_s": float(bal_p99[i]),
                             "proxy_rank": ranked.index(i), **simulate(data, dep, W)})
                bar.update(1)
    return rows, info


# --------------------------------------------------------------------------- report


def fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else ("inf" if isinstance(v, float) and math.isinf(v) else format(v, spec))


def spearmanr(a, b):
    """scipy's, nan (no warning) where one side is constant."""
    import warnings

    from scipy.stats import spearmanr as _sp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _sp(a, b)


def report(label: str, rows: list[dict[str, Any]], info: dict[str, Any], docs: dict) -> dict[str, Any]:
    hom = [r for r in rows if r["kind"] == "homog_least_work"]
    cand = [r for r in rows if r["kind"] != "homog_least_work"]
    key = lambda r: (-r["completed"], r["sim_p99_s"])  # noqa: E731  (vllm_static's order)
    bh = min(hom, key=key)
    best = min(rows, key=key)
    best_c = min(cand, key=key) if cand else None
    het = [r for r in cand if not r["homogeneous"]]
    best_h = min(het, key=key) if het else None
    print(f"\n== {label}  (rate scale {info['rate_scale']}, {info['requests']} requests, "
          f"{info['deployments']} deployments enumerated)")
    st, os_ = docs.get((label, "vllm_static")), docs.get((label, "oserve"))
    print(f"  docs/oserve.md: vllm_static {st['deployment'] if st else '?'} p99 {fmt(st and st['p99_e2e_s'])} s; "
          f"oserve {os_['deployment'] if os_ else '?'} p99 {fmt(os_ and os_['p99_e2e_s'])} s"
          + (f" ({st['p99_e2e_s'] / os_['p99_e2e_s']:.2f}x)" if st and os_ else ""))
    print(f"  best homogeneous (least_work): {bh['deployment']} p99 {fmt(bh['sim_p99_s'])} s "
          f"(p50 {fmt(bh['sim_p50_s'])}; completed {bh['completed']})")
    print("    all homogeneous: " + ", ".join(f"{r['deployment']} {fmt(r['sim_p99_s'], '.1f')}"
                                             for r in sorted(hom, key=key)))
    for rname in ("mean", "peak"):
        ri = info.get(f"rates_{rname}")
        if ri:
            print(f"  rates {rname}: lam {ri['lam_rps']} rps, alpha floor {ri['need_alpha']:.2f}, feasible "
                  f"{ri['feasible']}, proxy on {ri['prefilter']} (prefilter) + {ri['checked_outside']} checked outside "
                  f"-> {ri['check_misses']} would have entered the top ({ri['proxy_s']:.0f} s)"
                  + (f" e.g. {ri['check_miss_examples']}" if ri['check_misses'] else ""))
    for name, r in (("best candidate (any deployment, OServe dispatch)", best_c),
                    ("best heterogeneous deployment", best_h)):
        if r:
            print(f"  {name}: {r['deployment']} [{r['dispatch']}] @{r['rates']} ({r['kind']}) sim p99 "
                  f"{fmt(r['sim_p99_s'])} s (p50 {fmt(r['sim_p50_s'])}), proxy p99 {fmt(r['proxy_p99_s'])} s, "
                  f"alpha {fmt(r['alpha'])}; best homogeneous / it = {bh['sim_p99_s'] / r['sim_p99_s']:.2f}x")
    ratio = bh["sim_p99_s"] / best["sim_p99_s"]
    print(f"  RATIO best homogeneous / best overall: {ratio:.2f}x  (best overall: {best['deployment']} "
          f"[{best['dispatch']}])")
    out = {"scenario": label, "best_homogeneous": {k: bh[k] for k in ("deployment", "sim_p99_s", "sim_p50_s")},
           "best_overall": {k: best[k] for k in ("deployment", "dispatch", "rates", "sim_p99_s", "proxy_p99_s")},
           "best_heterogeneous": best_h and {k: best_h[k] for k in ("deployment", "dispatch", "rates", "sim_p99_s",
                                                                     "proxy_p99_s")},
           "ratio": ratio, "docs": {"vllm_static": st, "oserve": os_}, "spearman": {}}
    for rname in ("mean", "peak"):
        sub = [r for r in cand if r["rates"] == rname]
        if len(sub) < 3:
            continue
        p, s = np.array([r["proxy_p99_s"] for r in sub]), np.array([r["sim_p99_s"] for r in sub])
        rho, pv = spearmanr(p, s)
        picks = [r for r in sub if r["kind"] == "proxy_pick"]
        rho_p = spearmanr([r["proxy_p99_s"] for r in picks], [r["sim_p99_s"] for r in picks])[0] if len(picks) > 2 else None
        # within-deployment: does the proxy order the dispatches of one deployment like the simulator?
        within = []
        for dep in dict.fromkeys(r["deployment"] for r in sub if r["kind"] == "alt"):
            d = [r for r in sub if r["deployment"] == dep]
            if len(d) >= 3:
                within.append(spearmanr([r["proxy_p99_s"] for r in d], [r["sim_p99_s"] for r in d])[0])
        pbest = min(sub, key=lambda r: r["proxy_p99_s"])
        sbest = min(sub, key=key)
        out["spearman"][rname] = {"rho": float(rho), "p": float(pv), "n": len(sub), "rho_picks": rho_p,
                                  "rho_within_mean": float(np.nanmean(within)) if within else None}
        print(f"  proxy vs sim @{rname}: Spearman {rho:.2f} (p={pv:.2g}, n={len(sub)}); over proxy picks only "
              f"{fmt(rho_p)}; within a deployment's dispatches (mean over {len(within)}) "
              f"{fmt(float(np.nanmean(within)) if within else None)}")
        print(f"    proxy's best: {pbest['deployment']} [{pbest['dispatch']}] proxy {fmt(pbest['proxy_p99_s'])} "
              f"sim {fmt(pbest['sim_p99_s'])}; sim's best: {sbest['deployment']} [{sbest['dispatch']}] proxy "
              f"{fmt(sbest['proxy_p99_s'])} sim {fmt(sbest['sim_p99_s'])}")
        pr = np.argsort(np.argsort(p, kind="stable"), kind="stable")
        sr = np.argsort(np.argsort(s, kind="stable"), kind="stable")
        worst = np.argsort(-np.abs(pr - sr), kind="stable")[:3]
        for k in worst:
            r = sub[k]
            print(f"    disagree: {r['deployment']} [{r['dispatch']}] proxy {fmt(r['proxy_p99_s'])} (rank {pr[k]}) "
                  f"sim {fmt(r['sim_p99_s'])} (rank {sr[k]})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, of {', '.join([*SCENARIOS, *VALIDATION])} (default: the first four)")
    p.add_argument("--top", type=int, default=40, help="deployments simulated per rate set, best by proxy (default 40)")
    p.add_argument("--deep", type=int, default=8,
                   help="of those, how many also get alternative dispatches simulated (default 8)")
    p.add_argument("--alts", type=int, default=3,
                   help="alternative dispatches per deep deployment: next best by proxy, plus balanced (default 3)")
    p.add_argument("--min-alpha", type=float, default=1.2,
                   help="load-scale floor at the rate set (OServe's headroom; default 1.2)")
    p.add_argument("--prefilter", type=int, default=100,
                   help="full proxy only for this many best by balanced proxy + this many best by load scale (100)")
    p.add_argument("--check", type=int, default=40,
                   help="random feasible deployments outside the prefilter scored too, to count misses (40)")
    p.add_argument("--json", type=Path, help="write every simulated candidate (and the summaries) here")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "oserve.md", help="where OServe's picks are read")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    labels = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in labels if s not in SCENARIOS and s not in VALIDATION]
    if bad:
        p.error(f"unknown scenarios {bad}")
    from contextlib import nullcontext

    from tqdm import tqdm

    def bar_factory(total: int, desc: str):
        if args.no_progress:
            class _N:
                def update(self, n):
                    pass
            return nullcontext(_N())
        return tqdm(total=total, desc=desc, unit="it", file=sys.stderr, leave=False)

    docs = docs_rows(args.docs)
    t0 = time.time()
    all_rows, summaries = [], []
    for label in labels:
        rows, info = run_scenario(label, args, bar_factory)
        all_rows += rows
        summaries.append({**report(label, rows, info, docs), "info": info})
        sys.stdout.flush()
    wall = time.time() - t0
    print("\n== summary: p99 E2E s (sim)")
    print(f"{'scenario':24} {'best homog':>20} {'p99':>7} {'best overall (dispatch)':>58} {'p99':>7} {'proxy':>7} "
          f"{'ratio':>6} {'docs static/oserve':>20}")
    for s in summaries:
        b, h = s["best_overall"], s["best_homogeneous"]
        d = s["docs"]
        dd = (f"{fmt(d['vllm_static'] and d['vllm_static']['p99_e2e_s'])}/{fmt(d['oserve'] and d['oserve']['p99_e2e_s'])}")
        print(f"{s['scenario']:24} {h['deployment']:>20} {fmt(h['sim_p99_s']):>7} "
              f"{(b['deployment'] + ' [' + b['dispatch'] + ']'):>58} {fmt(b['sim_p99_s']):>7} "
              f"{fmt(b['proxy_p99_s']):>7} {s['ratio']:>5.2f}x {dd:>20}")
    ratios = [s["ratio"] for s in summaries]
    print(f"mean ratio {np.mean(ratios):.2f}x, max {np.max(ratios):.2f}x; {len(all_rows)} simulations; "
          f"wall {wall / 60:.1f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "wall_s": wall,
                                         "summaries": summaries, "candidates": all_rows}, indent=1,
                                        default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
