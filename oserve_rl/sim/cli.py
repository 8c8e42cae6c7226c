"""``python -m oserve_rl simulate``: one trace through one deployment on one cluster."""

from __future__ import annotations

import argparse
import json
import math
import sys

from oserve_rl.errors import ConfigError

SERVEGEN_TARGET_RPS = 5.0  # --target-rps when not given
SERVEGEN_DURATION_S = 3600.0  # servegen traces: seconds generated when --duration is not given
LENGTH_ONLY_REQUESTS = 10_000  # sharegpt / arxiv with --arrival: requests when neither N nor a duration is given

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
                                                    f"(default {SERVEGEN_TARGET_RPS:g})")
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


def _check_positive(flag: str, value: float | None, unit: str = "", why: str = "") -> None:
    """A flag that, when given, must be a finite number > 0 (None: not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--{flag} must be a positive number{unit}, got {value}{why}")


def _check_args(args) -> None:
    """Every flag's range, before the trace is built or the deployment planned: one error, no partial run."""
    if args.seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {args.seed}")
    if args.num_requests is not None and args.num_requests < 1:
        raise ConfigError(f"--num-requests must be >= 1 (omit it for the whole trace), got {args.num_requests}")
    if args.skip_bad_rows < 0:
        raise ConfigError(f"--skip-bad-rows must be >= 0 rows, got {args.skip_bad_rows}")
    _check_positive("duration", args.duration, " of seconds")
    _check_positive("rate-scale", args.rate_scale)
    _check_positive("target-rps", args.target_rps, " of requests per second")
    if args.target_rps is not None and not args.trace.startswith("servegen:"):
        raise ConfigError(f"--target-rps applies to servegen:MODEL traces only, not to {args.trace!r} "
                          "(use --rate-scale or --arrival)")
    # As evaluate's scenarios: a TTFT or TPOT bound of 0 would count every request as missing its SLO.
    never_met = "; an SLO of 0 or less can never be met"
    _check_positive("slo-ttft", args.slo_ttft, " of seconds", never_met)
    _check_positive("slo-tpot", args.slo_tpot, " of seconds per token", never_met)


def parse_switch(text: str) -> tuple[float, str]:
    """``--switch T:SPEC`` -> (T simulated seconds >= 0, SPEC); the same grammar as ``live compare --switch``."""
    t, sep, spec = str(text).partition(":")
    try:
        t_s = float(t)
    except ValueError:
        t_s = math.nan
    if not sep or not spec.strip() or not (math.isfinite(t_s) and t_s >= 0):
        raise ConfigError(f"--switch {text!r}: expected T:SPEC with T >= 0 simulated seconds, such as 600:2xTP4")
    return t_s, spec.strip()


def _load(args):
    from oserve_rl.workload import load_trace

    opts = {}
    if args.trace.startswith("servegen:"):
        opts["target_rps"] = SERVEGEN_TARGET_RPS if args.target_rps is None else args.target_rps
        opts["duration_s"] = SERVEGEN_DURATION_S if args.duration is None else args.duration
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
            if args.duration is not None:
                opts["duration_s"] = args.duration
            else:
                opts["n"] = LENGTH_ONLY_REQUESTS if args.num_requests is None else args.num_requests
    trace = load_trace(args.trace, seed=args.seed, **opts)
    if args.trace.startswith("servegen:"):
        trace = trace.rebase()
    # Ranges were checked by _check_args; "is not None" so that no given value is taken for "not given".
    if args.rate_scale is not None:
        trace = trace.scale_rate(args.rate_scale)
    if args.num_requests is not None:
        trace = trace.head(args.num_requests)
    if args.duration is not None:
        t0 = float(trace.arrival_s[0])
        trace = trace.slice(t0, t0 + args.duration)
        if len(trace) == 0:
            raise ConfigError(f"--duration {args.duration}: no requests arrive in the first {args.duration} s")
    return trace


def simulate_main(args) -> int:
    from oserve_rl.catalog import get_cluster
    from oserve_rl.cluster import load_switch_costs, parse_deployment
    from oserve_rl.perf import EngineConfig
    from oserve_rl.sim.simulator import ClusterSimulator

    _check_args(args)
    switches = [parse_switch(sw) for sw in args.switch]
    quiet = args.json == "-"
    engine = EngineConfig(max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                          gpu_memory_utilization=args.gpu_memory_utilization)
    cluster = get_cluster(args.cluster)
    dep = parse_deployment(args.deployment, cluster, args.model, engine=engine)
    for t_s, spec in switches:  # the simulator parses them only when it gets there: report bad specs now
        try:
            parse_deployment(spec, cluster, args.model, engine=engine, prefer=dep)
        except ConfigError as e:
            raise ConfigError(f"--switch {t_s:g}:{spec}: {e}") from None
    trace = _load(args)
    for note in getattr(trace, "notes", ()):
        if not quiet:
            print(f"note: {note}", file=sys.stderr)
    sim = ClusterSimulator(dep, trace, router=args.router, engine=engine, mode=args.mode,
                           switch_costs=load_switch_costs(args.switch_costs), slo_ttft_s=args.slo_ttft,
                           slo_tpot_s=args.slo_tpot, progress=None if not quiet else False)
    for t_s, spec in switches:
        sim.schedule_switch(t_s, spec)
    until = float(trace.arrival_s[0]) + args.duration if args.duration is not None else None
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
