"""Sim-to-real: one trace slice and deployment through the simulator and through the live cluster.

:func:`run_compare` replays the slice (``--replay-speed`` times faster, prompt
and output lengths clipped to what the live model serves) against the live
cluster running the deployment mapped by the controller config's
``replica_map``, optionally switching at trace times (``--switch T:SPEC``), and
feeds the *same request stream* (the replay's send times and clipped lengths)
to the simulator with the deployment on the config's simulated cluster and
model. What the simulator predicts is therefore "this stream on, e.g.,
Llama-2-70B on 8 H100s" (its calibrated perf model has no entry for a tiny
model on CPU cores): the stand-in the policy was trained on. On a CPU machine
the absolute numbers differ by design; the comparison exists so the same
command on a GPU cluster with the real model gives a real sim-to-real gap.

Measured switch phases (``start``, ``ready``, ``route``, ``drain``, ``stop``
per replica, from :class:`~oserve_rl.live.plan.SwitchReport`; the last report
is the teardown of the final deployment, so even a run without ``--switch``
measures drain and stop) are written as a switch-cost YAML that
:func:`oserve_rl.cluster.load_switch_costs` reads (and that is checked by
reading it back):

=====================  ==============================================================
field                  from
=====================  ==============================================================
``mode``               ``reload``: every live start is a new process loading weights
``engine_init_s``      median (start + ready) of started replicas, minus the model
                       files' read time at ``disk_gbps`` (the simulator adds that)
``router_update_s``    median per-replica ``route`` (add_worker / remove_worker)
``drain_estimate_s``   median ``drain`` of stopped replicas
others                 kept from the base costs (not measurable here; e.g.
                       ``reshard_init_s``: CPU vLLM has no in-place re-shard)
=====================  ==============================================================

>>> from oserve_rl.live.compare import run_compare
>>> from oserve_rl.live.controller import load_controller_config
>>> res = run_compare(load_controller_config("configs/live/cpu-tiny-sim.yaml"), trace="azure-conv",   # doctest: +SKIP
...                   slice_s=(600, 660), deployment="4xTP2", switches=[(30, "2xTP4")], run_dir="runs/live/cmp")
>>> print(res.table())                                                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oserve_rl.errors import ConfigError
from oserve_rl.live.controller import (
    ControlConfig,
    PolicyHandle,
    resolve_env_config,
    switch_report_dict,
    trace_requests,
)

METRICS = (("TTFT p50 (s)", "ttft_p50_s"), ("TTFT p99 (s)", "ttft_p99_s"), ("E2E p50 (s)", "e2e_p50_s"),
           ("E2E p99 (s)", "e2e_p99_s"), ("throughput (req/s)", "throughput_rps"))
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def parse_switch(text: str) -> tuple[float, str]:
    """``"T:SPEC"`` (T trace seconds from the slice start) -> (T, SPEC)."""
    t, sep, spec = str(text).partition(":")
    try:
        t_s = float(t)
    except ValueError:
        raise ConfigError(f"--switch {text!r}: expected T:SPEC such as 30:2xTP4 (T in trace seconds)") from None
    if not sep or not spec.strip() or not t_s >= 0:
        raise ConfigError(f"--switch {text!r}: expected T:SPEC with T >= 0, such as 30:2xTP4")
    return t_s, spec.strip()


def sim_summary(summary: dict[str, Any]) -> dict[str, float]:
    """The simulator's summary in the replay's keys (``ttft_p50_s``, ...)."""
    def q(block: str, k: str) -> float:
        v = (summary.get(block) or {}).get(k)
        return math.nan if v is None else float(v)

    thr = summary.get("throughput_rps")
    return {"requests": summary["requests"], "ok": summary["completed"],
            "failed": summary["rejected"] + summary["in_flight"],
            "ttft_p50_s": q("ttft_s", "p50"), "ttft_p99_s": q("ttft_s", "p99"),
            "e2e_p50_s": q("e2e_s", "p50"), "e2e_p99_s": q("e2e_s", "p99"),
            "throughput_rps": math.nan if thr is None else float(thr)}


def model_weight_bytes(model: str) -> int:
    """Bytes of weight files in a local model folder (0 for a hub name)."""
    p = Path(model)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


@dataclass
class PhaseStats:
    """Per-replica phase durations over all reports (seconds)."""

    start: list[float] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)
    route: list[float] = field(default_factory=list)
    drain: list[float] = field(default_factory=list)
    stop: list[float] = field(default_factory=list)

    @classmethod
    def from_reports(cls, reports: Sequence[Any]) -> PhaseStats:
        out = cls()
        for rep in reports:
            for r in rep.replicas:
                for name in ("start", "ready", "route", "drain", "stop"):
                    if name in r.phases_s:
                        getattr(out, name).append(float(r.phases_s[name]))
        return out

    @staticmethod
    def median(xs: list[float]) -> float:
        return float(statistics.median(xs)) if xs else math.nan


def fit_switch_costs(reports: Sequence[Any], base: Any, *, model_bytes: int = 0) -> tuple[Any, dict[str, str]]:
    """``(SwitchCosts, why per field)`` from measured switch reports; unmeasured fields keep ``base``."""
    from oserve_rl.cluster import SwitchCosts

    ph = PhaseStats.from_reports(reports)
    why = {name: "not measured on this cluster: kept from the base costs" for name in SwitchCosts.model_fields}
    why["reshard_init_s"] = ("not measured: live replicas start as new processes (vLLM on CPU has no in-place "
                             "re-shard or sleep mode); kept from the base costs")
    upd: dict[str, Any] = {"mode": "reload"}
    why["mode"] = "every live replica start is a new process that loads its weights from disk"
    starts = [s + r for s, r in zip(ph.start, ph.ready)] if len(ph.start) == len(ph.ready) else list(ph.ready)
    if starts:
        read_s = model_bytes / (base.disk_gbps * 1e9)
        upd["engine_init_s"] = round(max(0.0, PhaseStats.median(starts) - read_s), 4)
        why["engine_init_s"] = (f"median start+ready of {len(starts)} started replica(s) "
                                f"({', '.join(f'{x:.2f}' for x in starts)} s) minus {read_s:.3f} s to read "
                                f"{model_bytes / 1e6:.1f} MB of weights at disk_gbps")
    if ph.route:
        upd["router_update_s"] = round(PhaseStats.median(ph.route), 4)
        why["router_update_s"] = f"median route phase of {len(ph.route)} router add/remove(s)"
    if ph.drain:
        upd["drain_estimate_s"] = round(PhaseStats.median(ph.drain), 4)
        why["drain_estimate_s"] = (f"median drain of {len(ph.drain)} stopped replica(s) "
                                   f"({', '.join(f'{x:.2f}' for x in ph.drain)} s)")
    return SwitchCosts(**{**base.model_dump(), **upd}), why


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}" if v != int(v) or abs(v) >= 1e6 else f"{v:.1f}"
    return str(v)


def write_switch_costs(path: str | Path, costs: Any, why: dict[str, str], header: Sequence[str] = ()) -> Any:
    """Write ``costs`` as a commented switch-cost YAML and read it back with ``load_switch_costs``
    (a file the simulator would read differently is an error)."""
    from oserve_rl.cluster import load_switch_costs

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Switch costs measured on a live cluster (python -m oserve_rl live compare).",
             "# Read by oserve_rl.cluster.load_switch_costs, e.g. python -m oserve_rl simulate --switch-costs FILE.",
             *(f"# {h}" for h in header), ""]
    for name in type(costs).model_fields:
        lines.append(f"# {why.get(name, '')}")
        lines.append(f"{name}: {_yaml_scalar(getattr(costs, name))}")
    p.write_text("\n".join(lines) + "\n")
    back = load_switch_costs(p)
    if back != costs:
        raise ConfigError(f"{p}: reads back as {back.model_dump()}, expected {costs.model_dump()}")
    return back


@dataclass
class CompareResult:
    """Predicted (simulator) vs measured (live) figures, the switch reports and the fitted costs."""

    predicted: dict[str, float]
    measured: dict[str, Any]
    sim_label: str
    live_label: str
    reports: list[tuple[str, Any]]                 # (what, SwitchReport)
    predicted_switch_s: dict[str, float]           # what -> the simulator's time until the new replicas serve
    costs: Any
    costs_path: Path
    why: dict[str, str]
    failures: list[Any] = field(default_factory=list)

    def table(self) -> str:
        from tabulate import tabulate

        f3 = lambda v: f"{v:.3f}"  # noqa: E731 - one column mixes numbers and counts
        rows = [[name, f3(self.predicted.get(key, math.nan)), f3(self.measured.get(key, math.nan))]
                for name, key in METRICS]
        rows.append(["requests ok / failed", f"{self.predicted['ok']} / {self.predicted['failed']}",
                     f"{self.measured['ok']} / {self.measured['failed']}"])
        for what, rep in self.reports:
            if what in self.predicted_switch_s:
                ready = sum(rep.phases_s.get(k, 0.0) for k in ("start", "ready", "route"))
                rows.append([f"{what}: new replicas serving (s)", f3(self.predicted_switch_s[what]), f3(ready)])
        main = tabulate(rows, headers=["", f"predicted ({self.sim_label})", f"measured ({self.live_label})"],
                        disable_numparse=True)
        ph_rows = []
        for what, rep in self.reports:
            for r in rep.replicas:
                ph_rows.append([what, rep.order, r.action, r.replica_id,
                                *(r.phases_s.get(k) for k in ("start", "ready", "route", "drain", "stop")),
                                r.stop_signal or ""])
        phases = tabulate(ph_rows, headers=["switch", "order", "action", "replica", "start", "ready", "route",
                                            "drain", "stop", "signal"], floatfmt=".2f", missingval="")
        return f"{main}\n\nswitch phases (s):\n{phases}"

    def to_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "measured": self.measured, "sim": self.sim_label,
                "live": self.live_label, "predicted_switch_s": self.predicted_switch_s,
                "switches": [{"what": w, **switch_report_dict(r)} for w, r in self.reports],
                "switch_costs": self.costs.model_dump(), "switch_costs_path": str(self.costs_path)}


def run_compare(control: ControlConfig, *, trace: str, deployment: str, slice_s: tuple[float, float] = (0.0, 120.0),
                replay_speed: float | None = None, switches: Sequence[tuple[float, str]] = (),
                run_dir: str | Path = "runs/live/compare", costs_out: str | Path | None = None,
                log: Callable[[str], None] | None = print, cluster: Any = None) -> CompareResult:
    """Simulate, then run live, the slice ``slice_s`` of ``trace`` on ``deployment`` (a simulated spec)."""
    from oserve_rl.cluster import plan_switch
    from oserve_rl.live.plan import LiveCluster
    from oserve_rl.live.replay import ReplayThread
    from oserve_rl.policy import Scenario
    from oserve_rl.sim.simulator import ClusterSimulator
    from oserve_rl.workload import Trace

    say = log or (lambda s: None)
    cfg = control.config
    speed = float(cfg.replay.replay_speed if replay_speed is None else replay_speed)  # 0 is an error, not unset
    if not speed > 0:
        raise ConfigError(f"--replay-speed must be > 0, got {speed}")
    start, end = slice_s
    for t, _ in switches:
        if not 0 <= t < end - start:
            raise ConfigError(f"--switch at {t:g} s lies outside the slice (0 .. {end - start:g} trace seconds)")
    env_cfg, sim_cluster, sim_model, _ = resolve_env_config(PolicyHandle("none", "heuristic"), control, trace)
    scen = Scenario(cluster=sim_cluster, model=sim_model, trace=trace, rate_scale=cfg.sim.rate_scale,
                    duration_s=end - start, start_s=start, num_types=int(env_cfg.num_types),
                    slo_ttft_s=env_cfg.slo_ttft_s, slo_tpot_s=env_cfg.slo_tpot_s, typer_seed=0)
    data = scen.build(seed=cfg.sim.data_seed)
    requests = trace_requests(data, cfg.replay, speed)
    from oserve_rl.cluster import parse_deployment

    dep = parse_deployment(deployment, data.cluster, data.model, engine=data.engine)
    later = [(t, parse_deployment(s, data.cluster, data.model, engine=data.engine)) for t, s in sorted(switches)]
    rmap = control.replica_map

    # ---- predicted: the replayed stream (send times, clipped lengths) on the simulated cluster and model
    sim_trace = Trace(np.array([r.send_at_s for r in requests]),
                      np.minimum(data.trace.input_tokens, cfg.replay.max_prompt_tokens),
                      np.minimum(data.trace.output_tokens, cfg.replay.max_output_tokens),
                      name=f"{trace}[{start:g}:{end:g}] as replayed", source="oserve_rl.live.compare")
    router = "round_robin" if control.live.router_policy == "round_robin" else "least_work"
    sim = ClusterSimulator(dep, sim_trace, router=router, engine=data.engine, switch_costs=control.switch_costs,
                           request_types=data.types, slo_ttft_s=env_cfg.slo_ttft_s, slo_tpot_s=env_cfg.slo_tpot_s,
                           progress=False)
    for t, d in later:
        sim.schedule_switch(t / speed, d)
    res = sim.run()
    predicted = sim_summary(res.summary)
    plan0 = plan_switch(None, dep, control.switch_costs)
    predicted_switch = {"initial": max(plan0.load_s.values()) + plan0.router_update_s}
    for i, ((t, _), rec) in enumerate(zip(later, res.switches)):
        predicted_switch[f"switch@{t:g}s"] = float(rec.downtime_s)
    sim_label = f"sim: {data.model} on {data.cluster.name}, {dep.spec_string()}"
    say(f"{len(requests)} requests of {trace}[{start:g}:{end:g}] at {speed:g}x; predicted on {sim_label}: "
        + ", ".join(f"{k} {v:.3f}" for k, v in predicted.items() if isinstance(v, float)))

    # ---- measured: the live cluster
    live_label = f"live: {Path(control.live.model).name} on {control.live.device}"
    run_dir = Path(run_dir)
    live = cluster if cluster is not None else LiveCluster.from_config(control.live, run_dir)
    reports: list[tuple[str, Any]] = []
    try:
        specs0 = rmap.specs(dep)
        say(f"live: starting {[s.short() for s in specs0]} for {dep.spec_string()}")
        reports.append(("initial", live.apply(specs0)))
        say(f"  {reports[-1][1].summary()}")
        rt = ReplayThread(requests, live.router.url, model=live.backend.served_model_name,
                          concurrency=cfg.replay.concurrency, max_attempts=cfg.replay.max_attempts).start()
        try:
            for t, d in later:
                at = rt.t0 + t / speed
                while time.monotonic() < at:  # a schedule, not a readiness wait
                    time.sleep(min(0.2, max(0.0, at - time.monotonic())))
                specs = rmap.specs(d)
                say(f"live: switch at {t:g} s to {d.spec_string()} -> {[s.short() for s in specs]} "
                    f"({live.diff(specs).summary()})")
                reports.append((f"switch@{t:g}s", live.apply(specs)))
                say(f"  {reports[-1][1].summary()}")
        finally:
            replay = rt.join(timeout_s=(end - start) / speed + 900.0)
        reports.append(("teardown", live.apply([])))
        say(f"live: teardown {reports[-1][1].summary()}")
    finally:
        if cluster is None:
            live.close()
    measured = replay.summary()
    costs, why = fit_switch_costs([r for _, r in reports], control.switch_costs,
                                  model_bytes=model_weight_bytes(control.live.model))
    out = Path(costs_out) if costs_out is not None else run_dir / "switch_costs.yaml"
    write_switch_costs(out, costs, why, header=[
        f"controller config {control.path}; live model {control.live.model} ({control.live.device});",
        f"trace {trace}[{start:g}:{end:g}] at {speed:g}x, deployment {deployment}"
        + "".join(f", switch {t:g}s:{s}" for t, s in switches) + ";",
        "stop (SIGTERM until the process group is gone), median "
        f"{PhaseStats.median(PhaseStats.from_reports([r for _, r in reports]).stop):.2f} s, has no field: the "
        "simulator frees a replica's GPUs once it has drained.",
    ])
    return CompareResult(predicted, measured, sim_label, live_label, reports, predicted_switch, costs, out, why,
                         replay.failures())
