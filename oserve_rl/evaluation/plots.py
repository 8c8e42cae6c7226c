"""evaluate.py's pictures (seed of the first episode): latency CDFs, p99 over time with switches, deployment timeline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from oserve_rl.policy import interval_p99_s
from oserve_rl.sim import metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_ticks(axis) -> None:
    """Label a log axis (after plotting) with plain numbers (0.05, 2, 30): at 1, 2 and 5 per decade when
    the data span two decades or less, else at powers of ten. matplotlib's default puts overlapping
    2x10^-2 labels on minor ticks, or a single label, on such short ranges."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 3.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write (110 dpi) and close ``fig``; the one way every plot here and in scripts/ is saved."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(table: Any, out: Path) -> list[Path]:
    return [latency_cdfs(table, out / "latency_cdf.png"), p99_over_time(table, out / "p99_over_time.png"),
            deployment_timeline(table, out / "deployment_timeline.png")]


def latency_cdfs(table: Any, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, results in table.results.items():
        m = metrics.per_request(results[0].sim.recorder)
        for ax, key in zip(axes, ("e2e_s", "ttft_s", "tpot_s")):
            v = np.sort(m[key][np.isfinite(m[key])])
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=name)
    for ax, key in zip(axes, ("E2E latency (s)", "TTFT (s)", "TPOT (s)")):
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.set_xlabel(key)
        ax.set_ylabel("share of completed requests")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    trace = getattr(table.scenario.trace, "name", table.scenario.trace)
    fig.suptitle(f"{table.scenario.model} on {table.scenario.cluster}, {trace} (seed {table.seeds[0]})")
    return save_figure(plt, fig, path)


def p99_over_time(table: Any, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for i, (name, results) in enumerate(table.results.items()):
        r = results[0]
        end = float(np.nanmax(r.sim.recorder.finish_s[np.isfinite(r.sim.recorder.finish_s)], initial=r.interval_s))
        t, p99 = interval_p99_s(r.sim.recorder, r.interval_s, end)
        # Policies that decide alike draw the same steps: other dashes, thinner on top, keep each visible.
        (line,) = ax.plot(t / 60, p99, label=f"{name} ({len(r.sim.switches)} switches)", drawstyle="steps-post",
                          linestyle=("-", "--", ":", "-.")[i % 4], linewidth=2.2 - 0.4 * (i % 4))
        for sw in r.sim.switches:
            ax.axvline(sw.start_s / 60, color=line.get_color(), alpha=0.5, linestyle=":", linewidth=1)
            # At the top edge in axes coordinates: y = 0 does not exist on the log scale.
            ax.plot([sw.start_s / 60], [1.0], marker="v", color=line.get_color(), clip_on=False,
                    transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    ax.set_xlabel("time (min); dotted lines and triangles (top): switches")
    ax.set_ylabel("p99 E2E of requests finishing in the interval (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def deployment_timeline(table: Any, path: Path) -> Path:
    plt = _plt()
    names = list(table.results)
    fig, ax = plt.subplots(figsize=(11, 0.7 * len(names) + 2.5))
    palette = plt.get_cmap("tab20")
    colours: dict[str, Any] = {}
    for row, name in enumerate(names):
        r = table.results[name][0]
        tl = r.sim.timeline
        end = max(r.sim.summary["sim_time_s"], tl[-1][0] + r.interval_s)
        for k, (t0, spec) in enumerate(tl):
            t1 = tl[k + 1][0] if k + 1 < len(tl) else end
            c = colours.setdefault(spec, palette(len(colours) % 20))
            ax.barh(row, (t1 - t0) / 60, left=t0 / 60, color=c, edgecolor="white")
            if (t1 - t0) / max(end, 1) > 0.08:
                ax.text((t0 + t1) / 120, row, spec, ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("time (min)")
    ax.set_title("deployment over time (one colour per deployment)")
    # Segments too short to carry their label are named in the legend.
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save_figure(plt, fig, path)


def load_sweep(sweep: dict[float, dict[str, dict[str, Any]]], scenario: Any, path: Path) -> Path:
    """p99 E2E and SLO attainment against the load (evaluate.py with several --rate-scale values)."""
    plt = _plt()
    scales = sorted(sweep)
    fig, (ax_p99, ax_slo) = plt.subplots(1, 2, figsize=(12, 4.2))
    # Policies that decide alike draw the same line: shrinking markers and other dashes keep each visible.
    styles = [("o", 8, "-"), ("s", 6, "--"), ("^", 4.5, ":"), ("D", 3.5, "-."), ("v", 3, "-")]
    all_p99 = []
    for i, name in enumerate(sweep[scales[0]]):
        marker, size, dash = styles[i % len(styles)]
        p99 = [math.nan if (v := sweep[s][name]["e2e_s"]["p99"]) is None else v for s in scales]
        slo = [math.nan if (v := sweep[s][name]["slo_attainment"]) is None else v for s in scales]
        all_p99 += [v for v in p99 if math.isfinite(v)]
        for ax, ys in ((ax_p99, p99), (ax_slo, slo)):
            ax.plot(scales, ys, marker=marker, markersize=size, linestyle=dash, label=name)
    if all_p99 and max(all_p99) > 10 * min(all_p99):  # log only where the latencies span a decade
        ax_p99.set_yscale("log")
        plain_log_ticks(ax_p99.yaxis)
    else:
        ax_p99.set_ylim(bottom=0)
    ax_p99.set_ylabel("p99 E2E latency (s)")
    ax_slo.set_ylabel("SLO attainment")
    low = min((v for f in sweep.values() for v in [m["slo_attainment"] for m in f.values()] if v is not None),
              default=0.0)
    ax_slo.set_ylim(max(0.0, low - 0.05), 1.005)  # not zoomed into differences of 1e-4
    for ax in (ax_p99, ax_slo):
        ax.set_xlabel("load (x the trace's rate)")
        ax.grid(alpha=0.3)
    ax_p99.legend(fontsize=8)
    trace = getattr(scenario.trace, "name", scenario.trace)
    fig.suptitle(f"{scenario.model} on {scenario.cluster}, {trace}: mean over seeds")
    return save_figure(plt, fig, path)
