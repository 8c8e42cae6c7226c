"""oserve_rl/DeployDispatch-v0: the dispatch-weights variant of Deploy-v0."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import oserve_rl.envs  # noqa: F401  (registers the ids)
from oserve_rl.envs.deploy import DeployEnv
from oserve_rl.envs.dispatch import DeployDispatchEnv, FlatDispatchAction
from oserve_rl.errors import ConfigError

SMALL = dict(cluster="h100x8", trace="azure-conv", episode_s=300, num_candidates=4, max_replicas=8, predictor="ewma",
             rate_scale=1.0)
ACTIONS = [2, 0, 1, 3, 0]


def _act(env, a, weights):
    mask = env.unwrapped.action_masks()
    return {"deployment": a if mask[a] else 0, "weights": weights}


def test_registered_and_gymnasium_checker_passes():
    from gymnasium.utils.env_checker import check_env

    env = gym.make("oserve_rl/DeployDispatch-v0", **SMALL)
    assert isinstance(env.unwrapped, DeployDispatchEnv)
    assert isinstance(env.action_space, gym.spaces.Dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)


def test_zero_weights_are_exactly_deploy_v0():
    base, disp = DeployEnv(**SMALL), DeployDispatchEnv(**SMALL)
    base.reset(seed=3)
    disp.reset(seed=3)
    zero = np.zeros(disp.J * disp.R, dtype=np.float32)
    for a in ACTIONS:
        a = a if base.action_masks()[a] else 0
        _, r1, t1, _, i1 = base.step(a)
        _, r2, t2, _, i2 = disp.step({"deployment": a, "weights": zero})
        assert r1 == r2 and i1["deployment"] == i2["deployment"] and i1["completed"] == i2["completed"]
        assert i2["dispatch"]["override"] is False
        if t1:
            break


def test_weights_change_the_routing_and_no_request_is_lost():
    env = DeployDispatchEnv(**SMALL)
    env.reset(seed=1, options={"initial": "2xTP4"})
    env.step({"deployment": 0, "weights": np.zeros(env.J * env.R, dtype=np.float32)})  # installs the initial one
    n = len(env.loop.sim.deployment)
    assert n == 2
    w = np.zeros((env.J, env.R), dtype=np.float32)
    w[:, 0] = 1.0  # every type to replica 0 only
    _, _, _, _, info = env.step({"deployment": 0, "weights": w.reshape(-1)})
    assert info["dispatch"]["override"] and info["dispatch"]["lp_rows"] == []
    router_w = np.asarray(env.loop.sim.router.rates)
    assert (router_w[:, 1:n] == 0).all() and (router_w[:, 0] > 0).all()
    while True:
        _, _, term, _, _ = env.step({"deployment": 0, "weights": w.reshape(-1)})
        if term:
            break
    sim = env.loop.sim
    sim.run()
    rec = sim.rec
    from oserve_rl.sim.requests import STATUS_COMPLETED, STATUS_REJECTED

    done = np.isin(rec.status[: sim.arrived], [STATUS_COMPLETED, STATUS_REJECTED])
    assert done.all(), "every arrival ends completed or rejected"


def test_a_zero_row_falls_back_to_the_lp_row():
    env = DeployDispatchEnv(**SMALL)
    env.reset(seed=2, options={"initial": "2xTP4"})
    env.step({"deployment": 0, "weights": np.zeros(env.J * env.R, dtype=np.float32)})
    w = np.zeros((env.J, env.R), dtype=np.float32)
    w[0, 0] = 1.0
    _, _, _, _, info = env.step({"deployment": 0, "weights": w.reshape(-1)})
    assert info["dispatch"]["lp_rows"] == list(range(1, env.J))


def test_flat_box_wrapper_never_takes_a_masked_deployment():
    env = FlatDispatchAction(DeployDispatchEnv(**SMALL))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = env.unwrapped.action_masks()
        a = env.action_space.sample()
        a[: env.n_dep] = np.where(mask, -1.0, 1.0)  # masked actions score highest
        a[: env.n_dep][np.flatnonzero(mask)[rng.integers(mask.sum())]] = 0.0
        chosen = env.action(a)["deployment"]
        assert mask[chosen]
        _, _, term, _, _ = env.step(a)
        if term:
            break


def test_bad_actions_get_clear_errors():
    env = DeployDispatchEnv(**SMALL)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="dict action"):
        env.step(0)
    with pytest.raises(ConfigError, match="weights must be"):
        env.step({"deployment": 0, "weights": np.ones(3)})
    with pytest.raises(ConfigError, match="weights must be"):
        env.step({"deployment": 0, "weights": -np.ones(env.J * env.R)})


def test_sb3_ppo_runs_on_the_flat_box_variant():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = FlatDispatchAction(DeployDispatchEnv(**SMALL))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb3_check_env(env)
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.learn(16)
    a, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(a.astype(np.float32))
