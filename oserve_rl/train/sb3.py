"""Stable-Baselines3 backend: PPO, MaskablePPO (sb3-contrib), DQN, A2C on ``Deploy-v0``.

The loop, top to bottom: build the env (a plain ``gymnasium.Env``, one per
``n_envs``, stepped in this process or, with ``vec_env: subproc``, in worker
processes), build the algorithm from the YAML
hyperparameters, ``learn`` with a callback that every ``eval.every_steps``
runs the agent and the heuristics on the validation windows and logs
``eval/<metric>/<policy>`` to TensorBoard, then save ``model.zip`` (and
``best_model.zip``, the best validation p99) beside the resolved config.
``init_from`` (``--init-from``) continues a saved model instead of starting one.

``check_hyperparams`` checks ``hyperparams`` before a run starts: names against the algorithm's
constructor (and ``policy_kwargs`` against its policy's), the ranges SB3 leaves unchecked, and a
throwaway model built on an env with Deploy-v0's spaces.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from oserve_rl.errors import ConfigError
from oserve_rl.parallel import worker_start_method
from oserve_rl.train.config import TrainConfig
from oserve_rl.train.validation import evaluate_on_windows, heuristic_baselines, validation_line, validation_scenarios

POLICY = "MultiInputPolicy"  # Deploy-v0's observation is a Dict
# Constructor arguments train_sb3 sets itself: in hyperparams they would clash ("multiple values for seed").
RESERVED = {"policy": f"{POLICY}, for Deploy-v0's Dict observation", "env": "the config's env",
            "seed": "the top-level seed (--seed)", "verbose": "0", "tensorboard_log": "the run directory's tb/",
            "device": "cpu", "_init_setup_model": "True"}
# RLlib's names (docs/rllib.md) for SB3's: a config moved between the backends gets the SB3 name suggested.
RLLIB_NAMES = {"lr": "learning_rate", "lambda_": "gae_lambda", "num_epochs": "n_epochs",
               "minibatch_size": "batch_size", "train_batch_size_per_learner": "n_steps",
               "entropy_coeff": "ent_coef", "vf_loss_coeff": "vf_coef", "clip_param": "clip_range",
               "grad_clip": "max_grad_norm", "fcnet_hiddens": "policy_kwargs", "rollout_fragment_length": "n_steps"}
# Arguments of the policy classes' constructors that SB3 fills in.
POLICY_ARGS_SET = ("self", "observation_space", "action_space", "lr_schedule")


@dataclass(frozen=True)
class Bound:
    """A hyperparameter's valid numbers, where SB3 does not check them itself (``n_steps: 0`` fails deep
    inside ``learn`` with an UnboundLocalError, ``batch_size: 0`` with a ZeroDivisionError)."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False  # ``low`` itself is invalid (a learning rate of 0 learns nothing)

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {'an integer' if self.integer else 'a number'}"
        if self.integer and int(value) != value:
            return "must be an integer"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None


BOUNDS = {
    "n_steps": Bound(1, integer=True), "batch_size": Bound(1, integer=True), "n_epochs": Bound(1, integer=True),
    "buffer_size": Bound(1, integer=True), "learning_starts": Bound(0, integer=True),
    "target_update_interval": Bound(1, integer=True), "learning_rate": Bound(0, low_open=True),
    "gamma": Bound(0, 1), "gae_lambda": Bound(0, 1), "ent_coef": Bound(0), "vf_coef": Bound(0),
    "clip_range": Bound(0, low_open=True), "max_grad_norm": Bound(0, low_open=True), "tau": Bound(0, 1),
    "exploration_fraction": Bound(0, 1), "exploration_initial_eps": Bound(0, 1), "exploration_final_eps": Bound(0, 1),
}


def algo_class(algo: str):
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "dqn": sb3.DQN, "a2c": sb3.A2C}[algo]


def make_env(cfg: TrainConfig, seed: int):
    from stable_baselines3.common.monitor import Monitor

    from oserve_rl.envs.deploy import DeployEnv

    env_opts = dict(cfg.env)
    if cfg.algo != "maskable_ppo":
        env_opts.setdefault("invalid_action", "keep")  # these algorithms cannot mask: a masked action keeps
    env = Monitor(DeployEnv(env_opts))
    env.reset(seed=seed)
    return env


