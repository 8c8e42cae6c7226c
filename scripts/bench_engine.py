#!/usr/bin/env python3
"""Simulated requests per CPU-second of the replica engine, fast vs exact mode.

Default scenario (the speed target): Llama-2-70B on A100-80GB, TP2, 4 replicas
fed round-robin by Poisson arrivals at 3 QPS with Azure-conv lengths. Each
replica is driven only at its own arrivals (``advance_to`` then
``add_request``), then run to idle: the engine is all that is timed.

    .venv/bin/python scripts/bench_engine.py --requests 20000
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from oserve_rl.perf import EngineConfig, replica_perf
from oserve_rl.sim.engine import ReplicaEngine
from oserve_rl.sim.metrics import summary
from oserve_rl.sim.requests import RequestRecorder
from oserve_rl.workload import load_trace


def run(perf, rec: RequestRecorder, replicas: int, mode: str, cfg: EngineConfig,
        advance_all: bool = False) -> tuple[float, list[ReplicaEngine]]:
    engines = [ReplicaEngine(perf, cfg, mode=mode, recorder=rec, replica_id=i) for i in range(replicas)]
    arrival = rec.arrival_s.tolist()
    t0 = time.process_time()
    for rid, t in enumerate(arrival):
        if advance_all:  # what a cluster loop that observes every replica at each arrival costs
            for eng in engines:
                eng.advance_to(t)
        eng = engines[rid % replicas]
        eng.advance_to(t)
        eng.add_request(rid, t)
    for eng in engines:
        eng.advance_to(math.inf)
    return time.process_time() - t0, engines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-2-70b")
    ap.add_argument("--gpu", default="a100-80gb")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--qps", type=float, default=3.0)
    ap.add_argument("--trace", default="azure-conv", help="trace whose lengths are used (arrivals are Poisson)")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--exact-requests", type=int, default=None, help="requests for exact mode (default: same)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--advance-all", action="store_true",
                    help="advance every replica at every arrival (as a cluster loop observing all replicas would)")
    args = ap.parse_args()

    perf = replica_perf(args.model, args.gpu, tp=args.tp)
    cfg = EngineConfig()
    trace = load_trace(args.trace, arrival=f"poisson:{args.qps}", seed=args.seed)
    n = args.requests
    if n > len(trace):  # reuse lengths cyclically for long benchmarks
        trace = load_trace(args.trace, arrival=f"poisson:{args.qps}", seed=args.seed,
                           duration_s=n / args.qps * 1.05)
    trace = trace.head(n)
    out = {}
    for mode in ("fast", "exact"):
        m = n if mode == "fast" or args.exact_requests is None else min(n, args.exact_requests)
        rec = RequestRecorder.from_trace(trace.head(m))
        cpu_s, engines = run(perf, rec, args.replicas, mode, cfg, args.advance_all)
        s = summary(rec)
        iters = sum(e.num_iterations for e in engines)
        out[mode] = {
            "requests": m, "cpu_s": round(cpu_s, 3), "requests_per_cpu_s": round(m / cpu_s),
            "iterations": iters, "exact_steps": sum(e.num_exact_steps for e in engines),
            "fast_jumps": sum(e.num_fast_jumps for e in engines),
            "completed": s["completed"], "ttft_p50_s": s["ttft_s"]["p50"], "tpot_p50_s": s["tpot_s"]["p50"],
            "e2e_p99_s": s["e2e_s"]["p99"], "preemptions": s["preemptions_total"],
        }
        print(f"{mode:5s}: {m} requests in {cpu_s:.2f} CPU-s = {m / cpu_s:,.0f} requests/CPU-s "
              f"({iters} iterations, {out[mode]['exact_steps']} exact steps, {out[mode]['fast_jumps']} jumps)")
    print(json.dumps(out, indent=1))
    if not np.isfinite(out["fast"]["ttft_p50_s"]):
        raise SystemExit("no request completed")


if __name__ == "__main__":
    main()
