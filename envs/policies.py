"""Heuristics as env policies: they act through ``Deploy-v0``'s action space, on the env's episodes.

    >>> env = DeployEnv(cluster="h100x16")
    >>> run_env_episode(env, env_policy("oserve"), seed=3)["p99_e2e_s"]

| name | actions |
|---|---|
| oserve | always ``1`` ("do what OServe decides now"): exactly OServe, with its switch rule |
| keep | always ``0``: the ``initial`` deployment for the whole episode |
| vllm_static | installs the best homogeneous deployment (a sweep over the episode with hindsight) with least-work routing, then keeps it: evaluate.py's ``vllm_static`` |
| random | a uniformly random allowed action (seeded) |

So the agent and these heuristics are compared on identical arrivals,
identical candidate sets and, but for ``vllm_static``, identical dispatch (the LP weights). evaluate.py
runs the full baselines (with their own routers) through the same control loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from oserve_rl.errors import UnknownNameError

EnvPolicy = Callable[[dict[str, np.ndarray], Any], int]


class _Fixed:
    def __init__(self, action: int):
        self.action = action

    def __call__(self, obs: dict[str, np.ndarray], env: Any) -> int:
        return self.action


class _Random:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict[str, np.ndarray], env: Any) -> int:
        return int(self.rng.choice(np.flatnonzero(env.unwrapped.action_masks())))


class _Static:
    """Reset hook picks the deployment (hindsight sweep); then keep."""

    needs_reset_options = True

    def reset_options(self, env: Any) -> dict[str, Any]:
        from oserve_rl.agents.static import sweep_homogeneous

        loop = env.unwrapped.loop
        ctx = loop.context()
        ctx.episode_trace = loop.data.trace
        dep, _ = sweep_homogeneous(ctx)
        # Routed as evaluate.py's vllm_static is (type-blind least work), so both report the same baseline.
        return {"initial": dep.spec_string(), "initial_router": "least_work"}

    def __call__(self, obs: dict[str, np.ndarray], env: Any) -> int:
        return 0


ENV_POLICIES: dict[str, Callable[[], EnvPolicy]] = {
    "oserve": lambda: _Fixed(1),
    "keep": lambda: _Fixed(0),
    "vllm_static": _Static,
    "random": _Random,
}


def env_policy(name: str) -> EnvPolicy:
    if name not in ENV_POLICIES:
        raise UnknownNameError("env policy", name, list(ENV_POLICIES))
    return ENV_POLICIES[name]()


def run_env_episode(env: Any, policy: EnvPolicy, *, seed: int | None = None,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One episode; returns the env's ``episode_metrics`` (p99 E2E, SLO attainment, switches, return)."""
    obs, _ = env.reset(seed=seed, options=options)
    if getattr(policy, "needs_reset_options", False):
        opts = dict(options or {})
        opts.update(policy.reset_options(env))
        opts.setdefault("scenario", env.unwrapped.scenario)
        opts.setdefault("data_seed", env.unwrapped.data_seed)
        obs, _ = env.reset(seed=seed, options=opts)
    while True:
        obs, _, terminated, truncated, info = env.step(policy(obs, env))
        if terminated or truncated:
            return info["episode_metrics"]
