"""RLlib backend pieces that need no Ray cluster: hyperparameter checks, flattening, loading a module."""

from __future__ import annotations

import inspect

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("ray.rllib")
torch = pytest.importorskip("torch")

from oserve_rl.errors import CheckpointError, ConfigError  # noqa: E402
from oserve_rl.train import rllib as R  # noqa: E402


def test_training_keys_are_ppo_training_arguments():
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.algorithms.ppo import PPOConfig

    accepted = set(inspect.signature(PPOConfig.training).parameters) | set(
        inspect.signature(AlgorithmConfig.training).parameters)
    assert set(R.TRAINING_KEYS) <= accepted
    assert set(R.ENV_RUNNER_KEYS) <= set(inspect.signature(AlgorithmConfig.env_runners).parameters)


def test_unknown_hyperparam_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"'learning_rate' \(did you mean 'lr'\?\).*valid: lr"):
        R.split_hyperparams({"learning_rate": 1e-3}, 1000)


def test_defaults_follow_total_steps_and_user_values_win():
    training, model, runners = R.split_hyperparams({"fcnet_hiddens": [32], "rollout_fragment_length": 50}, 200)
    assert training == {"train_batch_size_per_learner": 200, "minibatch_size": 128}
    assert model == {"fcnet_hiddens": [32]} and runners == {"rollout_fragment_length": 50}
    training, _, _ = R.split_hyperparams({"train_batch_size_per_learner": 64, "lr": 0.01}, 10_000)
    assert training == {"train_batch_size_per_learner": 64, "lr": 0.01, "minibatch_size": 64}


def test_inconsistent_hyperparams_fail_before_ray_starts():
    import ray

    from oserve_rl.train.config import TrainConfig

    cfg = TrainConfig(backend="rllib", algo="ppo", total_steps=100,
                      hyperparams={"train_batch_size_per_learner": 100, "minibatch_size": 500})
    with pytest.raises(ConfigError, match=r"minibatch_size.*\(500\) must be <="):
        R.build_config(cfg)
    assert not ray.is_initialized()
    R.build_config(cfg.model_copy(update={"hyperparams": {"lr": 1e-3, "fcnet_hiddens": [16]}}))


class _DictEnv(gym.Env):
    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "zeta": gym.spaces.Box(0.0, 1.0, (2, 2), np.float32),
            "alpha": gym.spaces.Box(-1.0, np.inf, (3,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (4,), np.float32),
        })
        self.action_space = gym.spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


def test_wrapper_flattens_in_sorted_key_order():
    env = R.MaskedFlatObs(_DictEnv())
    space = env.observation_space
    assert set(space.spaces) == {"observations", "action_mask"}
    assert space["observations"].shape == (3 + 4,)
    np.testing.assert_array_equal(space["observations"].low[:3], -1.0)   # "alpha" before "zeta"
    obs = {"zeta": np.array([[0.0, 0.25], [0.5, 1.0]], np.float32), "alpha": np.array([7, 8, 9], np.float32),
           "action_mask": np.array([1, 0, 1, 0], np.float32)}
    flat = env.observation(obs)
    np.testing.assert_array_equal(flat["observations"], [7, 8, 9, 0.0, 0.25, 0.5, 1.0])
    assert space.contains(flat)


def _module(obs_dim: int, n: int):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule

    space = gym.spaces.Dict({"observations": gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                             "action_mask": gym.spaces.Box(0.0, 1.0, (n,), np.float32)})
    return RLModuleSpec(module_class=ActionMaskingTorchRLModule, observation_space=space,
                        action_space=gym.spaces.Discrete(n), model_config={"fcnet_hiddens": [8]}).build()


def test_saved_module_loads_without_ray_and_respects_the_mask(tmp_path):
    import ray

    module = _module(7, 4)
    module.save_to_path(str(tmp_path / "best_module"))
    act = R.load_rllib_actor(tmp_path / "best_module")
    assert not ray.is_initialized()
    rng = np.random.default_rng(0)
    for allowed in range(4):
        mask = np.zeros(4, np.float32)
        mask[allowed] = 1.0
        obs = {"alpha": rng.normal(size=3).astype(np.float32), "zeta": rng.normal(size=(2, 2)).astype(np.float32),
               "action_mask": mask}
        assert act(obs, None) == allowed
    obs = {"alpha": np.zeros(3, np.float32), "zeta": np.zeros((2, 2), np.float32),
           "action_mask": np.ones(4, np.float32)}
    assert act(obs, None) == act(obs, None)  # deterministic
    with pytest.raises(CheckpointError, match="expects 7 observation features"):
        act({"alpha": np.zeros(5, np.float32), "action_mask": np.ones(4, np.float32)}, None)


def test_bad_checkpoints_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        R.load_rllib_actor(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not an RLlib checkpoint"):
        R.load_rllib_actor(tmp_path)
    broken = tmp_path / "checkpoint" / R.MODULE_SUBDIR
    broken.mkdir(parents=True)
    (broken / "class_and_ctor_args.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot load RLlib module"):
        R.load_rllib_actor(tmp_path / "checkpoint")


def test_bad_ray_address_fails_fast(tmp_path):
    from oserve_rl.train.config import TrainConfig

    with pytest.raises(ConfigError, match="expected 'auto' or HOST:PORT"):
        R.init_ray(TrainConfig(backend="rllib", algo="ppo", ray_address="nohost"), tmp_path)
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"127.0.0.1:{port}.*ray start --head --port 6379"):
        R.init_ray(TrainConfig(backend="rllib", algo="ppo", ray_address=f"127.0.0.1:{port}"), tmp_path)
