"""oserve_rl/Deploy-v0: API conformance, reproducibility, masking, fairness with heuristics, bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import oserve_rl.envs  # noqa: F401  (registers the id)
from oserve_rl.envs.config import make_config
from oserve_rl.envs.deploy import DeployEnv
from oserve_rl.envs.policies import env_policy, run_env_episode
from oserve_rl.errors import CheckpointError, ConfigError

SMALL = dict(cluster="h100x8", trace="azure-conv", episode_s=300, num_candidates=4, max_replicas=8, predictor="ewma",
             rate_scale=1.0)


@pytest.fixture(scope="module")
def env():
    return DeployEnv(**SMALL)


def test_registered_and_both_env_checkers_pass(env):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    made = gym.make("oserve_rl/Deploy-v0", **SMALL)
    assert isinstance(made.unwrapped, DeployEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
        sb3_check_env(env)
    assert not [w for w in caught if "observation" in str(w.message).lower() or "box" in str(w.message).lower()]


def _rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    traj = [obs]
    rewards = []
    for a in actions:
        if not env.action_masks()[a]:
            a = 0
        obs, r, term, _, _ = env.step(a)
        traj.append(obs)
        rewards.append(r)
        if term:
            break
    return info, traj, rewards


def test_identical_seeds_give_identical_episodes(env):
    actions = [1, 2, 0, 3, 1]
    i1, t1, r1 = _rollout(env, 5, actions)
    i2, t2, r2 = _rollout(DeployEnv(**SMALL), 5, actions)
    assert i1["scenario"] == i2["scenario"] and r1 == r2
    for a, b in zip(t1, t2):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_agent_and_heuristic_on_one_seed_see_identical_arrivals(env):
    env.reset(seed=11)
    arrivals_a = env.unwrapped.loop.data.trace.arrival_s.copy()
    run_env_episode(env, env_policy("oserve"), seed=11)
    arrivals_b = env.unwrapped.loop.data.trace.arrival_s
    np.testing.assert_array_equal(arrivals_a, arrivals_b)


def test_observation_has_the_documented_entries(env):
    obs, _ = env.reset(seed=0)
    assert set(obs) == set(make_config(SMALL).obs_keys)
    assert obs["action_mask"].shape == (env.action_space.n,)
    assert obs["action_mask"][0] == 1 and obs["action_mask"][1] == 1
    for k, space in env.observation_space.spaces.items():
        assert space.contains(obs[k]), k


def test_maskable_ppo_never_picks_a_masked_action():
    from sb3_contrib import MaskablePPO

    env = DeployEnv(**{**SMALL, "invalid_action": "error"})  # a masked action would raise
    model = MaskablePPO("MultiInputPolicy", env, n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    obs, _ = env.reset(seed=3)
    for _ in range(5):
        a, _ = model.predict(obs, action_masks=env.action_masks())
        assert env.action_masks()[int(a)]
        obs, _, term, _, info = env.step(int(a))
        assert not info["invalid_action"]
        if term:
            break


def test_the_step_info_carries_raw_metrics(env):
    env.reset(seed=0)
    _, reward, _, _, info = env.step(1)
    for k in ("p99_e2e_s", "slo_attainment", "completed", "switch_downtime_s", "deployment"):
        assert k in info
    assert reward == pytest.approx(-(info["p99_e2e_s"] / 20.0) - (1 - info["slo_attainment"])
                                   - 0.01 * info["switch_downtime_s"])


def test_env_vllm_static_is_evaluate_vllm_static(env):
    """The baseline TensorBoard shows under vllm_static is the one evaluate.py reports: same deployment, same
    type-blind least-work routing, same arrivals, so the same latencies request for request."""
    from oserve_rl.agents.static import VLLMStatic
    from oserve_rl.policy import Scenario, run_policy

    scen = Scenario(cluster="h100x8", model="llama-2-70b", trace="azure-conv", rate_scale=1.0, duration_s=300,
                    start_s=600, typer_seed=0)
    via_env = run_env_episode(env, env_policy("vllm_static"), seed=0, options={"scenario": scen, "data_seed": 0})
    static = VLLMStatic()
    direct = run_policy(static, scen.build(seed=0), interval_s=env.cfg.interval_s)
    assert env.unwrapped.loop.sim.deployment.spec_string() == static.dep.spec_string()
    np.testing.assert_array_equal(env.unwrapped.loop.sim.rec.finish_s, direct.sim.recorder.finish_s)
    assert via_env["p99_e2e_s"] == direct.summary["e2e_s"]["p99"] and via_env["switches"] == 0


def test_initial_router_must_be_type_blind(env):
    with pytest.raises(ConfigError, match="least_work, round_robin"):
        env.reset(seed=0, options={"initial": "2xTP4", "initial_router": "weighted"})
    with pytest.raises(ConfigError, match="needs a deployment spec"):
        env.reset(seed=0, options={"initial_router": "least_work"})  # initial defaults to OServe's pick


def test_unknown_env_option_is_one_clear_error():
    with pytest.raises(ConfigError, match="episode_s"):
        DeployEnv(**{**SMALL, "episode_len": 10})
    with pytest.raises(ConfigError, match="obs_keys"):
        DeployEnv(**{**SMALL, "obs_keys": ["forecast", "weather"]})


def test_train_config_rejects_unknown_keys(tmp_path):
    from oserve_rl.train.config import load_train_config

    p = tmp_path / "t.yaml"
    p.write_text("algo: ppo\nhyperparams: {}\neval:\n  every_step: 10\n")
    with pytest.raises(ConfigError, match="every_step.*every_steps"):
        load_train_config(p)
    p.write_text("env: {clusterz: [h100x8]}\n")
    with pytest.raises(ConfigError, match="clusterz"):
        load_train_config(p)


def test_checkpoint_from_another_space_is_refused(tmp_path):
    import json

    import yaml

    from oserve_rl.envs.checkpoints import check_compatible

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.zip").write_bytes(b"")
    trained = make_config({**SMALL, "num_candidates": 6})
    (run / "config.yaml").write_text(yaml.safe_dump({"env": trained.model_dump(mode="json")}))
    (run / "env_space.json").write_text(json.dumps(trained.space_signature()))
    check_compatible(run / "model.zip", trained)  # same space: fine
    with pytest.raises(CheckpointError, match="num_candidates"):
        check_compatible(run / "model.zip", make_config(SMALL))


def test_bench_env_cli_prints_steps_per_cpu_second_and_where_the_time_goes(capsys):
    import json

    from oserve_rl.__main__ import main

    rc = main(["bench", "env", "--cluster", "h100x8", "--episode-s", "180", "--episodes", "2", "--predictor", "ewma",
               "--json", "-"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["steps"] == 2 * 3 and res["policy"] == "random" and res["interval_s"] == 60.0
    assert res["steps_per_cpu_s"] > 0 and 0 < res["simulator_share"] < 1 and 0 < res["decision_share"] < 1
    assert res["simulator_share"] + res["decision_share"] + res["forecast_share"] < 1  # disjoint parts of the step
    assert 0 <= res["oserve_share"] <= res["decision_share"]  # OServe decides for action 1 only
    import oserve_rl

    assert res["core"] == oserve_rl.native_status()["core"]  # which simulator core the figure is for
    from oserve_rl.envs.bench import bench_env

    keep = bench_env("h100x8", "llama-2-70b", "azure-conv", episode_s=120, episodes=1, policy="keep", predictor="ewma")
    assert 0 < keep["oserve_share"] <= keep["decision_share"]  # keeping at the first step installs OServe's pick
    follow = bench_env("h100x8", "llama-2-70b", "azure-conv", episode_s=120, episodes=1, policy="oserve",
                       predictor="ewma")
    assert follow["policy"] == "oserve" and follow["steps"] == 2
    assert 0 < follow["oserve_share"] <= follow["decision_share"]
