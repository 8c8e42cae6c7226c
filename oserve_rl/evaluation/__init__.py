"""Compare policies on identical episodes: the figures evaluate.py prints, writes and plots.

    >>> from oserve_rl.evaluation import evaluate
    >>> from oserve_rl.policy import Scenario
    >>> table = evaluate(Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=600), ["vllm_static"], seeds=[0])
    >>> table.figures["vllm_static"]["e2e_s"]["p99"] > 0
    True

Per seed the episode is built once and every policy runs on it, so all
policies see the same arrivals. Figures are per episode, then averaged over
seeds (``per_seed`` keeps each).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oserve_rl.checks import is_seed
from oserve_rl.errors import ConfigError, OServeError
from oserve_rl.policy import EpisodeResult, Policy, Scenario, run_policy

FIGURE_KEYS = ("e2e_s", "ttft_s", "tpot_s", "throughput_rps", "slo_attainment", "slo_scale_95", "slo_scale_99",
               "switches", "switch_downtime_s", "decision_s_mean", "decision_s_max")


def episode_figures(res: EpisodeResult) -> dict[str, Any]:
    """The issue's figure set for one episode (JSON-ready; None where undefined)."""
    s = res.summary
    dec = [d["decision_s"] for d in res.decisions]
    return {
        "e2e_s": {"p50": s["e2e_s"]["p50"], "p99": s["e2e_s"]["p99"]},
        "ttft_s": {"p50": s["ttft_s"]["p50"], "p99": s["ttft_s"]["p99"]},
        "tpot_s": {"p50": s["tpot_s"]["p50"], "p99": s["tpot_s"]["p99"]},
        "throughput_rps": s["throughput_rps"],
        "slo_attainment": s["slo"]["attainment"],
        "slo_scale_95": s.get("slo_scale_p95"),
        "slo_scale_99": s.get("slo_scale_p99"),
        "switches": s["switches"],
        "switch_downtime_s": s["switch_downtime_s"],
        "decision_s_mean": float(np.mean(dec)) if dec else None,
        "decision_s_max": float(np.max(dec)) if dec else None,
        "completed": s["completed"], "rejected": s["rejected"], "requests": s["requests"],
    }


def _mean(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {k: _mean([v[k] for v in values]) for k in values[0]}
    nums = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(nums)) if nums else None


