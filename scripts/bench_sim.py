#!/usr/bin/env python3
"""Speed and memory of the cluster simulator (``ClusterSimulator.run``), end to end.

Every figure is measured around ``run()``, which includes computing the
summary (metrics on), so it compares with Vidur's "metrics on" numbers.

Scenarios:
  a        Llama-2-70B, a100x8 as 4xTP2, Poisson 3 QPS, Azure-conv lengths
           (Vidur's reference setup; fast mode and exact mode)
  b        Llama-3-8B, h100x8 as 8xTP1, Poisson 32 QPS, Azure-conv lengths
  c        Llama-2-70B, h100x32 as 16xTP2, Azure conv at 10x its rate, whole trace
  scaling  scenario a (fast) at 1/4, 1/2, 1 and 2 times --requests
           (requests per CPU-second should stay flat)
  memory   peak RSS of scenario a (fast) with --memory-requests requests, in a
           child process, next to a child that only imports and builds the trace

Timings are printed, never checked: they depend on the machine.

    .venv/bin/python scripts/bench_sim.py
    .venv/bin/python scripts/bench_sim.py --only a,scaling --requests 5000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oserve_rl.catalog import get_cluster
from oserve_rl.cluster import parse_deployment
from oserve_rl.sim.simulator import ClusterSimulator
from oserve_rl.workload import load_trace, parse_arrival
from oserve_rl.workload.trace import Trace

PARTS = ("a", "b", "c", "scaling", "memory")
# Vidur 0.0.26 on scenario a, metrics on (/work/shared/research/perf-model.md).
VIDUR_REQ_PER_CPU_S = (96.0, 113.0)


@dataclass(frozen=True)
class Scenario:
    label: str
    cluster: str
    model: str
    deployment: str
    make_trace: Callable[[int | None], Trace]


def poisson_trace(qps: float, n: int, seed: int) -> Trace:
    """``n`` Azure-conv requests with Poisson arrivals (lengths reused cyclically past the trace's end)."""
    # A margin over n / qps so the Poisson draw almost surely yields n arrivals before head(n).
    duration_s = n / qps * 1.1 + 60.0
    trace = load_trace("azure-conv").with_arrivals(parse_arrival(f"poisson:{qps:g}"), seed=seed, duration_s=duration_s)
    if len(trace) < n:
        raise SystemExit(f"bench_sim: the Poisson draw gave {len(trace)} < {n} requests; raise the margin")
    return trace.head(n)


def scenario(part: str, seed: int) -> Scenario:
    if part == "a":
        return Scenario("a: L2-70B a100x8 4xTP2 pois3", "a100x8", "llama-2-70b", "4xTP2",
                        lambda n: poisson_trace(3.0, n, seed))
    if part == "b":
        return Scenario("b: L3-8B h100x8 8xTP1 pois32", "h100x8", "llama-3-8b", "8xTP1",
                        lambda n: poisson_trace(32.0, n, seed))
    if part == "c":
        return Scenario("c: L2-70B h100x32 16xTP2 conv x10", "h100x32", "llama-2-70b", "16xTP2",
                        lambda n: load_trace("azure-conv").scale_rate(10.0))
    raise ValueError(part)


def run_once(sc: Scenario, n: int | None, mode: str) -> dict:
    dep = parse_deployment(sc.deployment, get_cluster(sc.cluster), sc.model)
    trace = sc.make_trace(n)
    s = ClusterSimulator(dep, trace, mode=mode, progress=False).run().summary
    return s


HEADER = (f"{'scenario':<34} {'mode':<5} {'requests':>8} {'done':>7} {'cpu_s':>7} {'req/cpu_s':>10} "
          f"{'sim_s/wall_s':>12} {'e2e_p99_s':>9}")


def row(label: str, mode: str, s: dict) -> str:
    return (f"{label:<34} {mode:<5} {s['requests']:>8} {s['completed']:>7} {s['cpu_s']:>7.2f} "
            f"{s['requests_per_cpu_s']:>10.0f} {s['sim_s_per_wall_s']:>12.0f} {s['e2e_s']['p99']:>9.1f}")


def child_peak_rss(n: int, seed: int) -> int:
    """Run this script's child mode in a fresh interpreter; return its peak RSS in kB (VmHWM)."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-rss", str(n), "--seed", str(seed)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def child_main(n: int, seed: int) -> None:
    sc = scenario("a", seed)
    if n > 0:
        run_once(sc, n, "fast")
    else:  # baseline: imports, catalog and trace, no simulation
        parse_deployment(sc.deployment, get_cluster(sc.cluster), sc.model)
        sc.make_trace(1000)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]))
            return
    import resource  # no /proc: ru_maxrss is kB on Linux

    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)")
    ap.add_argument("--requests", type=int, default=10000, help="requests for scenarios a and b (default 10000)")
    ap.add_argument("--exact-requests", type=int, default=None,
                    help="requests for scenario a in exact mode (default: --requests)")
    ap.add_argument("--memory-requests", type=int, default=100000, help="requests for the memory part (default 100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rss is not None:
        child_main(args.child_rss, args.seed)
        return
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"--only: unknown part(s) {', '.join(bad)}; valid: {', '.join(PARTS)}")
    if args.requests <= 0:
        ap.error(f"--requests must be > 0, got {args.requests}")

    n = args.requests
    if any(p in parts for p in ("a", "b", "c")):
        print(HEADER)
    a_fast = None
    if "a" in parts:
        sc = scenario("a", args.seed)
        a_fast = run_once(sc, n, "fast")
        print(row(sc.label, "fast", a_fast))
        a_exact = run_once(sc, args.exact_requests or n, "exact")
        print(row(sc.label, "exact", a_exact))
    for part in ("b", "c"):
        if part in parts:
            sc = scenario(part, args.seed)
            print(row(sc.label, "fast", run_once(sc, n, "fast")))
    if "scaling" in parts:
        print("\nlinear scaling, scenario a, fast mode:")
        print(HEADER)
        sc = scenario("a", args.seed)
        for m in (n // 4, n // 2, n, 2 * n):
            print(row(sc.label, "fast", run_once(sc, m, "fast")))
    if "memory" in parts:
        base_kb = child_peak_rss(0, args.seed)
        peak_kb = child_peak_rss(args.memory_requests, args.seed)
        print(f"\npeak RSS, scenario a fast, {args.memory_requests} requests (child process): {peak_kb / 1024:.0f} MiB "
              f"(baseline imports + trace, no simulation: {base_kb / 1024:.0f} MiB; "
              f"simulation adds {(peak_kb - base_kb) / 1024:.0f} MiB)")
    if a_fast is not None:
        lo, hi = VIDUR_REQ_PER_CPU_S
        ours = a_fast["requests_per_cpu_s"]
        print(f"\nVidur 0.0.26, scenario a, metrics on: {lo:.0f}-{hi:.0f} req/CPU-s "
              f"(/work/shared/research/perf-model.md); ours (fast): {ours:.0f} req/CPU-s = "
              f"{ours / hi:.0f}-{ours / lo:.0f}x")


if __name__ == "__main__":
    main()
