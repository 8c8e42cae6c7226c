#!/usr/bin/env python3
"""Fingerprint of what the simulator core computes, for comparing the compiled core with its Python sources.

Runs (1) a cluster simulation with switches, migrations, prefix caching and the
weighted least-work router on a real trace, in fast and exact mode, and (2) a
Deploy-v0 episode with random valid actions, and prints one JSON line: which
core ran (``oserve_rl.native_status()``) and SHA-256 digests of every
per-request outcome, the rewards and the observations. tests/test_native.py
runs it twice, once with ``OSERVE_RL_PURE_PYTHON=1``, and asserts equal digests.

    .venv/bin/python scripts/core_digest.py
    OSERVE_RL_PURE_PYTHON=1 .venv/bin/python scripts/core_digest.py
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

import oserve_rl


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()[:16]


def simulation_digest(mode: str, requests: int) -> str:
    from oserve_rl.catalog import get_cluster
    from oserve_rl.cluster import parse_deployment
    from oserve_rl.sim.router import make_router
    from oserve_rl.sim.simulator import ClusterSimulator
    from oserve_rl.workload import load_trace

    trace = load_trace("mooncake-synthetic").head(requests)  # prefix hashes: the prefix cache is exercised
    cluster = get_cluster("h100x32")
    dep = parse_deployment("4xTP4+8xTP2", cluster, "llama-2-70b")
    types = np.asarray(trace.input_tokens) > 1024
    rates = np.array([[1.0] * 4 + [0.2] * 8, [0.1] * 4 + [1.0] * 8])
    sim = ClusterSimulator(dep, trace, router=make_router("weighted_least_work", rates=rates), mode=mode,
                           request_types=types.astype(np.int64), progress=False)
    end = float(trace.arrival_s[-1])
    sim.schedule_switch(end * 0.3, "8xTP4", router=make_router("weighted", rates=np.ones((2, 8))))
    sim.schedule_switch(end * 0.6, "2xTP8+8xTP2", router=make_router("least_work"))
    res = sim.run()
    rec = res.recorder
    return _digest(rec.status, rec.first_token_s, rec.finish_s, rec.replica, rec.preemptions, rec.cached_tokens,
                   rec.generated_tokens)


def env_digest(steps: int, seed: int) -> str:
    from oserve_rl.envs.deploy import DeployEnv

    env = DeployEnv(cluster="h100x32", model="llama-2-70b", trace="azure-conv", episode_s=60.0 * steps,
                    predictor="ewma", invalid_action="error")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    parts = [np.concatenate([np.ravel(v) for v in obs.values()]).astype(np.float64)]
    for _ in range(steps):
        a = int(rng.choice(np.flatnonzero(env.action_masks())))
        obs, reward, term, trunc, info = env.step(a)
        parts.append(np.concatenate([np.ravel(v) for v in obs.values()]).astype(np.float64))
        parts.append(np.array([reward]))
        if term or trunc:
            break
    return _digest(*parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000, help="trace requests simulated (default: %(default)s)")
    p.add_argument("--env-steps", type=int, default=8, help="Deploy-v0 steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the env and its random actions (default: %(default)s)")
    args = p.parse_args(argv)
    out = {"core": oserve_rl.native_status()["core"],
           "sim_fast": simulation_digest("fast", args.requests),
           "sim_exact": simulation_digest("exact", args.requests),
           "env": env_digest(args.env_steps, args.seed)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