@dataclass
class EvalTable:
    scenario: Scenario
    seeds: list[int]
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)         # policy -> mean over seeds
    per_seed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # policy -> one per seed
    results: dict[str, list[EpisodeResult]] = field(default_factory=dict)
    describe: dict[str, dict[str, Any]] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)  # trace_window(scenario): where the arrivals really end

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for name, f in self.figures.items():
            out.append({
                "policy": name, "p50 E2E s": f["e2e_s"]["p50"], "p99 E2E s": f["e2e_s"]["p99"],
                "p50 TTFT s": f["ttft_s"]["p50"], "p99 TTFT s": f["ttft_s"]["p99"],
                "p50 TPOT s": f["tpot_s"]["p50"], "p99 TPOT s": f["tpot_s"]["p99"],
                "throughput rps": f["throughput_rps"], "SLO attain": f["slo_attainment"],
                "SLO-scale@95": f["slo_scale_95"], "SLO-scale@99": f["slo_scale_99"],
                "switches": f["switches"], "switch down s": f["switch_downtime_s"],
                "decision s mean": f["decision_s_mean"], "decision s max": f["decision_s_max"],
            })
        return out

    def markdown(self) -> str:
        from tabulate import tabulate

        rows = self.rows()
        return tabulate([list(r.values()) for r in rows], headers=list(rows[0]), tablefmt="github", floatfmt=".4g")

    def to_json(self) -> dict[str, Any]:
        return {name: {k: f[k] for k in FIGURE_KEYS} for name, f in self.figures.items()}

    def write(self, out_dir: str | Path, json_path: str | Path | None = None, plots: bool = True) -> Path:
        import pandas as pd

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(self.markdown() + "\n")
        pd.DataFrame(self.rows()).to_csv(out / "table.csv", index=False)
        rows = []
        for name, lst in self.per_seed.items():
            for seed, f in zip(self.seeds, lst):
                rows.append({"policy": name, "seed": seed, **_flatten(f)})
        pd.DataFrame(rows).to_csv(out / "per_seed.csv", index=False)
        blob = json.dumps(self.to_json(), indent=2, allow_nan=False)
        (out / "results.json").write_text(blob + "\n")
        meta = {"scenario": self.scenario.to_dict(), "window": self.window, "seeds": self.seeds,
                "policies": self.describe}
        (out / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        _write_json(blob, json_path)
        if plots:
            from oserve_rl.evaluation.plots import plot_all

            plot_all(self, out)
        return out


def _write_json(blob: str, json_path: str | Path | None) -> None:
    """``--json PATH``: also write the figures there ('-': standard output)."""
    if json_path is None:
        return
    if str(json_path) == "-":
        print(blob)
    else:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(blob + "\n")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = v
    return out


PolicyFactory = Callable[[], Policy]


def trace_window(scenario: Scenario) -> dict[str, Any]:
    """Where the scenario's window lies on its trace, for run.json and evaluate.py's note.

    ``Scenario.build`` runs the window it is given for its whole duration, as the env runs its validation
    windows (the quickstart's [2400, 3600) s on the 3501.7 s azure-conv trace, which evaluate.py must
    reproduce): a window that overhangs the trace's end is kept, but requests arrive only until the end.
    ``arrivals_s`` is how long they do; the control loop still decides over all of ``duration_s`` (decisions
    and switches in the empty tail count), while the latency and throughput figures cover the requests there are.
    Spans are the unscaled trace's (``rate_scale`` keeps it, but for up to 30 s of copies' jitter).
    """
    from oserve_rl.workload import trace_span_s

    span_s = trace_span_s(scenario.trace) if isinstance(scenario.trace, str) else scenario.trace.duration_s
    if scenario.start_s == "random":  # drawn per seed, inside the trace unless the window is longer than it
        start_s: float | str = "random"
        dur_s = span_s if scenario.duration_s is None else float(scenario.duration_s)
        arrivals_s = min(dur_s, span_s)
    else:
        start_s = float(scenario.start_s)
        dur_s = span_s - start_s if scenario.duration_s is None else float(scenario.duration_s)
        arrivals_s = max(0.0, min(dur_s, span_s - start_s))
    return {"start_s": start_s, "duration_s": dur_s, "trace_span_s": span_s, "arrivals_s": arrivals_s,
            "past_trace_end": arrivals_s < dur_s}


def window_note(scenario: Scenario, window: dict[str, Any]) -> str | None:
    """One line telling that the window runs past the trace's end (None if it does not)."""
    if not window["past_trace_end"]:
        return None
    start = window["start_s"]
    where = "the window" if start == "random" else f"the window [{start:g}, {start + window['duration_s']:g}) s"
    return (f"note: {where} runs past the end of trace {scenario.trace!r} ({window['trace_span_s']:.1f} s): requests "
            f"arrive in its first {window['arrivals_s']:.1f} s only; the episode still runs {window['duration_s']:g} s "
            "(policies keep deciding over the empty rest); run.json records both as window.arrivals_s and "
            "window.duration_s")


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def check_run_options(seeds: Sequence[int], *, interval_s: float, decision_time_scale: float,
                      decision_delay_s: float | None, mode: str, jobs: int) -> None:
    """What ``evaluate`` runs with, checked before any episode is built (an interval of 0 would divide by zero
    when sizing the progress bars; a negative seed would fail deep inside numpy)."""
    if not seeds:
        raise ConfigError("evaluate: no seeds given")
    bad = [s for s in seeds if not is_seed(s)]
    if bad:
        raise ConfigError(f"evaluate: seeds must be whole numbers >= 0 (numpy generator seeds), got {bad[0]!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"evaluate: seeds must be distinct (a repeated seed is the same episode), got {list(seeds)}")
    if not (_is_real(interval_s) and interval_s > 0):
        raise ConfigError(f"evaluate: interval_s must be simulated seconds > 0, got {interval_s!r}")
    if not (_is_real(decision_time_scale) and decision_time_scale >= 0):
        raise ConfigError(f"evaluate: decision_time_scale must be a multiplier >= 0, got {decision_time_scale!r}")
    if decision_delay_s is not None and not (_is_real(decision_delay_s) and decision_delay_s >= 0):
        raise ConfigError(f"evaluate: decision_delay_s must be seconds >= 0 or None (measured), "
                          f"got {decision_delay_s!r}")
    if mode not in ("fast", "exact"):
        raise ConfigError(f"evaluate: mode must be 'fast' or 'exact', got {mode!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs < 1:
        raise ConfigError(f"evaluate: jobs must be a whole number >= 1, got {jobs!r}")


def check_policy_params(params: Any, policies: Sequence[str], where: str = "policy_params",
                        factories: Sequence[str] = ()) -> None:
    """Every ``policy_params`` key must be a policy being evaluated that takes parameters: a misspelt key would
    otherwise be ignored and the policy silently run with its defaults. ``factories`` are labels of
    (label, factory) entries, which build their policies themselves."""
    import difflib

    from oserve_rl.envs.checkpoints import KINDS

    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping of policy name to its parameters, got {params!r}")
    for key, value in params.items():
        if str(key).partition(":")[0] in KINDS and key in policies:
            raise ConfigError(f"{where}: {key!r} is a trained checkpoint: it takes no parameters (its behaviour is "
                              "its weights and the env options it was trained with)")
        if key in factories:
            raise ConfigError(f"{where}: {key!r} is built by the factory passed with it: give its parameters there")
        if key not in policies:
            close = difflib.get_close_matches(str(key), list(policies), n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: {key!r} is not a policy being evaluated (policies: "
                              f"{', '.join(policies)}){hint}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping of parameter names to values, got {value!r}")


def _not_a_policy(spec: str, kind: str) -> ConfigError:
    """``KIND:PATH`` with a KIND that is neither a checkpoint kind nor an importable module."""
    import difflib

    from oserve_rl.agents import policy_names
    from oserve_rl.envs.checkpoints import KINDS

    close = difflib.get_close_matches(kind.lower(), KINDS, n=2, cutoff=0.4)
    hint = f"; did you mean {' or '.join(f'{c}:...' for c in close)}?" if close else ""
    return ConfigError(f"policy {spec!r}: {kind!r} is not a checkpoint kind{hint} (checkpoint kinds, as KIND:PATH: "
                       f"{', '.join(KINDS)}; policies: {', '.join(sorted(policy_names()))}; or your own "
                       "Policy subclass as FILE.py:ClassName or package.module:ClassName)")


def policy_entry(spec: str) -> str | tuple[str, PolicyFactory]:
    """One entry of evaluate.py's ``--policies``, checked now so nothing slow runs before a typo shows.

    A registry name stays a name; ``KIND:PATH`` becomes (spec, checkpoint factory), loaded once here (missing
    file, wrong spaces, wrong kind); ``FILE.py:Class`` / ``package.module:Class`` stay names (``make_policy``
    loads them).
    """
    import importlib.util

    from oserve_rl.agents import policy_class
    from oserve_rl.envs.checkpoints import KINDS, checkpoint_policy

    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        return spec, checkpoint_policy(spec)
    if sep and not kind.endswith(".py"):
        # ``sac:/tmp/x.zip``: the part after the colon is no class name, or the part before no module: the user
        # meant a checkpoint of a kind that does not exist, not a module to import.
        try:
            importable = importlib.util.find_spec(kind) is not None
        except (ImportError, ValueError):
            importable = False
        if not rest.isidentifier() or not importable:
            raise _not_a_policy(spec, kind)
    policy_class(spec)  # unknown names fail before anything slow runs
    return spec


def evaluate(scenario: Scenario, policies: Sequence[str | tuple[str, PolicyFactory]], seeds: Sequence[int] = (0,), *,
             interval_s: float = 60.0, forecaster: Any = None, decision_time_scale: float = 1.0,
             decision_delay_s: float | None = None, mode: str = "fast", progress: bool = True,
             policy_params: dict[str, dict[str, Any]] | None = None, jobs: int = 1) -> EvalTable:
    """Run every policy on every seed's episode; ``policies`` are registry names or (label, factory) pairs.

    ``jobs`` > 1 runs the (policy, seed) episodes in that many worker processes: the same episodes, and
    the same simulated figures (bit-identical with ``decision_delay_s``; measured decision times are charged
    otherwise, and workers competing for cores would lengthen them), in a fraction of the time on a
    machine with cores to spare.
    """
    from oserve_rl.agents import make_policy

    if not isinstance(scenario, Scenario):
        raise ConfigError(f"evaluate: scenario must be a Scenario (oserve_rl.policy.Scenario(cluster, model, trace, "
                          f"...)), got {type(scenario).__name__} {scenario!r:.80}")
    if isinstance(policies, (str, bytes)) or not isinstance(policies, Sequence):
        raise ConfigError(f"evaluate: policies must be a list of policy names or (label, factory) pairs, e.g. "
                          f"['vllm_static', 'oserve'], got {policies!r:.80}")
    if not policies:
        raise ConfigError("evaluate: no policies given")
    for p in policies:
        if isinstance(p, str):
            continue
        if not (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and callable(p[1])):
            raise ConfigError(f"evaluate: each entry of policies must be a policy name or a (label, factory) pair "
                              f"with a str label and a callable factory returning a Policy, got {p!r:.80}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise ConfigError(f"evaluate: seeds must be a sequence of whole numbers >= 0, e.g. [0], got {seeds!r:.80}")
    if isinstance(forecaster, str):  # a predictor name or a trained folder, as evaluate.py's --predictor takes
        from oserve_rl.policy.forecasting import load_forecaster

        forecaster = load_forecaster(forecaster)
    if forecaster is not None and not callable(getattr(forecaster, "predict", None)):
        raise ConfigError(f"evaluate: forecaster must be a predictor name (e.g. 'ewma'), a trained predictor folder, "
                          f"an object with predict(history), or None; got {forecaster!r:.80}")
    check_run_options(seeds, interval_s=interval_s, decision_time_scale=decision_time_scale,
                      decision_delay_s=decision_delay_s, mode=mode, jobs=jobs)
    params = {} if policy_params is None else policy_params
    check_policy_params(params, [p for p in policies if isinstance(p, str)],
                        factories=[p[0] for p in policies if not isinstance(p, str)])
    named: list[tuple[str, PolicyFactory]] = []
    for p in policies:
        if isinstance(p, tuple):
            named.append(p)
        else:
            make_policy(p, **params.get(p, {}))  # fail fast on unknown names / bad parameters
            named.append((p, lambda p=p: make_policy(p, **params.get(p, {}))))
    labels = [n for n, _ in named]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"evaluate: policy names must be unique, got {labels}")
    episodes = {seed: scenario.build(seed=seed) for seed in seeds}
    run_kw = {"interval_s": interval_s, "forecaster": forecaster, "decision_time_scale": decision_time_scale,
              "decision_delay_s": decision_delay_s, "mode": mode}
    table = EvalTable(scenario, list(seeds), window=trace_window(scenario))
    if int(jobs) > 1 and len(named) * len(seeds) > 1:
        done = _run_parallel(named, episodes, run_kw, int(jobs), progress)
    else:
        done = {}
        intervals = {seed: max(1, math.ceil(ep.duration_s / interval_s - 1e-9)) for seed, ep in episodes.items()}
        for label, factory in named:
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=sum(intervals.values()), desc=f"{label:>22}", unit="interval", leave=True)
            for seed in seeds:
                done[label, seed] = _run_one(factory, episodes[seed], run_kw, bar)
            if bar is not None:
                bar.close()
    for label, _ in named:
        results = [done[label, seed][0] for seed in seeds]
        table.describe[label] = done[label, seeds[-1]][1]
        table.results[label] = results
        table.per_seed[label] = [episode_figures(r) for r in results]
        table.figures[label] = _mean(table.per_seed[label])
    return table


def _run_one(factory: PolicyFactory, episode: Any, run_kw: dict[str, Any], bar: Any = None
             ) -> tuple[EpisodeResult, dict[str, Any]]:
    """One policy on one episode: (its result, ``policy.describe()``)."""
    policy = factory()
    if not (isinstance(policy, Policy) or hasattr(policy, "run_episode")):
        raise ConfigError(f"evaluate: a policy factory must return a Policy (oserve_rl.policy.Policy), "
                          f"{getattr(factory, '__name__', factory)!r} returned {type(policy).__name__} {policy!r:.80}")
    if hasattr(policy, "run_episode"):  # a trained agent: it acts through the env on this same episode
        res = policy.run_episode(episode)
        if bar is not None:
            bar.update(max(1, math.ceil(episode.duration_s / run_kw["interval_s"] - 1e-9)))
    else:
        res = run_policy(policy, episode, progress=bar, **run_kw)
    return res, policy.describe()


def _run_pickled(task: bytes) -> tuple[EpisodeResult, dict[str, Any]]:
    import cloudpickle

    factory, episode, run_kw = cloudpickle.loads(task)
    return _run_one(factory, episode, run_kw)


def _run_parallel(named: list[tuple[str, PolicyFactory]], episodes: dict[int, Any], run_kw: dict[str, Any],
                  jobs: int, progress: bool) -> dict[tuple[str, int], tuple[EpisodeResult, dict[str, Any]]]:
    """``_run_one`` for every (policy, seed) in ``jobs`` worker processes. Factories are often lambdas
    (``make_policy`` with parameters, checkpoint loaders, scripts' variants): cloudpickle carries them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    import cloudpickle

    from oserve_rl.parallel import worker_start_method

    bars: dict[str, Any] = {}
    if progress:  # a bar per policy, as in the serial loop; they move by whole episodes here
        from tqdm import tqdm

        bars = {label: tqdm(total=len(episodes), desc=f"{label:>22}", unit="episode", leave=True, position=i)
                for i, (label, _) in enumerate(named)}
    done = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(worker_start_method())) as pool:
        futures = {pool.submit(_run_pickled, cloudpickle.dumps((factory, episodes[seed], run_kw))): (label, seed)
                   for label, factory in named for seed in episodes}
        try:
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()  # a worker's error (e.g. a ConfigError) is raised here
                if bars:
                    bars[futures[fut][0]].update(1)
        except BrokenProcessPool:
            pool.shutdown(cancel_futures=True)
            raise OServeError("evaluate: a worker process died before it could run an episode. With jobs > 1 the "
                              "workers re-import the calling script: run it from a .py file whose evaluation sits "
                              "under `if __name__ == \"__main__\":` (not from standard input), or use jobs=1; "
                              "the worker's own error is printed above") from None
        except BaseException:
            pool.shutdown(cancel_futures=True)  # do not run the rest of the grid after a failure
            raise
    for bar in bars.values():
        bar.close()
    return done


def write_sweep(tables: dict[float, EvalTable], out_dir: str | Path, json_path: str | Path | None = None,
                plots: bool = True) -> str:
    """Several loads of one scenario (``{rate_scale: table}``, each already written to its own folder):
    ``sweep.md`` (p99 E2E and SLO attainment per policy and load), ``sweep.json`` (``{rate_scale: {policy:
    figures}}``) and ``sweep_p99.png``. Returns the markdown."""
    from tabulate import tabulate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scales = sorted(tables)
    sweep = {s: tables[s].to_json() for s in scales}
    names = list(sweep[scales[0]])
    cell = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    rows = [[name] + [cell(sweep[s][name]["e2e_s"]["p99"], ".4g") for s in scales]
            + [cell(sweep[s][name]["slo_attainment"], ".3f") for s in scales] for name in names]
    headers = (["policy"] + [f"p99 E2E s @{s:g}x" for s in scales] + [f"SLO attain @{s:g}x" for s in scales])
    md = tabulate(rows, headers=headers, tablefmt="github")
    (out / "sweep.md").write_text(md + "\n")
    blob = json.dumps({f"{s:g}": f for s, f in sweep.items()}, indent=2, allow_nan=False)
    (out / "sweep.json").write_text(blob + "\n")
    _write_json(blob, json_path)
    if plots:
        from oserve_rl.evaluation.plots import load_sweep

        load_sweep(sweep, tables[scales[0]].scenario, out / "sweep_p99.png")
    return md


__all__ = ["FIGURE_KEYS", "EvalTable", "check_policy_params", "check_run_options", "episode_figures", "evaluate",
           "policy_entry", "trace_window", "window_note", "write_sweep"]
