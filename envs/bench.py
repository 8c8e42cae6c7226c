"""``python -m oserve_rl bench env``: environment steps per CPU-second with random valid actions.

Reports CPU time (process time: other jobs on the machine do not count) and
where it goes:

- ``simulator_share``: inside the simulator (``ControlLoop.advance``);
- ``decision_share``: turning actions into decisions (``DeployEnv.decision_for``:
  a candidate's dispatch ranking, or OServe's whole decision), of which
  ``oserve_share`` is OServe's decisions (action 1, and the first step's
  ``initial: oserve``);
- ``forecast_share``: the shared predictor's forecasts (one per step).

The rest is observations, rewards and metrics. ``--policy keep`` measures an
always-keep policy (a settled agent switches rarely; random actions switch
almost every step, which costs plans, migrations and LPs), ``--policy oserve``
one that takes OServe's action every step (what the trained agents in
docs/training.md converge to: OServe decides at every step). It also says
whether the compiled simulator core ran (``oserve_rl.native_status()``; the
pure-Python one is several times slower).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

import oserve_rl
from oserve_rl.errors import ConfigError, UnknownNameError


POLICY_ACTION = {"keep": 0, "oserve": 1}  # Deploy-v0's actions (docs/env.md): 0 keeps, 1 is OServe's decision


@contextmanager
def _cpu_timed(cls: type, method: str, totals: dict[str, float], key: str) -> Iterator[None]:
    """Add the process time spent in ``cls.method`` to ``totals[key]`` while the block runs."""
    orig = getattr(cls, method)

    def timed(self, *args, **kwargs):
        t = time.process_time()
        try:
            return orig(self, *args, **kwargs)
        finally:
            totals[key] += time.process_time() - t

    setattr(cls, method, timed)
    try:
        yield
    finally:
        setattr(cls, method, orig)


def bench_env(cluster: str, model: str, trace: str, *, rate_scale: float = 1.0, episode_s: float = 1800.0,
              episodes: int = 4, seed: int = 0, policy: str = "random", predictor: str = "lstm") -> dict[str, Any]:
    from oserve_rl.agents.oserve import OServe
    from oserve_rl.envs.deploy import DeployEnv
    from oserve_rl.policy.loop import ControlLoop

    # Before the env is built: 0 episodes would time nothing and report "0.0 steps per CPU-second", and a
    # negative seed fails deep inside numpy.
    if int(episodes) != episodes or episodes < 1:
        raise ConfigError(f"bench env: --episodes must be an integer >= 1 (episodes timed), got {episodes!r}")
    if int(seed) != seed or seed < 0:
        raise ConfigError(f"bench env: --seed must be an integer >= 0, got {seed!r}")
    if policy != "random" and policy not in POLICY_ACTION:
        raise UnknownNameError("bench env policy", policy, ["random", *POLICY_ACTION])
    env = DeployEnv(cluster=cluster, model=model, trace=trace, rate_scale=rate_scale, episode_s=episode_s,
                    predictor=predictor, invalid_action="error")
    cpu = {"simulator": 0.0, "decisions": 0.0, "oserve": 0.0, "forecast": 0.0}
    rng = np.random.default_rng(seed)
    steps = 0
    env.reset(seed=seed)  # builds and caches the candidate set: set-up, not per-step cost
    with _cpu_timed(ControlLoop, "advance", cpu, "simulator"), \
            _cpu_timed(DeployEnv, "decision_for", cpu, "decisions"), _cpu_timed(OServe, "decide", cpu, "oserve"), \
            _cpu_timed(ControlLoop, "forecast_rps", cpu, "forecast"):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for ep in range(episodes):
            env.reset(seed=seed + ep)
            while True:
                a = int(rng.choice(np.flatnonzero(env.action_masks()))) if policy == "random" else POLICY_ACTION[policy]
                _, _, term, trunc, _ = env.step(a)
                steps += 1
                if term or trunc:
                    break
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cluster": cluster, "model": model, "trace": trace, "rate_scale": rate_scale, "policy": policy,
            "core": oserve_rl.native_status()["core"],
            "interval_s": env.cfg.interval_s, "steps": steps, "cpu_s": cpu_s, "wall_s": wall_s,
            "steps_per_cpu_s": steps / cpu_s if cpu_s > 0 else None,
            **{f"{part}_share": cpu[key] / cpu_s if cpu_s > 0 else None
               for part, key in (("simulator", "simulator"), ("decision", "decisions"), ("oserve", "oserve"),
                                 ("forecast", "forecast"))}}


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="Deploy-v0 steps per CPU-second", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", default="h100x32", help="cluster preset (default: %(default)s)")
    p.add_argument("--model", default="llama-2-70b", help="model (default: %(default)s)")
    p.add_argument("--trace", default="azure-conv",
                   help="trace, at its own rate times --rate-scale (default: %(default)s)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="load multiplier on the trace (default: %(default)s)")
    p.add_argument("--episode-s", type=float, default=1800.0,
                   help="episode length in simulated seconds; steps are 60 s (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=4,
                   help="episodes timed after one warm-up reset; single short runs spread by +-20%% on a shared "
                        "machine (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the episodes and the random actions (default: %(default)s)")
    p.add_argument("--policy", choices=["random", *POLICY_ACTION], default="random",
                   help="random valid actions, always keep (a settled agent), or OServe's action every step "
                        "(default: %(default)s)")
    p.add_argument("--predictor", default="lstm",
                   help="the shared forecast: lstm, ewma, last-value or moving-average (default: %(default)s)")
    p.add_argument("--json", help="write the result as JSON here ('-' for stdout)")


def main(args) -> int:
    res = bench_env(args.cluster, args.model, args.trace, rate_scale=args.rate_scale, episode_s=args.episode_s,
                    episodes=args.episodes, seed=args.seed, policy=args.policy, predictor=args.predictor)
    if args.json == "-":
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['steps']} steps of {res['interval_s']:.0f} s on {res['cluster']}, {res['model']}, {res['trace']} "
              f"x{res['rate_scale']:g} ({res['policy']} actions): {res['steps_per_cpu_s']:.1f} steps per CPU-second, "
              f"{100 * res['simulator_share']:.0f} % of it in the simulator, {100 * res['decision_share']:.0f} % in "
              f"decisions ({100 * res['oserve_share']:.0f} % OServe's), {100 * res['forecast_share']:.0f} % in "
              f"forecasts; {res['core']} simulator core", file=sys.stdout)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(res, fh, indent=2)
    return 0
