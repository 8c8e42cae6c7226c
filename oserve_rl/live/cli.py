"""``python -m oserve_rl live``: run a policy on a live cluster, or compare the simulator with it.

Wiring (oserve_rl/__main__.py): ``add_parser(subparsers)`` in ``build_parser`` and
``main(args) -> int`` for ``args.cmd == "live"``. Standalone:
``python -m oserve_rl.live.cli run ...`` (same arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from oserve_rl.errors import ConfigError, OServeError

RUN_EPILOG = """examples:
  python -m oserve_rl live run --policy exports/quickstart --cluster configs/live/cpu-tiny-sim.yaml \\
      --trace azure-conv --slice 600:900 --replay-speed 0.8 --initial 4xTP2
  python -m oserve_rl live run --policy oserve --cluster configs/live/cpu-tiny-sim.yaml --duration 600
"""

COMPARE_EPILOG = """examples:
  python -m oserve_rl live compare --cluster configs/live/cpu-tiny-sim.yaml --trace azure-conv \\
      --slice 600:660 --deployment 4xTP2
  python -m oserve_rl live compare --cluster configs/live/cpu-tiny-sim.yaml --trace azure-conv \\
      --slice 600:720 --deployment 4xTP2 --switch 30:2xTP4 --out runs/live/compare
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, metavar="YAML",
                   help="controller config: live cluster + simulated world + replica_map (configs/live/*-sim.yaml)")
    p.add_argument("--model", metavar="DIR", help="override the live cluster's model (e.g. a tiny model folder)")
    p.add_argument("--live-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a live cluster config key (repeatable; VALUE is YAML), e.g. router_port=8123")
    p.add_argument("--replay-speed", type=float, metavar="X",
                   help="replay the trace X times faster than recorded (default: the config's replay.replay_speed)")
    p.add_argument("--slice", metavar="START:END", help="trace seconds to replay (run: default the env's episode "
                                                        "length from 0; compare: 0:120)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    live = subparsers.add_parser("live", help="a policy on a live vLLM cluster; simulator vs live cluster",
                                 description="Drive a live vLLM cluster with a trained (or heuristic) policy, or "
                                             "compare the simulator's predictions with the live cluster. "
                                             "See docs/live_controller.md.")
    ls = live.add_subparsers(dest="live_cmd", metavar="COMMAND", required=True)
    run = ls.add_parser("run", help="decide the live cluster's deployment with a policy every interval",
                        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Every interval: scrape the replicas, build Deploy-v0's observation, run the "
                                    "policy, map its deployment to live replicas and switch (make-before-break).")
    run.add_argument("--policy", required=True, metavar="DIR|NAME",
                     help="a `python -m oserve_rl export` folder (ONNX or heuristic), or a heuristic name (oserve)")
    _common(run)
    run.add_argument("--trace", help="replay this trace (name or file); without it the controller observes the "
                                     "traffic others send, from the replicas' counters")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S wall seconds of load "
                                                                  "(default: when the slice is replayed)")
    run.add_argument("--interval", type=float, metavar="S",
                     help="wall seconds between decisions (default: the env's interval_s / replay speed)")
    run.add_argument("--initial", metavar="SPEC", help="simulated deployment to start from (e.g. 4xTP2); default: "
                                                      "the policy's first decision, as in the env")
    run.add_argument("--out", metavar="DIR", help="run folder: replica/router logs, decisions.jsonl, summary.json "
                                                  "(default runs/live/run-<time>)")
    cmp_ = ls.add_parser("compare", help="the same trace slice and deployment in the simulator and live",
                         epilog=COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Predicted (simulator) vs measured (live) TTFT, E2E and throughput, measured "
                                     "switch phases, and a switch-cost YAML fitted to them.")
    _common(cmp_)
    cmp_.add_argument("--trace", required=True, help="trace name or file")
    cmp_.add_argument("--deployment", required=True, metavar="SPEC",
                      help="simulated deployment (on the config's sim cluster/model), e.g. 4xTP2")
    cmp_.add_argument("--switch", action="append", default=[], metavar="T:SPEC",
                      help="switch to SPEC at trace second T of the slice (repeatable)")
    cmp_.add_argument("--out", metavar="DIR", help="folder for logs, compare.json and switch_costs.yaml "
                                                   "(default runs/live/compare-<time>)")
    cmp_.add_argument("--switch-costs-out", metavar="YAML", help="where to write the fitted switch costs "
                                                                  "(default OUT/switch_costs.yaml)")
    return live


