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
  python evaluate.py ... --policies vllm_static,oserve,maskable_ppo:runs/quickstart/model.zip
  python evaluate.py --config configs/eval/quick.yaml --seeds 0,1,2 --jobs 4   # episodes in 4 processes
  python evaluate.py --config configs/eval/quick.yaml --rate-scale 1,2,3,4 --policies vllm_static,oserve

Policies: vllm_static, oserve, oserve_oracle, vllm_reload, llumnix,
threshold_autoscaler, brute_force, a trained checkpoint as
ppo:PATH / maskable_ppo:PATH / dqn:PATH / a2c:PATH / rllib:PATH (the kind is
the algorithm that trained it: `algo:` in the run's config.yaml; the
quickstart's is maskable_ppo), or your own Policy subclass as
FILE.py:ClassName or package.module:ClassName (docs/policies.md).
Per-policy parameters go in a --config YAML under `policy_params:`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG_KEYS = {"cluster", "model", "trace", "rate_scale", "duration", "start", "policies", "seeds", "out", "json",
               "interval", "decision_time_scale", "decision_delay", "predictor", "mode", "num_types", "slo_ttft",
               "slo_tpot", "max_model_len", "policy_params", "no_plots", "jobs"}
NULLABLE_KEYS = {"slo_ttft", "slo_tpot"}  # YAML null means "no SLO" here; for every other key, "not given"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with any of the options below (underscores for dashes); flags override it")
    p.add_argument("--cluster", help="cluster preset or YAML (e.g. h100x8, h100x16, h100x32, mixed-a100-h100-h200)")
    p.add_argument("--model", help="model name or Hugging Face id (e.g. llama-2-70b, meta-llama/Llama-3.1-70B)")
    p.add_argument("--trace", help="trace name (azure-conv, azure-code, mooncake-synthetic, ...) or path")
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


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """(options, where each came from): the --config YAML's keys overridden by the flags given.

    ``where[key]`` is what an error about that value names: ``--flag`` or ``FILE: key``.
    """
    from oserve_rl.errors import ConfigError

    cfg: dict[str, Any] = {}
    where: dict[str, str] = {}
    if args.config:
        from oserve_rl.yamlio import read_yaml_mapping

        path = Path(args.config)
        raw = read_yaml_mapping(path, "a mapping of options", hint=" (evaluation configs live in configs/eval/)")
        cfg = {str(k).replace("-", "_"): v for k, v in raw.items()}
        unknown = set(cfg) - CONFIG_KEYS
        if unknown:
            import difflib

            hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, CONFIG_KEYS, 1)[0]!r}?)"
                     if difflib.get_close_matches(k, CONFIG_KEYS, 1) else repr(k) for k in sorted(unknown)]
            raise ConfigError(f"{path}: unknown keys {', '.join(hints)}; valid keys: {', '.join(sorted(CONFIG_KEYS))}")
        # A YAML null is "not given" (the default applies), except for the SLOs, where it means "no SLO".
        cfg = {k: v for k, v in cfg.items() if v is not None or k in NULLABLE_KEYS}
        where = {k: f"{path}: {k}" for k in cfg}
    for k, v in vars(args).items():
        if k != "config" and v is not None and v is not False:
            cfg[k] = v
            where[k] = f"--{k.replace('_', '-')}"
    for req in ("cluster", "model", "trace"):
        if not cfg.get(req):
            raise ConfigError(f"evaluate.py: --{req} is required (or set `{req}:` in --config)")
    return cfg, where


# ---------------------------------------------------------------- option values
# Every option is checked here, before anything slow runs: YAML gives any type (``duration: long``), and
# flags parsed as strings (--start, --seeds, --rate-scale) are only numbers once checked.


def _namer(where: dict[str, str]) -> Callable[[str], str]:
    """key -> what an error about its value names: the file and key it came from, else its flag."""
    return lambda key: where.get(key, f"--{key.replace('_', '-')}")


def _bad(where: str, expected: str, value: Any) -> Exception:
    from oserve_rl.errors import ConfigError

    return ConfigError(f"{where}: expected {expected}, got {value!r}")


def _real(value: Any, where: str, expected: str, ok: Callable[[float], bool] = lambda x: True) -> float:
    """A finite number (YAML number or flag string) for which ``ok`` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(where, expected, value)
    try:
        x = float(value)
    except ValueError:
        raise _bad(where, expected, value) from None
    if not (math.isfinite(x) and ok(x)):
        raise _bad(where, expected, value)
    return x


_INT_RE = re.compile(r"\s*[+-]?\d+\s*")


def _whole(value: Any, where: str, expected: str, lowest: int) -> int:
    """A whole number >= ``lowest`` (YAML int, an integral float, or a flag string of digits)."""
    if isinstance(value, bool):
        raise _bad(where, expected, value)
    if isinstance(value, int):
        n = value
    elif (isinstance(value, float) and value.is_integer()) or (isinstance(value, str) and _INT_RE.fullmatch(value)):
        n = int(value)
    else:
        raise _bad(where, expected, value)
    if n < lowest:
        raise _bad(where, expected, value)
    return n


def _items(value: Any, where: str, expected: str) -> list[Any]:
    """A YAML list, a single YAML scalar, or a comma-separated flag string as a list of items."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    raise _bad(where, expected, value)


