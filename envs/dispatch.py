"""``oserve_rl/DeployDispatch-v0``: Deploy-v0 plus the dispatch weights as a ``Box``.

The agent chooses the deployment as in ``Deploy-v0`` *and* how each request
type is spread over the replicas of that deployment, where Deploy-v0 always
uses OServe's LP weights. Observation, reward, episodes and info are those of
``Deploy-v0`` (same config, same options), so agents of both kinds compare
on identical episodes.

Action, ``Dict``:

- ``deployment``: ``Discrete(K + 2)``, exactly Deploy-v0's action (keep /
  OServe / candidate k), with the same mask (``action_masks()``).
- ``weights``: ``Box(0, 1, (num_types * max_replicas,))``, row-major
  ``[type, replica]``: type ``j``'s relative preference for replica ``r`` of
  the deployment in force after this step (replicas in the deployment's
  order: ``info["deployment"]``). Rows are scale-free: the weighted
  least-work router sends a type-``j`` request to the replica with the least
  outstanding work per unit of weight.

Rules, applied in this order (``info["dispatch"]`` reports what happened):

1. All weights zero: no override; the step is exactly Deploy-v0's step.
2. Entries past the deployment's replica count, and entries for a replica
   that cannot serve the type (its throughput for it is zero, e.g. inputs
   longer than its context), are ignored.
3. A type whose remaining row is all zero gets the chosen deployment's LP
   row instead (OServe's dispatch), so that no type is left without a replica.

Stable-Baselines3 has no ``Dict`` actions: ``FlatDispatchAction`` wraps the
env with one flat ``Box``, the first ``K + 2`` entries scoring the deployment
actions (the best-scoring allowed one is taken), then the weights.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from oserve_rl.envs.deploy import DeployEnv
from oserve_rl.errors import ConfigError
from oserve_rl.policy import Decision


class DeployDispatchEnv(DeployEnv):
    def __init__(self, config=None, **options: Any):
        super().__init__(config, **options)
        self.deployment_space = self.action_space
        self.action_space = spaces.Dict({
            "deployment": self.deployment_space,
            "weights": spaces.Box(0.0, 1.0, (self.J * self.R,), np.float32),
        })
        self._weights: np.ndarray | None = None
        self._dispatch_info: dict[str, Any] = {}

    def step(self, action: Any):
        if not isinstance(action, dict) or set(action) != {"deployment", "weights"}:
            raise ConfigError("DeployDispatch-v0 takes a dict action {'deployment': int, 'weights': array of "
                              f"{self.J * self.R}}}; got {type(action).__name__}")
        want = f"{self.J * self.R} finite values >= 0 (num_types {self.J} x max_replicas {self.R})"
        try:
            w = np.asarray(action["weights"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ConfigError(f"weights must be {want}; got {action['weights']!r}") from None
        if w.size != self.J * self.R:
            raise ConfigError(f"weights must be {want}; got shape {np.shape(action['weights'])}")
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise ConfigError(f"weights must be {want}; entry {int(bad[0])} is {w[bad[0]]!r}")
        self._weights = w.reshape(self.J, self.R)
        self._dispatch_info = {}
        try:
            obs, reward, terminated, truncated, info = super().step(action["deployment"])
        finally:
            self._weights = None
        info["dispatch"] = self._dispatch_info
        return obs, reward, terminated, truncated, info

    def decision_for(self, action: int) -> Decision:
        decision = super().decision_for(action)
        w = self._weights
        if w is None or not w.any() or self.loop.sim is None:
            # No override, or the first step (the deployment is installed with its LP weights).
            self._dispatch_info = {"override": False}
            return decision
        target = decision.deployment if decision.deployment is not None else self.loop.sim.deployment
        n = len(target)
        servable = self.oserve.table.for_deployment(target).T > 0  # [J, n]
        rows = w[:, :n] * servable
        empty = rows.sum(axis=1) <= 0
        if empty.any():
            lam = self._state.forecast_rps
            lp = decision.weights if decision.weights is not None else \
                self.oserve.weights(target, lam if lam.sum() > 0 else np.ones(self.J))
            rows[empty] = lp[empty]
        self._dispatch_info = {"override": True, "ignored_replicas": int(max(0, self.R - n)),
                               "lp_rows": np.flatnonzero(empty).tolist()}
        return Decision(decision.deployment, rows, decision.router, dict(decision.info))


class FlatDispatchAction(gym.ActionWrapper):
    """One flat ``Box`` for algorithms without ``Dict`` actions (SB3's PPO, SAC, ...).

    ``[0, K+2)`` score the deployment actions: the highest-scoring *allowed*
    one is taken, so an unconstrained policy never picks a masked action;
    the rest are the weights (clipped to [0, 1]).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, DeployDispatchEnv):
            raise ConfigError(f"FlatDispatchAction wraps DeployDispatch-v0, not {type(base).__name__}")
        self.n_dep = base.num_actions
        self.action_space = spaces.Box(-1.0, 1.0, (self.n_dep + base.J * base.R,), np.float32)

    def action(self, action: np.ndarray) -> dict[str, Any]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.size != self.action_space.shape[0]:
            raise ConfigError(f"FlatDispatchAction: expected {self.action_space.shape[0]} values ({self.n_dep} "
                              f"deployment scores, then the weights), got shape {np.shape(action)}")
        mask = self.env.unwrapped.action_masks()
        scores = np.where(mask, a[: self.n_dep], -np.inf)
        return {"deployment": int(np.argmax(scores)), "weights": np.clip(a[self.n_dep:], 0.0, 1.0)}