def _live_overrides(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in args.live_set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--live-set {item!r}: expected KEY=VALUE, e.g. --live-set router_port=8123")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    if args.model:
        out["model"] = str(Path(args.model).resolve())
    return out




def _check_replay_speed(args: argparse.Namespace) -> None:
    """--replay-speed, when given, must be > 0: checked before the config and the policy load (the controller
    checks it again, after building the simulated world)."""
    if args.replay_speed is not None and not (math.isfinite(args.replay_speed) and args.replay_speed > 0):
        raise ConfigError(f"--replay-speed must be a positive number (trace seconds per wall second), "
                          f"got {args.replay_speed}")


def _model_source(args: argparse.Namespace, control: Any) -> str:
    """Where the live model path came from, for the error message: --model, --live-set or the live YAML."""
    if args.model:
        return "--model"
    if any(item.partition("=")[0].strip() == "model" for item in args.live_set):
        return "--live-set model=..."
    live = Path(control.config.live)
    return f"model: in {live if live.is_absolute() else control.path.parent / live}"


def _check_model_folder(args: argparse.Namespace, control: Any) -> None:
    """The live model must be a folder with config.json before any server starts: otherwise every replica
    fails in its own log (an OSError from transformers) and the run ends with a misleading policy error.
    A bare ``org/name`` is left to vLLM (a hub id, on machines that reach a hub) unless ``org`` is a local
    folder, as ``runs`` in ``runs/tiny``: then it is a path to a folder that is missing."""
    from oserve_rl.live.backend import TINY_MODEL_HINT, model_folder_problem

    problem = model_folder_problem(str(control.live.model), hub_ok=not args.model)  # --model names a folder
    if problem is not None:
        raise ConfigError(f"live model {problem} ({_model_source(args, control)}); {TINY_MODEL_HINT}")


def _run(args: argparse.Namespace) -> int:
    from oserve_rl.live.controller import load_controller_config, open_controller, parse_slice

    _check_replay_speed(args)
    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f"--duration must be > 0 seconds, got {args.duration}")
    if args.interval is not None and not args.interval > 0:
        raise ConfigError(f"--interval must be > 0 seconds, got {args.interval}")
    if args.slice and not args.trace:
        raise ConfigError("--slice needs --trace (the slice of which trace to replay)")
    control = load_controller_config(args.cluster, **_live_overrides(args))
    _check_model_folder(args, control)
    out = Path(args.out or f"runs/live/run-{time.strftime('%Y%m%d-%H%M%S')}")
    with open_controller(args.policy, control, trace=args.trace, slice_s=parse_slice(args.slice),
                         replay_speed=args.replay_speed, interval_wall_s=args.interval, duration_s=args.duration,
                         run_dir=out) as ctl:
        res = ctl.run(initial=args.initial, duration_s=args.duration)
    (out / "summary.json").write_text(json.dumps(res.to_dict(), indent=2, default=float) + "\n")
    if res.replay_summary is not None:
        s = res.replay_summary
        print(f"replay: {s['requests']} requests, {s['ok']} ok, {s['failed']} failed, {s['retried']} retried; "
              f"TTFT p50 {s['ttft_p50_s']:.3f} s p99 {s['ttft_p99_s']:.3f} s; E2E p50 {s['e2e_p50_s']:.3f} s "
              f"p99 {s['e2e_p99_s']:.3f} s; {s['throughput_rps']:.2f} req/s")
    for r in res.switch_reports:
        print(f"switch: {r.summary()}")
    print(f"final: {res.final_deployment} -> live {res.final_live}; wrote {out}/decisions.jsonl and summary.json")
    return 0 if res.replay_summary is None or res.replay_summary["failed"] == 0 else 1


def _compare(args: argparse.Namespace) -> int:
    from oserve_rl.live.compare import parse_switch, run_compare
    from oserve_rl.live.controller import load_controller_config, parse_slice

    _check_replay_speed(args)
    control = load_controller_config(args.cluster, **_live_overrides(args))
    _check_model_folder(args, control)
    out = Path(args.out or f"runs/live/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    res = run_compare(control, trace=args.trace, deployment=args.deployment,
                      slice_s=parse_slice(args.slice) or (0.0, 120.0), replay_speed=args.replay_speed,
                      switches=[parse_switch(s) for s in args.switch], run_dir=out,
                      costs_out=args.switch_costs_out)
    print()
    print(res.table())
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(res.to_dict(), indent=2, default=float) + "\n")
    print(f"\nswitch costs (load_switch_costs OK): {res.costs_path}")
    for k in ("mode", "engine_init_s", "router_update_s", "drain_estimate_s"):
        print(f"  {k}: {getattr(res.costs, k)}")
    print(f"wrote {out}/compare.json")
    return 0 if res.measured["failed"] == 0 else 1


def main(args: argparse.Namespace) -> int:
    if args.live_cmd == "run":
        return _run(args)
    if args.live_cmd == "compare":
        return _compare(args)
    raise AssertionError(args.live_cmd)


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oserve_rl.live.cli")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    args = parser.parse_args(["live", *(sys.argv[1:] if argv is None else argv)])
    try:
        return main(args)
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_standalone())