def load_to_continue(cls: Any, cfg: TrainConfig, env: Any, run_dir: Path) -> Any:
    """``cfg.init_from`` loaded to train on: its weights, optimiser state, hyperparameters and step count (the
    YAML's ``hyperparams`` do not apply). Its spaces were checked against the env when the config loaded."""
    from oserve_rl.errors import CheckpointError

    try:
        model = cls.load(cfg.init_from, env=env, device="cpu", tensorboard_log=str(run_dir / "tb"))
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"cannot continue {cfg.init_from} with --algo {cfg.algo}: {e} (continue a "
                              f"checkpoint with the algorithm that saved it)") from None
    model.set_random_seed(cfg.seed)
    return model


def apply_action_bias(model: Any, bias: dict[int, float]) -> None:
    """Shift the initial logits of the listed actions (a prior, e.g. towards OServe's action 1)."""
    import torch

    net = getattr(model.policy, "action_net", None)
    if net is None or not hasattr(net, "bias"):
        raise ConfigError(f"init_action_bias needs a policy with an action_net (PPO, MaskablePPO, A2C); "
                          f"{type(model).__name__} has none")
    n = net.bias.shape[0]
    with torch.no_grad():
        for a, b in bias.items():
            if not 0 <= int(a) < n:
                raise ConfigError(f"init_action_bias: action {a} outside 0..{n - 1}")
            net.bias[int(a)] += float(b)


def agent_actor(model: Any, masked: bool):
    def act(obs: dict[str, np.ndarray], env: Any) -> int:
        if masked:
            a, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
        else:
            a, _ = model.predict(obs, deterministic=True)
        return int(a)

    return act


