"""Validation episodes shared by both backends: the agent and the heuristics on the same windows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from oserve_rl.envs.policies import env_policy, run_env_episode
from oserve_rl.policy import Scenario
from oserve_rl.train.config import TrainConfig

METRICS = ("p99_e2e_s", "p50_e2e_s", "slo_attainment", "throughput_rps", "switches", "switch_downtime_s", "return")


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
