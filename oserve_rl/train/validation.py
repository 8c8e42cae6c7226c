"""Validation episodes shared by both backends: the agent and the heuristics on the same windows.

``check_runnable`` checks, before a run starts, what would otherwise fail minutes into it, after its
run directory exists: the names in ``env`` and ``eval``, the validation windows, the hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from oserve_rl.envs.config import DeployEnvConfig
from oserve_rl.envs.policies import ENV_POLICIES, env_policy, run_env_episode
from oserve_rl.errors import ConfigError, OServeError
from oserve_rl.policy import Scenario
from oserve_rl.train.config import TrainConfig
from oserve_rl.workload import trace_span_s

T = TypeVar("T")

METRICS = ("p99_e2e_s", "p50_e2e_s", "slo_attainment", "throughput_rps", "switches", "switch_downtime_s", "return")


def _at(field: str, check: Callable[[], T]) -> T:
    """``check()``, its error said as one about ``field`` of the train config."""
    try:
        return check()
    except OServeError as e:
        raise ConfigError(f"{field}: {str(e).removeprefix('scenario: ')}") from None


def check_env_names(env_cfg: DeployEnvConfig) -> None:
    """Every cluster, model and trace exists, each model fits each cluster, ``initial`` and ``predictor`` load:
    otherwise the first reset fails, in a worker process, after the run directory is written."""
    from oserve_rl.catalog import get_cluster, get_model
    from oserve_rl.cluster import enumerate_replica_configs, parse_deployment
    from oserve_rl.perf import EngineConfig
    from oserve_rl.policy.forecasting import load_forecaster

    clusters = [_at("env.clusters", lambda c=c: get_cluster(c)) for c in env_cfg.clusters]
    models = [_at("env.models", lambda m=m: get_model(m)).name for m in env_cfg.models]
    for trace in env_cfg.traces:
        _at("env.traces", lambda t=trace: trace_span_s(t))
    for name, spec in zip(env_cfg.clusters, clusters):
        for model in models:
            if not enumerate_replica_configs(model, spec, EngineConfig()):
                raise ConfigError(f"env: no replica config of {model} (env.models) fits cluster {name} "
                                  "(env.clusters): pick a larger cluster or a smaller model")
            if env_cfg.initial != "oserve":
                _at("env.initial", lambda m=model, c=spec: parse_deployment(env_cfg.initial, c, m))
    _at("env.predictor", lambda: load_forecaster(env_cfg.predictor))


def check_eval(cfg: TrainConfig, env_cfg: DeployEnvConfig) -> None:
    """The heuristics exist and every validation window builds (its names, its start inside the trace)."""
    from oserve_rl.catalog import get_cluster, get_model

    for name in cfg.eval.heuristics:
        if name not in ENV_POLICIES:
            _at("eval.heuristics", lambda n=name: env_policy(n))
    for i, w in enumerate(cfg.eval.windows):
        at = f"eval.windows[{i}]"
        if w.cluster is not None:
            _at(f"{at}.cluster", lambda c=w.cluster: get_cluster(c))
        if w.model is not None:
            _at(f"{at}.model", lambda m=w.model: get_model(m))
        trace = w.trace or env_cfg.traces[0]
        span_s = _at(f"{at}.trace" if w.trace else "env.traces", lambda t=trace: trace_span_s(t))
        if w.start_s >= span_s:
            raise ConfigError(f"{at}.start_s: {w.start_s:g} s is past the end of trace {trace!r}; valid: "
                              f"0 <= start_s < {span_s:g}")
    scenarios = _at("eval.windows", lambda: validation_scenarios(cfg))
    for i, (scen, data_seed) in enumerate(scenarios):
        # Builds the window's arrivals and request types (~0.1 s): no arrivals in it, too few to type, ...
        _at(f"eval.windows[{i}]", lambda s=scen, d=data_seed: s.build(seed=d))


def check_runnable(cfg: TrainConfig, env_cfg: DeployEnvConfig) -> None:
    """What ``load_train_config`` checks beyond the schema; errors name the field (the caller adds the file)."""
    check_env_names(env_cfg)
    check_eval(cfg, env_cfg)
    if cfg.backend == "rllib":
        from oserve_rl.train.rllib import check_hyperparams
    else:
        from oserve_rl.train.sb3 import check_hyperparams
    check_hyperparams(cfg)


def validation_scenarios(cfg: TrainConfig) -> list[tuple[Scenario, int]]:
    env_cfg = cfg.env_config()
    out = []
    for w in cfg.eval.windows:
        rate = w.rate_scale
        if rate is None:
            rs = env_cfg.rate_scale
            rate = float(rs) if isinstance(rs, (int, float)) else float(np.mean(rs))
        scen = Scenario(cluster=w.cluster or env_cfg.clusters[0], model=w.model or env_cfg.models[0],
                        trace=w.trace or env_cfg.traces[0], rate_scale=rate, duration_s=env_cfg.episode_s,
                        start_s=w.start_s, num_types=env_cfg.num_types, slo_ttft_s=env_cfg.slo_ttft_s,
                        slo_tpot_s=env_cfg.slo_tpot_s, typer_seed=0)
        out.append((scen, w.data_seed))
    return out


def evaluate_on_windows(env: Any, act: Callable[[dict[str, np.ndarray], Any], int],
                        scenarios: list[tuple[Scenario, int]]) -> dict[str, float]:
    """Mean of each metric over the validation windows."""
    rows = [run_env_episode(env, act, seed=0, options={"scenario": s, "data_seed": d}) for s, d in scenarios]
    out = {}
    for k in METRICS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def validation_line(step: int, total_steps: int, elapsed_s: float, res: dict[str, dict[str, float]],
                    start_step: int = 0) -> str:
    """One line per evaluation, printed as training goes: a run logged to a file (no live progress bar
    there) shows how far it is and how the agent compares, without opening TensorBoard. A run continued
    from a checkpoint (``start_step`` > 0) counts on from it; its speed is over its own steps."""
    p99 = " | ".join(f"{name} {m['p99_e2e_s']:.2f} s" for name, m in res.items())
    return (f"step {step:,}/{start_step + total_steps:,} ({(step - start_step) / max(elapsed_s, 1e-9):.1f} "
            f"steps/s): validation p99 E2E {p99}")


def heuristic_baselines(env: Any, names: list[str], scenarios: list[tuple[Scenario, int]]) -> dict[str, dict[str, float]]:
    return {name: evaluate_on_windows(env, env_policy(name), scenarios) for name in names}