def _text(value: Any, where: str, expected: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, expected, value)
    return value


def parse_start(value: Any, where: str = "--start") -> float | str:
    """Window start: seconds >= 0 on the trace clock, or 'random' (a start before the trace is no window)."""
    if value == "random":
        return "random"
    return _real(value, where, "seconds >= 0 or 'random'", lambda x: x >= 0)


def parse_seeds(value: Any, where: str = "--seeds") -> list[int]:
    """Seeds are numpy generator seeds: whole numbers >= 0, each once (a repeated seed is the same episode)."""
    expected = "comma-separated whole numbers >= 0, e.g. 0,1,2"
    seeds = [_whole(s, where, expected, 0) for s in _items(value, where, expected)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise _bad(where, "distinct " + expected, value)
    return seeds


def parse_rate_scales(value: Any, where: str = "--rate-scale") -> list[float]:
    expected = "a load multiplier > 0, or comma-separated numbers > 0 for several loads (e.g. 2 or 2,4,6)"
    scales = [_real(s, where, expected, lambda x: x > 0) for s in _items(value, where, expected)]
    if not scales or len(set(scales)) != len(scales):
        raise _bad(where, "distinct loads > 0, e.g. 2,4,6", value)
    return scales


def parse_policy_list(value: Any, where: str = "--policies") -> list[str]:
    expected = "comma-separated policy names, KIND:CHECKPOINT or FILE.py:Class (e.g. vllm_static,oserve)"
    names = [_text(n, where, expected) for n in _items(value, where, expected)]
    if not names:
        raise _bad(where, expected, value)
    return names


def check_options(cfg: dict[str, Any], where: dict[str, str]) -> dict[str, Any]:
    """Every option's type and range, with defaults filled in; one ``ConfigError`` naming the flag or file key."""
    w = _namer(where)
    opt: dict[str, Any] = {
        "cluster": _text(cfg["cluster"], w("cluster"), "a cluster preset or YAML path (e.g. h100x16)"),
        "model": _text(cfg["model"], w("model"), "a model name or Hugging Face id (e.g. llama-2-70b)"),
        "trace": _text(cfg["trace"], w("trace"), "a trace name or path (e.g. azure-conv)"),
        "rate_scales": parse_rate_scales(cfg.get("rate_scale", 1.0), w("rate_scale")),
        "start_s": parse_start(cfg.get("start", 0.0), w("start")),
        "policies": parse_policy_list(cfg.get("policies", "vllm_static,oserve"), w("policies")),
        "seeds": parse_seeds(cfg.get("seeds", 0), w("seeds")),
        "interval_s": _real(cfg.get("interval", 60.0), w("interval"), "simulated seconds > 0", lambda x: x > 0),
        "decision_time_scale": _real(cfg.get("decision_time_scale", 1.0), w("decision_time_scale"),
                                     "a multiplier >= 0", lambda x: x >= 0),
        "predictor": _text(cfg.get("predictor", "lstm"), w("predictor"),
                           "a predictor name (lstm, ewma, ...) or a `forecast train` folder"),
        "num_types": _whole(cfg.get("num_types", 4), w("num_types"), "a whole number of request types >= 1", 1),
        "jobs": _whole(cfg.get("jobs", 1), w("jobs"), "a whole number of worker processes >= 1", 1),
        "no_plots": cfg.get("no_plots", False),
        "policy_params": cfg.get("policy_params", {}),
    }
    # None means "not given" (the trace's end, the model's context, measured decision time); 0 is a value, and a
    # wrong one, not another spelling of the default.
    opt["duration_s"] = (None if cfg.get("duration") is None else
                         _real(cfg["duration"], w("duration"), "seconds > 0 (omit it for the whole trace)",
                               lambda x: x > 0))
    opt["max_model_len"] = (None if cfg.get("max_model_len") is None else
                            _whole(cfg["max_model_len"], w("max_model_len"), "a context length in tokens >= 1", 1))
    opt["decision_delay_s"] = (None if cfg.get("decision_delay") is None else
                               _real(cfg["decision_delay"], w("decision_delay"), "seconds >= 0", lambda x: x >= 0))
    # The SLOs' range is the Scenario's to check (its error names slo_ttft_s / slo_tpot_s); null means none.
    for key, default in (("slo_ttft", 2.0), ("slo_tpot", 0.1)):
        v = cfg.get(key, default)
        opt[key + "_s"] = None if v is None else _real(v, w(key), "seconds > 0 (or null for no SLO)")
    mode = cfg.get("mode", "fast")
    if mode not in ("fast", "exact"):
        raise _bad(w("mode"), "'fast' or 'exact'", mode)
    opt["mode"] = mode
    if not isinstance(opt["no_plots"], bool):
        raise _bad(w("no_plots"), "true or false", opt["no_plots"])
    for key in ("out", "json"):
        opt[key] = None if cfg.get(key) is None else _text(cfg[key], w(key), "a path")
    return opt  # policy_params: check_policy_params, against the policies being evaluated


def check_writable_dir(path: Path, where: str) -> None:
    """Fail now, not after the whole evaluation, if ``path`` cannot become a directory we can write to.

    Creates what is missing to find out, then removes what it created: the check leaves nothing behind.
    """
    from oserve_rl.errors import ConfigError

    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where} {path}: exists and is not a directory; give a directory to write the results to")
    created: list[Path] = []
    probe = path
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"{where} {path}: cannot write there ({e.strerror or e}); give a directory you can "
                          "create and write to") from None
    finally:
        for d in created:  # deepest first
            try:
                d.rmdir()
            except OSError:
                pass


