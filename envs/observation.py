"""Deploy-v0's observation, built from a ``ClusterState`` plus the episode's fixed facts.

One function serves the env (``DeployEnv._obs``) and the live controller
(``oserve_rl.live.controller``), so the observation an exported policy sees
on a real cluster is built by the same code it was trained on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

@dataclass(frozen=True)
class ObsContext:
    """Fixed facts an observation needs besides the :class:`ClusterState` (``from_env``: a DeployEnv's)."""

    config: Any                                   # DeployEnvConfig
    candidates: tuple[Any, ...]                   # Deployments
    cand_capacity: np.ndarray                     # [len(candidates), J] per-type capacity of each candidate
    capacity: Callable[[Any], np.ndarray]         # per-type capacity of any deployment (the KEEP row)
    num_gpus: int
    type_lengths: np.ndarray                      # [J, 2] fallback for types that did not arrive last interval
    start_s: float                                # episode start on the trace clock (time of day)
    end_s: float                                  # episode length (progress)

    @classmethod
    def from_env(cls, env: Any) -> ObsContext:
        e = getattr(env, "unwrapped", env)
        data = e.loop.data
        start = data.scenario.start_s
        return cls(e.cfg, tuple(e.candidates), e._cand_capacity,
                   lambda d: e.oserve.table.for_deployment(d).sum(axis=0), int(e.num_gpus),
                   np.asarray(data.type_lengths), float(start) if isinstance(start, (int, float)) else 0.0,
                   float(e.loop.end_s))


def action_mask(deployment: Any, candidates: Sequence[Any], num_actions: int) -> np.ndarray:
    """Deploy-v0's mask: keep and OServe always; candidate k unless unused or the current deployment's shape."""
    from oserve_rl.envs.deploy import KEEP, OSERVE

    mask = np.zeros(num_actions, dtype=np.float32)
    mask[KEEP] = mask[OSERVE] = 1.0
    current = Counter(deployment.configs) if deployment is not None else None  # the replica multiset
    for k, d in enumerate(candidates):
        mask[2 + k] = 0.0 if current is not None and Counter(d.configs) == current else 1.0
    return mask


def build_observation(state: Any, ctx: ObsContext) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(observation, action mask)`` for ``state`` (a ClusterState): Deploy-v0's layout, key for key.

    The env's ``DeployEnv._obs`` and the live controller must agree on this;
    tests/test_live_controller_unit.py checks it on the env's own states.
    """
    from oserve_rl.envs.deploy import KEEP, N_ACTION_FEATURES, OSERVE, REP_FEATURES, _dep_features

    cfg = ctx.config
    J, K, R, H = cfg.num_types, cfg.num_candidates, cfg.max_replicas, cfg.history_min
    n_actions = K + 2
    keys = cfg.obs_keys
    st = state
    cur = st.deployment
    mask = action_mask(cur, ctx.candidates, n_actions)
    out: dict[str, np.ndarray] = {}
    if "rate_history" in keys:
        h = st.type_counts_per_min[-H:] / 60.0
        pad = np.zeros((H, J))
        if len(h):
            pad[-len(h):] = h
        out["rate_history"] = np.log1p(pad)
    if "forecast" in keys:
        out["forecast"] = np.log1p(st.forecast_rps)
    if "lengths" in keys:
        ln = np.where(np.isnan(st.recent_lengths), ctx.type_lengths, st.recent_lengths)
        out["lengths"] = np.log(np.maximum(ln, 1.0))
    if "deployment" in keys:
        out["deployment"] = _dep_features(cur, ctx.num_gpus, R)
    if "replicas" in keys:
        rep = np.zeros((R, REP_FEATURES))
        for i, r in enumerate(st.replicas[:R]):
            rep[i] = (1.0, float(r.ready), math.log2(r.config.tp) / 3, math.log2(r.config.pp) / 2,
                      math.log1p(r.num_waiting), math.log1p(r.num_running), r.kv_utilization,
                      0.0 if math.isnan(r.p99_e2e_s) else math.log1p(r.p99_e2e_s))
        out["replicas"] = rep
    if "switch" in keys:
        out["switch"] = np.array([float(st.switch_in_progress), st.switch_time_left_s / cfg.interval_s])
    if "time" in keys:
        tod = 2 * math.pi * ((ctx.start_s + st.now_s) % 86400.0) / 86400.0
        out["time"] = np.array([st.now_s / max(ctx.end_s, 1.0), math.sin(tod), math.cos(tod)])
    if "candidates" in keys:
        cand = np.zeros((n_actions, N_ACTION_FEATURES + J))
        lam = np.maximum(st.forecast_rps, 1e-3)
        cand[KEEP, :2] = 1.0, 1.0
        if cur is not None:
            cand[KEEP, 2:4] = cur.num_gpus / ctx.num_gpus, len(cur) / R
            cand[KEEP, 4:] = np.log1p(ctx.capacity(cur) / lam)
        cand[OSERVE, 0] = 1.0
        for k, d in enumerate(ctx.candidates):
            row = cand[2 + k]
            row[0], row[1] = mask[2 + k], 0.0 if mask[2 + k] else 1.0
            row[2], row[3] = d.num_gpus / ctx.num_gpus, len(d) / R
            row[4:] = np.log1p(ctx.cand_capacity[k] / lam)
        out["candidates"] = cand
    out["action_mask"] = mask
    return {k: np.asarray(out[k], dtype=np.float32).ravel() for k in keys}, mask