def _unknown(keys: list[str], valid: list[str], aliases: dict[str, str]) -> str:
    hints = []
    for k in keys:
        alias = aliases.get(k)
        close = [alias] if alias in valid else difflib.get_close_matches(k, valid, 1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(hints)


def constructor_args(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` takes."""
    return [n for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]


def check_hyperparam_names(algo: str, hp: dict[str, Any]) -> None:
    """Names against the algorithm's constructor and ``policy_kwargs`` against its policy's; values against
    ``BOUNDS``. Raises ``ConfigError`` naming the key and the closest valid one."""
    cls = algo_class(algo)
    reserved = [k for k in hp if k in RESERVED]
    if reserved:
        k = reserved[0]
        raise ConfigError(f"hyperparams.{k}: set by train.py ({RESERVED[k]}); remove it from hyperparams")
    valid = [k for k in constructor_args(cls) if k not in RESERVED]
    unknown = [k for k in hp if k not in valid]
    if unknown:
        raise ConfigError(f"hyperparams: unknown key(s) {_unknown(unknown, valid, RLLIB_NAMES)} for {algo} "
                          f"({cls.__name__}); valid: {', '.join(valid)}")
    for k, v in hp.items():
        problem = BOUNDS[k].problem(v) if k in BOUNDS else None
        if problem is not None:
            raise ConfigError(f"hyperparams.{k}: {problem}, got {v!r}")
    kwargs = hp.get("policy_kwargs")
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise ConfigError(f"hyperparams.policy_kwargs: expected a mapping such as {{net_arch: [64, 64]}}, "
                          f"got {kwargs!r}")
    policy_cls = cls.policy_aliases[POLICY]
    valid = [k for k in constructor_args(policy_cls) if k not in POLICY_ARGS_SET]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ConfigError(f"hyperparams.policy_kwargs: unknown key(s) {_unknown(unknown, valid, {})} for "
                          f"{policy_cls.__name__}; valid: {', '.join(valid)}")


class SpacesOnlyEnv(gym.Env):
    """Deploy-v0's spaces without its simulator: enough to build (not to train) a model."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        super().__init__()
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        raise RuntimeError("SpacesOnlyEnv only builds models")

    def step(self, action: Any):
        raise RuntimeError("SpacesOnlyEnv only builds models")


def build_model(cls: Any, cfg: TrainConfig, env: Any, tensorboard_log: str | None) -> Any:
    """``cls`` on ``env`` with the YAML's hyperparameters; what its constructor refuses is a ``ConfigError``."""
    try:
        return cls(POLICY, env, seed=cfg.seed, verbose=0, tensorboard_log=tensorboard_log, device="cpu",
                   **cfg.hyperparams)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"hyperparams: {cls.__name__} refuses them: {msg}") from None


def check_hyperparams(cfg: TrainConfig) -> None:
    """``hyperparams`` (and ``init_action_bias``) as ``train_sb3`` will use them, before any run directory exists:
    names and ranges, then a model built on an env of Deploy-v0's spaces (no episode runs; ~0.5 s)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from oserve_rl.envs.deploy import DeployEnv

    check_hyperparam_names(cfg.algo, cfg.hyperparams)
    if cfg.init_from:
        return  # the checkpoint brings its own hyperparameters and logits (docs/training.md)
    spaces = DeployEnv(cfg.env)  # its constructor only: the spaces, no episode
    env = DummyVecEnv([lambda: SpacesOnlyEnv(spaces.observation_space, spaces.action_space)
                       for _ in range(cfg.n_envs)])
    model = build_model(algo_class(cfg.algo), cfg, env, tensorboard_log=None)
    if cfg.init_action_bias:
        apply_action_bias(model, cfg.init_action_bias)


def train_sb3(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import HParam
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    torch.set_num_threads(cfg.torch_threads)
    factories = [lambda i=i: make_env(cfg, cfg.seed + i) for i in range(cfg.n_envs)]
    env = (SubprocVecEnv(factories, start_method=worker_start_method()) if cfg.vec_env == "subproc"
           else DummyVecEnv(factories))
    cls = algo_class(cfg.algo)
    hp = dict(cfg.hyperparams)
    if cfg.init_from:
        model = load_to_continue(cls, cfg, env, run_dir)
    else:
        model = build_model(cls, cfg, env, tensorboard_log=str(run_dir / "tb"))
    if cfg.init_action_bias and not cfg.init_from:
        apply_action_bias(model, cfg.init_action_bias)
    eval_env = make_env(cfg, cfg.seed + 10_000)
    scenarios = validation_scenarios(cfg)
    masked = cfg.algo == "maskable_ppo"

    class EvalCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.start = self.next_eval = model.num_timesteps  # a continued run counts on from its checkpoint
            self.best = math.inf
            self.baselines: dict[str, dict[str, float]] = {}
            self.history: list[dict[str, Any]] = []
            self.t0 = time.perf_counter()

        def _on_training_start(self) -> None:
            hparams = {"algo": cfg.algo, "seed": cfg.seed, "total_steps": cfg.total_steps,
                       **{k: v for k, v in hp.items() if isinstance(v, (int, float, str, bool))}}
            self.logger.record("hparams", HParam(hparams, {"eval/p99_e2e_s/agent": 0.0, "eval/return/agent": 0.0}),
                               exclude=("stdout", "log", "json", "csv"))
            self.baselines = heuristic_baselines(eval_env, cfg.eval.heuristics, scenarios)

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.next_eval += cfg.eval.every_steps
                self.evaluate()
            return True

        def evaluate(self) -> None:
            res = {"agent": evaluate_on_windows(eval_env, agent_actor(self.model, masked), scenarios),
                   **self.baselines}
            for name, metrics in res.items():
                for k, v in metrics.items():
                    self.logger.record(f"eval/{k}/{name}", v)
            elapsed_s = time.perf_counter() - self.t0
            self.logger.record("time/steps_per_s", (self.num_timesteps - self.start) / max(elapsed_s, 1e-9))
            self.logger.dump(self.num_timesteps)
            print(validation_line(self.num_timesteps, cfg.total_steps, elapsed_s, res, self.start), flush=True)
            self.history.append({"step": self.num_timesteps, **{n: m for n, m in res.items()}})
            p99 = res["agent"]["p99_e2e_s"]
            if p99 < self.best:
                self.best = p99
                self.model.save(run_dir / "best_model.zip")
            self.model.save(run_dir / "model.zip")  # the latest: what --init-from continues if the run dies

    cb = EvalCallback()
    t0 = time.perf_counter()
    start_steps = model.num_timesteps
    try:
        model.learn(total_timesteps=cfg.total_steps, callback=cb, tb_log_name="sb3", progress_bar=_has_rich(),
                    reset_num_timesteps=not cfg.init_from)
    except KeyboardInterrupt:
        model.save(run_dir / "model.zip")  # Ctrl-C keeps the work: continue it with --init-from
        env.close()
        raise
    train_s = time.perf_counter() - t0
    if not cb.history or cb.history[-1]["step"] != model.num_timesteps:  # the callback may just have evaluated
        cb.evaluate()
    model.save(run_dir / "model.zip")
    env.close()
    summary = {"train_s": train_s, "steps": int(model.num_timesteps), "init_from": cfg.init_from,
               "steps_this_run": int(model.num_timesteps - start_steps),
               "steps_per_s": (model.num_timesteps - start_steps) / max(train_s, 1e-9), "final": cb.history[-1],
               "best_p99_e2e_s": cb.best, "history": cb.history}
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True