def check_json_path(json_path: str | None, where: str = "--json") -> None:
    """``--json PATH`` ('-': standard output) must be a file we can write once the evaluation is done."""
    from oserve_rl.errors import ConfigError

    if json_path is None or json_path == "-":
        return
    path = Path(json_path)
    if path.is_dir():
        raise ConfigError(f"{where} {path}: is a directory; give a file path for the figures' JSON (or '-')")
    check_writable_dir(path.parent, where)


def main(argv: list[str] | None = None) -> int:
    from oserve_rl.errors import ConfigError, OServeError

    args = build_parser().parse_args(argv)
    try:
        cfg, where = resolve(args)
        opt = check_options(cfg, where)
        w = _namer(where)
        from oserve_rl.evaluation import (
            check_policy_params,
            evaluate,
            policy_entry,
            trace_window,
            window_note,
        )
        from oserve_rl.policy import Scenario
        from oserve_rl.policy.forecasting import load_forecaster

        scales = opt["rate_scales"]
        scenarios = {s: Scenario(cluster=opt["cluster"], model=opt["model"], trace=opt["trace"], rate_scale=s,
                                 duration_s=opt["duration_s"], start_s=opt["start_s"], num_types=opt["num_types"],
                                 slo_ttft_s=opt["slo_ttft_s"], slo_tpot_s=opt["slo_tpot_s"],
                                 max_model_len=opt["max_model_len"])
                     for s in scales}
        scenario = scenarios[scales[0]]
        out = Path(opt["out"] or f"reports/eval/{scenario.cluster}-{scenario.model}-{Path(scenario.trace).stem}")
        check_writable_dir(out, w("out"))
        check_json_path(opt["json"], w("json"))
        window = trace_window(scenario)
        if window["start_s"] != "random" and window["arrivals_s"] <= 0:
            raise ConfigError(f"{w('start')} {window['start_s']:g}: past the end of trace {scenario.trace!r} "
                              f"({window['trace_span_s']:.1f} s); give a start in [0, {window['trace_span_s']:.1f})")
        # A window past the trace's end runs, as the env's validation windows do; say how much of it has arrivals.
        note = window_note(scenario, window)
        if note:
            print(note, file=sys.stderr)
        check_policy_params(opt["policy_params"], opt["policies"], w("policy_params"))
        # Unknown names, missing files and wrong checkpoint kinds fail here, before anything slow runs.
        policies = [policy_entry(name) for name in opt["policies"]]
        forecaster = load_forecaster(opt["predictor"])
        run = {"interval_s": opt["interval_s"], "forecaster": forecaster,
               "decision_time_scale": opt["decision_time_scale"], "decision_delay_s": opt["decision_delay_s"],
               "mode": opt["mode"], "policy_params": opt["policy_params"], "jobs": opt["jobs"]}
        plots = not opt["no_plots"]
        seeds = opt["seeds"]
        if len(scales) == 1:
            table = evaluate(scenario, policies, seeds, **run)
            table.write(out, opt["json"], plots=plots)
        else:
            from oserve_rl.evaluation import write_sweep

            tables = {}
            for s in scales:
                print(f"== load {s:g}x", file=sys.stderr)
                tables[s] = evaluate(scenarios[s], policies, seeds, **run)
                tables[s].write(out / f"rate-{s:g}", plots=plots)
            sweep_md = write_sweep(tables, out, opt["json"], plots=plots)
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(scales) > 1:
        print(sweep_md)
        print(f"\nwrote {out}/sweep.md, sweep.json" + ("" if opt["no_plots"] else ", sweep_p99.png")
              + f", and each load's tables and plots in {out}/rate-<load>/")
        if note:
            print(note, file=sys.stderr)
        return 0
    print(table.markdown())
    print(f"\nwrote {out}/table.md, table.csv, results.json, per_seed.csv"
          + ("" if opt["no_plots"] else ", latency_cdf.png, p99_over_time.png, deployment_timeline.png"))
    if note:  # again under the table: the progress bars have scrolled the first one away
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
