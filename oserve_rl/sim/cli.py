"""``python -m oserve_rl simulate``: one trace through one deployment on one cluster."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """examples:
  python -m oserve_rl simulate --cluster a100x8 --model llama-2-70b --deployment 4xTP2 --trace azure-conv
  python -m oserve_rl simulate --cluster a100x8 --model llama-2-70b --deployment 4xTP2 --trace azure-conv \\
      --arrival poisson:3 --num-requests 10000 --json -
  python -m oserve_rl simulate --cluster h100x32 --model llama-3.1-70b --deployment 8xTP4 \\
      --trace mooncake-synthetic --rate-scale 2
  python -m oserve_rl simulate --cluster mixed-a100-h100-h200 --model llama-2-70b \\
      --deployment '4xTP2@h100+2xTP4@a100-80gb' --trace servegen:m-large --duration 1800 --target-rps 8
  python -m oserve_rl simulate ... --switch 600:2xTP4 --switch 1200:4xTP2     # switch deployment mid-run
"""


def add_simulate_parser(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a trace on a deployment", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Simulate a request trace on a cluster deployment with vLLM-like replica engines; "
                                   "print (or write) latency, throughput, SLO and cost metrics.")
    p.add_argument("--cluster", required=True, help="cluster preset (a100x8, h100x8, h100x32, mixed-a100-h100-h200) "
                                                    "or a YAML file")
    p.add_argument("--model", required=True, help="catalog model name or Hugging Face id")
    p.add_argument("--deployment", required=True, help="spec such as 4xTP2, 2xTP4+8xTP1, 1xTP4PP2, 2xTP4@h100")
    p.add_argument("--trace", required=True, help="bundled name (azure-conv, azure-code, mooncake-synthetic, "
                                                  "servegen:m-large, sharegpt, arxiv, ...) or a file (Azure CSV, "
                                                  "Mooncake JSONL, length-pool CSV; format detected)")
    p.add_argument("--arrival", help="replace arrival times, keep lengths: poisson:QPS, gamma:QPS:CV, "
                                     "diurnal:QPS:AMPLITUDE:PERIOD_S")
    p.add_argument("--num-requests", type=int, help="first N requests only")
    p.add_argument("--duration", type=float, help="simulate this many seconds of the trace (requests still "
                                                  "running then are reported in flight)")
    p.add_argument("--rate-scale", type=float, help="multiply the arrival rate by X (timestamps divided by X)")
    p.add_argument("--target-rps", type=float, help="servegen traces: scale production rates to this mean rate "
                                                    "(default 5)")
    p.add_argument("--router", default="least_work", choices=["least_work", "round_robin"],
                   help="request router (default least_work)")
    p.add_argument("--switch", action="append", default=[], metavar="T:SPEC",
                   help="switch to deployment SPEC at simulated time T seconds (repeatable)")
    p.add_argument("--mode", default="fast", choices=["fast", "exact"],
                   help="fast: closed-form jumps over decode steps (default); exact: one step per iteration")
    p.add_argument("--seed", type=int, default=0, help="seed for arrivals and synthetic traces (default 0)")
    p.add_argument("--sort", action="store_true", help="sort a trace whose timestamps go back (reported)")
    p.add_argument("--skip-bad-rows", type=int, default=0, metavar="N",
                   help="skip up to N malformed trace rows (reported) instead of failing")
    p.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO in seconds (default 2)")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO in seconds per token (default 0.1)")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="vLLM token budget (default 2048)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="vLLM max running sequences (default 256)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM memory share (default 0.9)")
    p.add_argument("--switch-costs", help="YAML of switch costs (default configs/switching/default.yaml)")
    p.add_argument("--out", help="write requests.parquet and summary.json to this folder")
    p.add_argument("--json", metavar="PATH", help="write the summary as JSON to PATH ('-' = stdout, quiet)")


def _load(args):
    from oserve_rl.errors import ConfigError
    from oserve_rl.workload import load_trace

    opts = {}
    if args.trace.startswith("servegen:"):
        opts["target_rps"] = args.target_rps or 5.0
        opts["duration_s"] = args.duration or 3600.0
    elif args.trace in ("sharegpt", "arxiv") and not args.arrival:
        raise ConfigError(f"trace {args.trace!r} has lengths only: add --arrival poisson:QPS")
    else:
        if args.sort:
            opts["sort"] = True
        if args.skip_bad_rows:
            opts["skip_bad_rows"] = args.skip_bad_rows
    if args.arrival:
        opts["arrival"] = args.arrival
        if args.trace in ("sharegpt", "arxiv"):
            if args.duration:
                opts["duration_s"] = args.duration
            else:
                opts["n"] = args.num_requests or 10_000
    trace = load_trace(args.trace, seed=args.seed, **opts)
    if args.trace.startswith("servegen:"):
        trace = trace.rebase()
    if args.rate_scale:
        if args.rate_scale <= 0:
            raise ConfigError(f"--rate-scale must be > 0, got {args.rate_scale}")
        trace = trace.scale_rate(args.rate_scale)
    if args.num_requests:
        if args.num_requests <= 0:
            raise ConfigError(f"--num-requests must be > 0, got {args.num_requests}")
        trace = trace.head(args.num_requests)
    if args.duration is not None:
        if args.duration <= 0:
            raise ConfigError(f"--duration must be > 0 seconds, got {args.duration}")
        t0 = float(trace.arrival_s[0])
        trace = trace.slice(t0, t0 + args.duration)
        if len(trace) == 0:
            raise ConfigError(f"--duration {args.duration}: no requests arrive in the first {args.duration} s")
    return trace


def simulate_main(args) -> int:
    from oserve_rl.catalog import get_cluster
    from oserve_rl.cluster import load_switch_costs, parse_deployment
    from oserve_rl.errors import ConfigError
    from oserve_rl.perf import EngineConfig
    from oserve_rl.sim.simulator import ClusterSimulator

    quiet = args.json == "-"
    engine = EngineConfig(max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                          gpu_memory_utilization=args.gpu_memory_utilization)
    cluster = get_cluster(args.cluster)
    dep = parse_deployment(args.deployment, cluster, args.model, engine=engine)
    trace = _load(args)
    for note in getattr(trace, "notes", ()):
        if not quiet:
            print(f"note: {note}", file=sys.stderr)
    sim = ClusterSimulator(dep, trace, router=args.router, engine=engine, mode=args.mode,
                           switch_costs=load_switch_costs(args.switch_costs), slo_ttft_s=args.slo_ttft,
                           slo_tpot_s=args.slo_tpot, progress=None if not quiet else False)
    for sw in args.switch:
        t, _, spec = sw.partition(":")
        try:
            t_s = float(t)
        except ValueError:
            raise ConfigError(f"--switch {sw!r}: expected T:SPEC such as 600:2xTP4") from None
        sim.schedule_switch(t_s, spec)
    until = float(trace.arrival_s[0]) + args.duration if args.duration else None
    res = sim.run(until_s=until)
    s = res.summary
    if args.out:
        res.write(args.out)
    if args.json:
        from oserve_rl.sim.metrics import _jsonable

        text = json.dumps(_jsonable(s), indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if not quiet:
        _print_table(s, args, res)
    return 0


def _fmt(d):
    return "  ".join(f"{k} {v:.3f}" for k, v in d.items() if v is not None)


def _print_table(s, args, res) -> None:
    print(f"{args.model} on {args.cluster} as {s['deployment']} | trace {args.trace} | mode {s['mode']}")
    print(f"requests {s['requests']}: completed {s['completed']}, rejected {s['rejected']} "
          f"{s['rejected_reasons'] or ''}, in flight {s['in_flight']}")
    for k in ("ttft_s", "tpot_s", "e2e_s"):
        print(f"{k:7s} {_fmt(s[k])}")
    print(f"throughput {s['throughput_rps'] or 0:.3f} req/s, {s['throughput_tok_s'] or 0:.1f} tok/s | "
          f"SLO attainment {s['slo']['attainment']:.3f} | SLO-scale@95 {s.get('slo_scale_p95') or float('nan'):.2f} "
          f"@99 {s.get('slo_scale_p99') or float('nan'):.2f}")
    print(f"switches {s['switches']} (downtime {s['switch_downtime_s']:.1f} s) | GPU-hours {s.get('gpu_hours', 0):.3f} "
          f"cost ${s.get('cost_usd', 0):.2f}")
    print(f"simulated {s['sim_time_s']:.0f} s in {s['wall_s']:.2f} s wall ({s['sim_s_per_wall_s'] or 0:,.0f}x real time), "
          f"{s['requests_per_cpu_s'] or 0:,.0f} requests per CPU-second")
    if args.out:
        print(f"wrote {args.out}/requests.parquet and summary.json")
