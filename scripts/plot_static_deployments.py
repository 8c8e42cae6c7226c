#!/usr/bin/env python3
"""p99 end-to-end latency of static deployments vs load: Llama-2-70B on h100x32, Azure conv.

Each deployment uses all 32 GPUs; the Azure conversation trace is replayed
at several rate scales (timestamps divided by the scale) and each run's p99
E2E latency (completed requests) is plotted on a log axis, one line per
deployment. Prints the table behind the plot.

    .venv/bin/python scripts/plot_static_deployments.py
    .venv/bin/python scripts/plot_static_deployments.py --minutes 20 --scales 4,8,12,16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from oserve_rl.catalog import get_cluster  # noqa: E402
from oserve_rl.cluster import parse_deployment  # noqa: E402
from oserve_rl.errors import OServeError  # noqa: E402
from oserve_rl.sim.simulator import ClusterSimulator  # noqa: E402
from oserve_rl.workload import load_trace  # noqa: E402

DEFAULT_DEPLOYMENTS = "16xTP2,8xTP4,4xTP8,4xTP4+8xTP2"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "static_deployments_h100x32.png"


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"{flag}: expected positive numbers, got {text!r}")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", default="h100x32")
    ap.add_argument("--model", default="llama-2-70b")
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--deployments", default=DEFAULT_DEPLOYMENTS, help=f"comma-separated specs (default {DEFAULT_DEPLOYMENTS})")
    ap.add_argument("--scales", default="1,2,4,8,12,16", help="rate scales (default 1,2,4,8,12,16)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="use only the trace's first MINUTES minutes (before scaling); default: whole trace")
    ap.add_argument("--mode", choices=("fast", "exact"), default="fast")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    scales = parse_floats(args.scales, "--scales")
    specs = [s.strip() for s in args.deployments.split(",") if s.strip()]
    cluster = get_cluster(args.cluster)
    deployments = {s: parse_deployment(s, cluster, args.model) for s in specs}  # fail early on a bad spec
    trace = load_trace(args.trace)
    if args.minutes is not None:
        trace = trace.slice(float(trace.arrival_s[0]), float(trace.arrival_s[0]) + args.minutes * 60.0)

    print(f"{args.model} on {args.cluster}, {args.trace} ({len(trace)} requests, {trace.mean_rate_rps:.2f} req/s at scale 1)")
    print(f"{'deployment':<14} {'scale':>5} {'rate_rps':>8} {'done':>6} {'rej':>5} {'ttft_p99_s':>10} {'e2e_p99_s':>9} "
          f"{'tput_rps':>8}")
    p99: dict[str, list[float]] = {}
    for spec, dep in deployments.items():
        p99[spec] = []
        for scale in scales:
            s = ClusterSimulator(dep, trace.scale_rate(scale), mode=args.mode, progress=False).run().summary
            p99[spec].append(s["e2e_s"]["p99"])
            print(f"{spec:<14} {scale:>5g} {trace.mean_rate_rps * scale:>8.1f} {s['completed']:>6} {s['rejected']:>5} "
                  f"{s['ttft_s']['p99']:>10.2f} {s['e2e_s']['p99']:>9.2f} {s['throughput_rps']:>8.1f}")

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for spec, ys in p99.items():
        ax.plot(scales, ys, marker="o", label=spec)
    ax.set_yscale("log")
    ax.set_xlabel(f"rate scale (x {trace.mean_rate_rps:.2f} req/s of {args.trace})")
    ax.set_ylabel("p99 end-to-end latency (s, log)")
    window = f", first {args.minutes:g} min" if args.minutes is not None else ""
    ax.set_title(f"Static deployments: {args.model} on {args.cluster}, {args.trace}{window}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="deployment")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except OServeError as e:
        raise SystemExit(f"plot_static_deployments: {e}") from None
