#!/usr/bin/env python
"""Would OServe choose better plans by *simulating* its candidates instead of scoring them with the p99 proxy?

``scripts/hetero_bound.py`` found that OServe's closed-form p99 proxy (``oserve_rl.sched.latency``) ranks
fixed plans almost at random against the simulator (Spearman -0.31..0.50). The obvious alternative is a
rehearsal: at decision time, simulate each candidate plan on synthetic traffic drawn from what the policy
already knows, and keep the one with the lowest simulated p99. This script measures whether that ranking
would agree with the real one, without changing OServe.

What it does, per scenario of hetero_bound's JSON (``--bound``, default ``reports/hetero_bound.json``):

  1. rebuild the scenario, OServe and the rate sets exactly as hetero_bound did ("mean": the episode's mean
     per-type rates; "peak": its busiest minute);
  2. draw one synthetic workload from OServe's own model of the types, the same information its proxy uses:
     Poisson arrivals per type at the ``--at`` rates, input and output lengths log-normal per type with
     the typer's centre as geometric mean and the type's mean length as mean (``OutputSpread.from_means``'s
     rule, applied to inputs too), pairs over the model's context redrawn (the real episodes dropped
     them); ``--duration-s`` long, seed 0;
  3. re-simulate every candidate hetero_bound simulated on the real trace (same deployment, same
     dispatch weights) on that synthetic workload, and compare the two rankings.

No request of the episode itself enters the synthetic workload: only the per-type rates (``--at``) and the
per-type length statistics of the typing window, which OServe already has. ``--at peak`` uses the episode's
busiest minute, which OServe would not know in advance; ``--at mean`` is closer to what it knows.

    .venv/bin/python scripts/rehearse_rank.py --scenarios llama-2-70b/azure-code --at peak   # ~2 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import hetero_bound as H  # noqa: E402  (the scenarios, the fixed-plan simulation and Spearman, reused)

from oserve_rl.agents.oserve import OServe  # noqa: E402
from oserve_rl.cluster.deployment import parse_deployment  # noqa: E402
from oserve_rl.policy import ControlLoop  # noqa: E402
from oserve_rl.workload import Trace  # noqa: E402


def synthetic_episode(data, rates_rps: np.ndarray, duration_s: float, seed: int = 0):
    """``data`` with its trace replaced by Poisson traffic at ``rates_rps`` and log-normal lengths per type."""
    rng = np.random.default_rng(seed)
    mean_len = np.maximum(np.asarray(data.type_lengths, float), 1.0)    # [J, (in, out)]
    centre = np.maximum(data.typer.centers_tokens, 1.0)                  # geometric means
    sigma = np.sqrt(2.0 * np.log(np.maximum(mean_len / centre, 1.0))).clip(0.05, 2.0)
    counts = rng.poisson(np.asarray(rates_rps, float) * duration_s)
    types = np.repeat(np.arange(len(counts)), counts)
    arrival = rng.uniform(0.0, duration_s, len(types))
    order = np.argsort(arrival, kind="stable")
    arrival, types = arrival[order], types[order]
    ctx = data.engine.context_tokens(data.model)
    # Requests over the context were removed from the real episodes before they ran (docs/oserve.md), so the
    # lengths are drawn from the same distribution cut at the context: redraw the pairs that do not fit.
    inp, out = np.zeros(len(types)), np.zeros(len(types))
    todo = np.arange(len(types))
    for _ in range(100):
        if not len(todo):
            break
        t = types[todo]
        a = np.round(np.exp(np.log(centre[t, 0]) + sigma[t, 0] * rng.standard_normal(len(t)))).clip(1, None)
        b = np.round(np.exp(np.log(centre[t, 1]) + sigma[t, 1] * rng.standard_normal(len(t)))).clip(1, None)
        inp[todo], out[todo] = a, b
        todo = todo[a + b > ctx]
    if len(todo):
        raise SystemExit(f"{len(todo)} synthetic requests still exceed the {ctx}-token context after 100 draws")
    trace = Trace(arrival, inp.astype(np.int64), out.astype(np.int64), name="rehearsal", source="synthetic")
    return dataclasses.replace(data, trace=trace, types=types, duration_s=duration_s)


def run(label: str, rows: list[dict], at: str, duration_s: float) -> dict:
    model, trace_name = label.split("/")
    trace, _ = H.R.fitting_trace(trace_name, model)
    data = H.R.scenario(trace, model, H.SCENARIOS[label], H.DURATION_S).build(H.SEED)
    pol = OServe()
    pol.reset(ControlLoop(data, interval_s=60.0, decision_delay_s=0.0).context())
    rates = H.rate_sets(pol, data)
    synth = synthetic_episode(data, rates[at], duration_s)
    t0 = time.time()
    out = []
    for r in rows:
        dep = parse_deployment(r["deployment"], data.cluster, model)
        if r["rates"] is None:  # the homogeneous sweep: least-work routing
            sim = H.simulate(synth, dep, router="least_work")
        else:
            lam = rates[r["rates"]]
            match = [x for x in pol.routings(dep, lam, 0.0) if x.label() == r["dispatch"]]
            if not match:
                continue
            sim = H.simulate(synth, dep, pol.weights(dep, lam, need=0.0, routing=match[0]))
        out.append({**r, "rehearsal_p99_s": sim["sim_p99_s"]})
    real = np.array([r["sim_p99_s"] for r in out])
    reh = np.array([r["rehearsal_p99_s"] for r in out])
    prox = np.array([r["proxy_p99_s"] if r["proxy_p99_s"] is not None else math.nan for r in out])
    ok = np.isfinite(real) & np.isfinite(reh)
    hetero = ok & np.isfinite(prox)
    pick = out[int(np.nanargmin(np.where(ok, reh, np.nan)))]
    best = out[int(np.nanargmin(np.where(ok, real, np.nan)))]
    homog = min((r for r in out if r["rates"] is None), key=lambda r: r["sim_p99_s"])
    return {
        "scenario": label, "at": at, "rates_rps": rates[at].round(3).tolist(), "requests": len(synth.trace),
        "candidates": int(ok.sum()), "wall_s": time.time() - t0,
        "spearman_rehearsal_all": float(H.spearmanr(real[ok], reh[ok]).statistic),
        "spearman_rehearsal_oserve_dispatch": float(H.spearmanr(real[hetero], reh[hetero]).statistic),
        "spearman_proxy_oserve_dispatch": float(H.spearmanr(real[hetero], prox[hetero]).statistic),
        "rehearsal_pick": {k: pick[k] for k in ("deployment", "dispatch", "rates", "sim_p99_s", "rehearsal_p99_s")},
        "best_real": {k: best[k] for k in ("deployment", "dispatch", "rates", "sim_p99_s", "rehearsal_p99_s")},
        "best_homogeneous_real_p99_s": homog["sim_p99_s"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bound", type=Path, default=ROOT / "reports" / "hetero_bound.json",
                   help="hetero_bound.py's --json output (its simulated candidates are re-simulated)")
    p.add_argument("--scenarios", default=",".join(H.SCENARIOS), help="comma-separated (default: all four)")
    p.add_argument("--at", default="peak,mean", help="rate sets the synthetic traffic runs at: peak, mean or both")
    p.add_argument("--duration-s", type=float, default=300.0, help="synthetic traffic per rehearsal (default 300)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if not args.bound.is_file():
        p.error(f"--bound {args.bound} does not exist; run scripts/hetero_bound.py --json {args.bound} first")
    rows = json.loads(args.bound.read_text())["candidates"]
    labels = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    ats = [a.strip() for a in args.at.split(",") if a.strip()]
    bad = [s for s in labels if s not in H.SCENARIOS] + [a for a in ats if a not in ("peak", "mean")]
    if bad:
        p.error(f"unknown scenarios or rate sets {bad}: scenarios are {', '.join(H.SCENARIOS)}; --at is peak, mean")
    results = []
    print(f"{'scenario':24} {'at':>5} {'n':>4} {'rehearsal':>9} {'(OServe dispatches)':>19} {'proxy':>6}   "
          f"rehearsal's pick -> real p99   (hindsight best; best homogeneous)")
    for label in labels:
        mine = [r for r in rows if r["scenario"] == label]
        if not mine:
            p.error(f"{args.bound} has no candidates for {label}")
        for at in ats:
            res = run(label, mine, at, args.duration_s)
            results.append(res)
            pk, bs = res["rehearsal_pick"], res["best_real"]
            print(f"{label:24} {at:>5} {res['candidates']:>4} {res['spearman_rehearsal_all']:>9.2f} "
                  f"{res['spearman_rehearsal_oserve_dispatch']:>19.2f} {res['spearman_proxy_oserve_dispatch']:>6.2f}   "
                  f"{pk['deployment']} [{pk['dispatch']}] -> {pk['sim_p99_s']:.2f} s   "
                  f"({bs['sim_p99_s']:.2f} s; {res['best_homogeneous_real_p99_s']:.2f} s)  [{res['wall_s']:.0f} s]",
                  flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "results": results}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
