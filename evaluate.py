#!/usr/bin/env python
"""Compare deployment policies on identical simulated episodes.

Every policy runs on the same episodes (one per seed: same arrivals, same
cluster, same performance model, same forecast, same decision cadence);
switch costs and each policy's decision wall time are charged in simulated
time. Writes table.md / table.csv / results.json / per_seed.csv and plots
(latency_cdf.png, p99_over_time.png, deployment_timeline.png) to --out.

examples:
  python evaluate.py --cluster h100x16 --model llama-2-70b --trace azure-conv \\
      --rate-scale 2 --duration 1800 --policies vllm_static,oserve --seeds 0,1 --out reports/eval/demo
  python evaluate.py --config configs/eval/quick.yaml
  python evaluate.py --cluster h100x32 --model llama-3.1-70b --trace mooncake-synthetic --policies oserve --out r/mc
  python evaluate.py ... --policies vllm_static,oserve,ppo:runs/quickstart/model.zip
  python evaluate.py --config configs/eval/quick.yaml --seeds 0,1,2 --jobs 4   # episodes in 4 processes
  python evaluate.py --config configs/eval/quick.yaml --rate-scale 1,2,3,4 --policies vllm_static,oserve

Policies: vllm_static, oserve, oserve_oracle, vllm_reload, llumnix,
threshold_autoscaler, brute_force, a trained checkpoint as
ppo:PATH / maskable_ppo:PATH / dqn:PATH / a2c:PATH / rllib:PATH, or your own
Policy subclass as FILE.py:ClassName or package.module:ClassName
(docs/policies.md).
Per-policy parameters go in a --config YAML under `policy_params:`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


CONFIG_KEYS = {"cluster", "model", "trace", "rate_scale", "duration", "start", "policies", "seeds", "out", "json",
               "interval", "decision_time_scale", "decision_delay", "predictor", "mode", "num_types", "slo_ttft",
               "slo_tpot", "max_model_len", "policy_params", "no_plots", "jobs"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with any of the options below (underscores for dashes); flags override it")
    p.add_argument("--cluster", help="cluster preset or YAML (e.g. h100x8, h100x16, h100x32, mixed-a100-h100-h200)")
    p.add_argument("--model", help="model name or Hugging Face id (e.g. llama-2-70b, meta-llama/Llama-3.1-70B)")
    p.add_argument("--trace", help="trace name (azure-conv, azure-code, mooncake-synthetic, servegen:m-large, ...) or path")
    p.add_argument("--rate-scale", help="load multiplier keeping the trace's span (default 1); several, "
                                         "comma-separated (2,4,6), compare the policies across loads (sweep.md, "
                                         "sweep_p99.png; one folder per load)")
    p.add_argument("--duration", type=float, help="episode length in seconds (default: the whole trace)")
    p.add_argument("--start", help="window start in seconds on the trace clock, or 'random' (seeded); default 0")
    p.add_argument("--policies", help="comma-separated policy names, KIND:CHECKPOINT or FILE.py:Class "
                                       "(default vllm_static,oserve)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default 0)")
    p.add_argument("--out", help="output directory (default reports/eval/<cluster>-<model>-<trace>)")
    p.add_argument("--json", help="also write the figures as JSON here ('-' for stdout)")
    p.add_argument("--interval", type=float, help="decision interval in simulated seconds (default 60)")
    p.add_argument("--decision-time-scale", type=float,
                   help="multiply each decision's measured wall time before charging it (default 1)")
    p.add_argument("--decision-delay", type=float,
                   help="charge this fixed delay per decision instead of measured wall time (bit-reproducible runs)")
    p.add_argument("--predictor", help="shared forecast: lstm (bundled), ewma, last-value, moving-average, oracle, or a directory from "
                                       "`python -m oserve_rl forecast train` (default lstm)")
    p.add_argument("--mode", choices=["fast", "exact"], help="replica engine mode (default fast)")
    p.add_argument("--num-types", type=int, help="request types for k-means typing (default 4)")
    p.add_argument("--slo-ttft", type=float, help="TTFT SLO in seconds (default 2)")
    p.add_argument("--slo-tpot", type=float, help="TPOT SLO in seconds (default 0.1)")
    p.add_argument("--max-model-len", type=int, help="engine context limit (default: the model's)")
    p.add_argument("--jobs", "-j", type=int,
                   help="run the (policy, seed) episodes in this many worker processes (default 1); the same "
                        "figures, bit-identical with --decision-delay")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    from oserve_rl.errors import ConfigError

    cfg: dict[str, Any] = {}
    if args.config:
        from oserve_rl.yamlio import read_yaml_mapping

        path = Path(args.config)
        cfg = read_yaml_mapping(path, "a mapping of options", hint=" (evaluation configs live in configs/eval/)")
        cfg = {str(k).replace("-", "_"): v for k, v in cfg.items()}
        unknown = set(cfg) - CONFIG_KEYS
        if unknown:
            import difflib

            hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, CONFIG_KEYS, 1)[0]!r}?)"
                     if difflib.get_close_matches(k, CONFIG_KEYS, 1) else repr(k) for k in sorted(unknown)]
            raise ConfigError(f"{path}: unknown keys {', '.join(hints)}; valid keys: {', '.join(sorted(CONFIG_KEYS))}")
    for k, v in vars(args).items():
        if k != "config" and v is not None and v is not False:
            cfg[k] = v
    for req in ("cluster", "model", "trace"):
        if not cfg.get(req):
            raise ConfigError(f"evaluate.py: --{req} is required (or set `{req}:` in --config)")
    return cfg


def _list(v: Any, cast=str) -> list:
    if isinstance(v, (list, tuple)):
        return [cast(x) for x in v]
    return [cast(x.strip()) for x in str(v).split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    from oserve_rl.errors import ConfigError, OServeError

    args = build_parser().parse_args(argv)
    try:
        cfg = resolve(args)
        from oserve_rl.evaluation import evaluate
        from oserve_rl.policy.forecasting import load_forecaster
        from oserve_rl.policy import Scenario

        start = cfg.get("start", 0.0)
        start = start if start == "random" else float(start)
        try:
            scales = _list(cfg.get("rate_scale", 1.0), float)
        except ValueError:
            raise ConfigError(f"--rate-scale {cfg.get('rate_scale')!r}: give a number or comma-separated numbers "
                              "(e.g. 2 or 2,4,6)") from None
        if not scales or len(set(scales)) != len(scales):
            raise ConfigError(f"--rate-scale {cfg.get('rate_scale')!r}: give distinct loads, e.g. 2,4,6")
        scenarios = {s: Scenario(cluster=cfg["cluster"], model=cfg["model"], trace=str(cfg["trace"]),
                                 rate_scale=s, duration_s=cfg.get("duration"), start_s=start,
                                 num_types=int(cfg.get("num_types", 4)), slo_ttft_s=cfg.get("slo_ttft", 2.0),
                                 slo_tpot_s=cfg.get("slo_tpot", 0.1), max_model_len=cfg.get("max_model_len"))
                     for s in scales}
        scenario = scenarios[scales[0]]
        policies: list[Any] = []
        for name in _list(cfg.get("policies", "vllm_static,oserve")):
            if ":" in name:  # a checkpoint (KIND:PATH) or your own policy (FILE.py:Class)
                from oserve_rl.envs.checkpoints import KINDS, checkpoint_policy

                if name.partition(":")[0] in KINDS:
                    policies.append((name, checkpoint_policy(name)))
                    continue
            from oserve_rl.agents import policy_class

            policy_class(name)  # unknown names fail before anything slow runs
            policies.append(name)
        seeds = _list(cfg.get("seeds", "0"), int)
        out = Path(cfg.get("out") or f"reports/eval/{scenario.cluster}-{scenario.model}-{Path(scenario.trace).stem}")
        forecaster = load_forecaster(cfg.get("predictor", "lstm"))
        params = cfg.get("policy_params") or {}
        if not isinstance(params, dict):
            raise ConfigError("policy_params must map policy names to parameter mappings")
        run = {"interval_s": float(cfg.get("interval", 60.0)), "forecaster": forecaster,
               "decision_time_scale": float(cfg.get("decision_time_scale", 1.0)),
               "decision_delay_s": cfg.get("decision_delay"), "mode": cfg.get("mode", "fast"),
               "policy_params": params, "jobs": int(cfg.get("jobs", 1))}
        plots = not cfg.get("no_plots")
        if len(scales) == 1:
            table = evaluate(scenario, policies, seeds, **run)
            table.write(out, cfg.get("json"), plots=plots)
        else:
            from oserve_rl.evaluation import write_sweep

            tables = {}
            for s in scales:
                print(f"== load {s:g}x", file=sys.stderr)
                tables[s] = evaluate(scenarios[s], policies, seeds, **run)
                tables[s].write(out / f"rate-{s:g}", plots=plots)
            sweep_md = write_sweep(tables, out, cfg.get("json"), plots=plots)
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(scales) > 1:
        print(sweep_md)
        print(f"\nwrote {out}/sweep.md, sweep.json" + ("" if cfg.get("no_plots") else ", sweep_p99.png")
              + f", and each load's tables and plots in {out}/rate-<load>/")
        return 0
    print(table.markdown())
    print(f"\nwrote {out}/table.md, table.csv, results.json, per_seed.csv"
          + ("" if cfg.get("no_plots") else ", latency_cdf.png, p99_over_time.png, deployment_timeline.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
