"""Stable-Baselines3 backend: PPO, MaskablePPO (sb3-contrib), DQN, A2C on ``Deploy-v0``.

The loop, top to bottom: build the env (a plain ``gymnasium.Env``, one per
``n_envs``, stepped in this process or, with ``vec_env: subproc``, in worker
processes), build the algorithm from the YAML
hyperparameters, ``learn`` with a callback that every ``eval.every_steps``
runs the agent and the heuristics on the validation windows and logs
``eval/<metric>/<policy>`` to TensorBoard, then save ``model.zip`` (and
``best_model.zip``, the best validation p99) beside the resolved config.
``init_from`` (``--init-from``) continues a saved model instead of starting one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from oserve_rl.parallel import worker_start_method
from oserve_rl.train.config import TrainConfig
from oserve_rl.train.validation import evaluate_on_windows, heuristic_baselines, validation_line, validation_scenarios


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

    from oserve_rl.errors import ConfigError

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
        model = cls("MultiInputPolicy", env, seed=cfg.seed, verbose=0, tensorboard_log=str(run_dir / "tb"),
                    device="cpu", **hp)
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
