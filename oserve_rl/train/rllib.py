"""RLlib backend: masked PPO (new API stack) on ``Deploy-v0``, locally or on a Ray cluster.

The loop mirrors the SB3 backend: build the env, build PPO from the YAML
hyperparameters, train until ``total_steps`` env steps, and every
``eval.every_steps`` run the agent and the heuristics on the validation
windows (in the driver, on the same windows as SB3) and log
``eval/<metric>/<policy>`` to TensorBoard (``run_dir/tb/rllib_<n>``, written
by our own ``SummaryWriter``: a bare ``Algorithm.train()`` loop writes none).
The checkpoint is ``algo.save_to_path(run_dir/"checkpoint")``; the module
with the best validation p99 is kept in ``run_dir/best_module``.

RLlib's masking module (``ActionMaskingTorchRLModule``) wants observations
shaped ``{"observations": flat Box, "action_mask": Box}``: ``MaskedFlatObs``
flattens the other Dict entries in sorted key order, and ``load_rllib_actor``
does the same flattening when the module acts outside Ray.

Accepted ``hyperparams`` keys (anything else is a ``ConfigError``):

- ``PPOConfig.training``: see ``TRAINING_KEYS`` (``lr``, ``gamma``, ``lambda_``,
  ``train_batch_size_per_learner``, ``minibatch_size``, ``num_epochs``,
  ``clip_param``, ``entropy_coeff``, ...). Defaults here:
  ``train_batch_size_per_learner = min(4000, total_steps)``,
  ``minibatch_size = min(128, train_batch_size_per_learner)``.
- the network (``rl_module(model_config=...)``): see ``MODEL_KEYS``
  (``fcnet_hiddens``, ``fcnet_activation``, ``head_fcnet_hiddens``, ``vf_share_layers``).
- sampling (``env_runners(...)``): ``rollout_fragment_length``, ``num_envs_per_env_runner``.

    >>> from oserve_rl.train.config import load_train_config
    >>> cfg = load_train_config("configs/train/quickstart_rllib.yaml", total_steps=200)   # doctest: +SKIP
    >>> summary = train_rllib(cfg, Path("runs/rllib-demo"))            # doctest: +SKIP
    >>> act = load_rllib_actor("runs/rllib-demo/checkpoint")            # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import json
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from oserve_rl.errors import CheckpointError, ConfigError
from oserve_rl.train.config import TrainConfig
from oserve_rl.train.validation import evaluate_on_windows, heuristic_baselines, validation_line, validation_scenarios

ENV_NAME = "oserve_rl_deploy_masked"
MODULE_SUBDIR = Path("learner_group") / "learner" / "rl_module" / "default_policy"

# PPOConfig.training / AlgorithmConfig.training arguments that are hyperparameters (not plumbing).
TRAINING_KEYS = (
    "lr", "gamma", "lambda_", "train_batch_size_per_learner", "minibatch_size", "num_epochs",
    "shuffle_batch_per_epoch", "clip_param", "vf_clip_param", "vf_loss_coeff", "entropy_coeff",
    "entropy_coeff_schedule", "use_kl_loss", "kl_coeff", "kl_target", "grad_clip", "grad_clip_by",
    "use_gae", "use_critic",
)
MODEL_KEYS = ("fcnet_hiddens", "fcnet_activation", "head_fcnet_hiddens", "head_fcnet_activation", "vf_share_layers")
ENV_RUNNER_KEYS = ("rollout_fragment_length", "num_envs_per_env_runner")
DEFAULT_BATCH = 4000
DEFAULT_MINIBATCH = 128
RAY_CONNECT_TIMEOUT_S = 3.0
# Unix sockets (plasma, raylet) live in Ray's temp dir; their paths must stay under 107 bytes.
MAX_TEMP_DIR_LEN = 60


# ----------------------------------------------------------------- observations
def flat_keys(space_or_obs: Any) -> list[str]:
    """The Dict entries that go into the flat ``observations`` vector, in a fixed (sorted) order."""
    keys = space_or_obs.spaces.keys() if isinstance(space_or_obs, gym.spaces.Dict) else space_or_obs.keys()
    return sorted(k for k in keys if k != "action_mask")


def flatten_obs(obs: dict[str, np.ndarray], keys: list[str]) -> dict[str, np.ndarray]:
    """``{"observations": flat float32, "action_mask": float32}``, the layout ActionMaskingTorchRLModule reads."""
    flat = np.concatenate([np.asarray(obs[k], dtype=np.float32).ravel() for k in keys])
    return {"observations": flat, "action_mask": np.asarray(obs["action_mask"], dtype=np.float32)}


class MaskedFlatObs(gym.ObservationWrapper):
    """Deploy-v0 with its Dict observation folded into ``observations`` + ``action_mask``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or "action_mask" not in space.spaces:
            raise ConfigError("the RLlib backend needs a Dict observation with an 'action_mask' entry")
        self.keys = flat_keys(space)
        lo = np.concatenate([np.broadcast_to(space[k].low, space[k].shape).ravel() for k in self.keys])
        hi = np.concatenate([np.broadcast_to(space[k].high, space[k].shape).ravel() for k in self.keys])
        n = space["action_mask"].shape[0]
        self.observation_space = gym.spaces.Dict({
            "observations": gym.spaces.Box(lo.astype(np.float32), hi.astype(np.float32), dtype=np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (n,), np.float32),
        })

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return flatten_obs(observation, self.keys)

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


def make_masked_env(env_opts: dict[str, Any], torch_threads: int = 1) -> MaskedFlatObs:
    """The env as RLlib's env runners build it (also in remote worker processes)."""
    import torch

    from oserve_rl.envs.deploy import DeployEnv

    torch.set_num_threads(torch_threads)  # env runners are separate processes: default threads spin on 2 cores
    return MaskedFlatObs(DeployEnv(dict(env_opts)))


# ----------------------------------------------------------------- hyperparameters
def split_hyperparams(hp: dict[str, Any], total_steps: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``cfg.hyperparams`` -> (``training`` kwargs, model_config, ``env_runners`` kwargs); unknown keys are an error."""
    valid = (*TRAINING_KEYS, *MODEL_KEYS, *ENV_RUNNER_KEYS)
    unknown = [k for k in hp if k not in valid]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, valid, 1)
            alias = {"learning_rate": "lr", "lambda": "lambda_", "gae_lambda": "lambda_", "n_epochs": "num_epochs",
                     "batch_size": "minibatch_size", "n_steps": "train_batch_size_per_learner",
                     "ent_coef": "entropy_coeff", "vf_coef": "vf_loss_coeff", "clip_range": "clip_param",
                     "max_grad_norm": "grad_clip", "net_arch": "fcnet_hiddens",
                     "policy_kwargs": "fcnet_hiddens"}.get(k) or (close[0] if close else None)
            hints.append(f"{k!r}" + (f" (did you mean {alias!r}?)" if alias else ""))
        raise ConfigError(f"hyperparams: unknown key(s) {', '.join(hints)} for the rllib backend (RLlib PPO); "
                          f"valid: {', '.join(valid)}")
    training = {k: hp[k] for k in TRAINING_KEYS if k in hp}
    training.setdefault("train_batch_size_per_learner", min(DEFAULT_BATCH, int(total_steps)))
    training.setdefault("minibatch_size", min(DEFAULT_MINIBATCH, int(training["train_batch_size_per_learner"])))
    model = {k: hp[k] for k in MODEL_KEYS if k in hp}
    runners = {k: hp[k] for k in ENV_RUNNER_KEYS if k in hp}
    return training, model, runners


# ----------------------------------------------------------------- Ray
def _parse_host_port(address: str) -> tuple[str, int] | None:
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _use_local_auth_token() -> None:
    """Send this machine's Ray token (~/.ray/auth_token) to a cluster on this machine.

    Ray >= 2.5x enables token authentication on `ray start --head` once a token
    exists, but a driver given an explicit address never picks it up by itself
    (only ``address="auto"`` does), so joining 127.0.0.1:PORT failed with
    "InvalidAuthToken". For remote addresses the user opts in (RAY_AUTH_MODE=token).
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _unreachable(address: str, why: str) -> ConfigError:
    auth = "" if "RAY_AUTH_MODE" in os.environ else \
        "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"
    return ConfigError(f"--ray-address {address}: cannot reach a Ray cluster there ({why}); start one with "
                       "`ray start --head --port 6379` and pass --ray-address 127.0.0.1:6379 "
                       f"(or leave --ray-address out to train on a local Ray){auth}")


def ray_address_problem(address: str) -> str | None:
    """What is wrong with the form of a --ray-address (None: nothing); checked before the run directory exists."""
    if address != "auto" and _parse_host_port(address) is None:
        return "expected 'auto' or HOST:PORT (e.g. 127.0.0.1:6379)"
    return None


def check_ray_reachable(address: str) -> None:
    """A TCP probe of HOST:PORT (``auto`` is not probed): ray.init retries an unreachable GCS for a long time,
    this answers in seconds, and train.py asks it before it writes the run directory."""
    problem = ray_address_problem(address)
    if problem is not None:
        raise ConfigError(f"--ray-address {address!r}: {problem}")
    hp = _parse_host_port(address)
    if hp is not None:
        try:
            socket.create_connection(hp, timeout=RAY_CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise _unreachable(address, e.strerror or type(e).__name__) from None


def init_ray(cfg: TrainConfig, run_dir: Path) -> None:
    """Join ``cfg.ray_address`` (failing fast and clearly when nothing answers) or start a small local Ray."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    address = cfg.ray_address
    if address:
        check_ray_reachable(address)
        hp = _parse_host_port(address)
        if address == "auto" or (hp is not None and _is_loopback(hp[0])):
            _use_local_auth_token()
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise _unreachable(address, why) from None
        return
    tmp = (run_dir / "ray").resolve()
    kw: dict[str, Any] = {}
    if len(str(tmp)) <= MAX_TEMP_DIR_LEN:
        tmp.mkdir(parents=True, exist_ok=True)
        kw["_temp_dir"] = str(tmp)
    ray.init(num_cpus=max(2, cfg.num_env_runners + 1), include_dashboard=False, log_to_driver=False,
             configure_logging=False, **kw)


def rllib_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def require_rllib() -> None:
    """Ray RLlib is an optional extra: say so, before the run directory exists, rather than an ImportError."""
    if not rllib_installed():
        raise ConfigError("the rllib backend needs Ray RLlib, which is not installed here: pip install "
                          "'ray[rllib]>=2.40' (the project's rllib extra), or train with --backend sb3")


def check_hyperparams(cfg: TrainConfig) -> None:
    """The hyperparameters as RLlib takes them: names (``split_hyperparams``), then RLlib's own consistency
    checks (``PPOConfig.validate``). Imports RLlib (a few seconds) when installed; starts no Ray process."""
    split_hyperparams(cfg.hyperparams, cfg.total_steps)
    if rllib_installed():  # without it only the names can be checked; train.py says Ray is missing
        build_config(cfg)


def build_config(cfg: TrainConfig):
    """The PPOConfig (new API stack, masked module) for ``cfg``."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule

    training, model, runners = split_hyperparams(cfg.hyperparams, cfg.total_steps)
    model = {"fcnet_hiddens": [64, 64], **model}
    config = (
        PPOConfig()
        .environment(ENV_NAME, disable_env_checking=True)
        .framework("torch")
        .env_runners(num_env_runners=cfg.num_env_runners, **runners)
        .learners(num_learners=0)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=ActionMaskingTorchRLModule, model_config=model))
        .training(**training)
        .debugging(seed=cfg.seed, log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=20)
    )
    try:  # RLlib's own consistency checks (batch sizes, coefficients), before any Ray process starts
        config.copy(copy_frozen=False).validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"hyperparams (rllib): {str(e).strip().splitlines()[0]}") from None
    return config


def build_algo(cfg: TrainConfig, config: Any, run_dir: Path):
    """The Algorithm on the connected Ray (registers the env creator there first)."""
    import ray.tune.trainable.trainable as trainable_mod
    from ray.tune.registry import register_env

    env_opts, threads = dict(cfg.env), cfg.torch_threads
    register_env(ENV_NAME, lambda _ctx: make_masked_env(env_opts, threads))

    # A bare Algorithm makes an (empty) logdir under ~/ray_results; keep it inside the run directory.
    storage = str((run_dir / "rllib").resolve())
    os.makedirs(storage, exist_ok=True)
    saved = getattr(trainable_mod, "DEFAULT_STORAGE_PATH", None)
    trainable_mod.DEFAULT_STORAGE_PATH = storage
    try:
        return config.build_algo()
    except (ValueError, TypeError) as e:  # AlgorithmConfig.validate: inconsistent batch sizes etc.
        raise ConfigError(f"hyperparams (rllib): {str(e).strip().splitlines()[0]}") from None
    finally:
        if saved is not None:
            trainable_mod.DEFAULT_STORAGE_PATH = saved


def current_module(algo: Any):
    """The RLModule with the latest weights (the local learner's: num_learners=0)."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    learner = getattr(algo.learner_group, "_learner", None)
    if learner is not None:
        return learner.module[DEFAULT_MODULE_ID]
    return algo.get_module(DEFAULT_MODULE_ID)


# ----------------------------------------------------------------- acting
def module_actor(module: Any) -> Callable[[dict[str, np.ndarray], Any], int]:
    """``act(obs, env) -> int``: flatten like ``MaskedFlatObs``, mask, argmax of the action logits."""
    import torch
    from ray.rllib.core.columns import Columns

    obs_space = getattr(module, "observation_space", None)
    want = None
    if isinstance(obs_space, gym.spaces.Dict) and "observations" in obs_space.spaces:
        want = obs_space["observations"].shape[0]

    def act(obs: dict[str, np.ndarray], env: Any = None) -> int:
        flat = flatten_obs(obs, flat_keys(obs))
        if want is not None and flat["observations"].shape[0] != want:
            raise CheckpointError(f"the RLlib module expects {want} observation features, the env gives "
                                  f"{flat['observations'].shape[0]}: evaluate with the env options it was trained on")
        batch = {Columns.OBS: {k: torch.from_numpy(v)[None] for k, v in flat.items()}}
        with torch.no_grad():
            out = module.forward_inference(batch)
        logits = out[Columns.ACTION_DIST_INPUTS][0].numpy()
        return int(np.argmax(logits))

    return act


def load_rllib_actor(path: str | Path) -> Callable[[dict[str, np.ndarray], Any], int]:
    """Load the torch RLModule of an RLlib checkpoint (no Ray cluster needed) as ``act(obs, env) -> int``.

    ``path`` is an algorithm checkpoint (``run_dir/checkpoint``), a run directory holding one, or a
    module checkpoint (``run_dir/best_module``). Deterministic: argmax of the masked logits.

        >>> act = load_rllib_actor("runs/quickstart_rllib-ppo-s0/checkpoint")   # doctest: +SKIP
        >>> action = act(obs, env)                                        # doctest: +SKIP
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"RLlib checkpoint {p} does not exist (train.py --backend rllib writes RUN/checkpoint)")
    candidates = [p / MODULE_SUBDIR, p / "checkpoint" / MODULE_SUBDIR, p]
    module_dir = next((c for c in candidates if (c / "class_and_ctor_args.pkl").is_file()), None)
    if module_dir is None:
        raise CheckpointError(f"{p} is not an RLlib checkpoint: no {MODULE_SUBDIR} with class_and_ctor_args.pkl "
                              "(pass the run's checkpoint/ directory)")
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    torch.set_num_threads(1)
    try:
        module = RLModule.from_checkpoint(module_dir)
    except Exception as e:  # pickle/torch/pyarrow errors of a damaged or foreign checkpoint
        raise CheckpointError(f"cannot load RLlib module from {module_dir}: {type(e).__name__}: {e}") from None
    module.eval()
    return module_actor(module)


# ----------------------------------------------------------------- training
def _tb_dir(run_dir: Path) -> Path:
    n = 1
    while (run_dir / "tb" / f"rllib_{n}").exists():
        n += 1
    return run_dir / "tb" / f"rllib_{n}"


def _log_hparams(writer: Any, cfg: TrainConfig, hp: dict[str, Any]) -> None:
    from torch.utils.tensorboard.summary import hparams

    flat = {"backend": "rllib", "algo": cfg.algo, "seed": cfg.seed, "total_steps": cfg.total_steps,
            "num_env_runners": cfg.num_env_runners,
            **{k: v for k, v in hp.items() if isinstance(v, (int, float, str, bool))}}
    # Written into the run's own event file (as SB3 does), not a separate add_hparams run.
    for summary in hparams(flat, {"eval/p99_e2e_s/agent": 0.0, "eval/return/agent": 0.0}):
        writer.file_writer.add_summary(summary)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def train_rllib(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Train masked PPO with RLlib; returns the summary train.py prints (also run_dir/train_summary.json)."""
    import ray
    import torch

    run_dir = Path(run_dir)
    torch.set_num_threads(cfg.torch_threads)
    training, _, _ = split_hyperparams(cfg.hyperparams, cfg.total_steps)
    config = build_config(cfg)  # bad hyperparameters fail here, before Ray starts
    init_ray(cfg, run_dir)
    try:
        return _train(cfg, run_dir, config, training)
    finally:
        ray.shutdown()


def _train(cfg: TrainConfig, run_dir: Path, config: Any, training: dict[str, Any]) -> dict[str, Any]:
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        EPISODE_LEN_MEAN,
        EPISODE_RETURN_MEAN,
        LEARNER_RESULTS,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
    )
    from torch.utils.tensorboard import SummaryWriter

    from oserve_rl.envs.deploy import DeployEnv

    # Built first, in the driver: a bad env option fails here as one clear error, not inside an env runner.
    eval_env = DeployEnv(dict(cfg.env))
    eval_env.reset(seed=cfg.seed + 10_000)
    algo = build_algo(cfg, config, run_dir)
    writer = SummaryWriter(str(_tb_dir(run_dir)))
    try:
        _log_hparams(writer, cfg, {**cfg.hyperparams, **training})
        scenarios = validation_scenarios(cfg)
        baselines = heuristic_baselines(eval_env, cfg.eval.heuristics, scenarios)
        history: list[dict[str, Any]] = []
        best = math.inf
        eval_s = 0.0
        t0 = time.perf_counter()
        steps = 0

        def evaluate() -> None:
            nonlocal best, eval_s
            t_eval = time.perf_counter()
            module = current_module(algo)
            res = {"agent": evaluate_on_windows(eval_env, module_actor(module), scenarios), **baselines}
            for name, metrics in res.items():
                for k, v in metrics.items():
                    writer.add_scalar(f"eval/{k}/{name}", v, steps)
            writer.flush()
            print(validation_line(steps, cfg.total_steps, time.perf_counter() - t0, res), flush=True)
            history.append({"step": steps, **res})
            p99 = res["agent"]["p99_e2e_s"]
            if p99 < best:
                best = p99
                module.save_to_path(str((run_dir / "best_module").resolve()))
            eval_s += time.perf_counter() - t_eval

        next_eval = iterations = stalled = 0
        while steps < cfg.total_steps:
            if steps >= next_eval:
                next_eval += cfg.eval.every_steps
                evaluate()
            result = algo.train()
            iterations += 1
            prev, steps = steps, int(result.get(NUM_ENV_STEPS_SAMPLED_LIFETIME)
                                     or result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME])
            stalled = stalled + 1 if steps <= prev else 0
            if stalled >= 5:  # e.g. every env runner died and was not restarted: never loop forever
                raise RuntimeError(f"RLlib sampled no env steps in 5 iterations (stuck at {steps}); "
                                   "see the Ray logs of the env runners")
            runners = result.get(ENV_RUNNER_RESULTS, {})
            for tag, val in (("rollout/ep_rew_mean", runners.get(EPISODE_RETURN_MEAN)),
                             ("rollout/ep_len_mean", runners.get(EPISODE_LEN_MEAN)),
                             ("time/steps_per_s", steps / max(time.perf_counter() - t0, 1e-9))):
                if _num(val) is not None:
                    writer.add_scalar(tag, _num(val), steps)
            for k, v in result.get(LEARNER_RESULTS, {}).get("default_policy", {}).items():
                if k in ("policy_loss", "vf_loss", "entropy", "mean_kl_loss", "curr_kl_coeff", "vf_explained_var") \
                        and _num(v) is not None:
                    writer.add_scalar(f"train/{k}", _num(v), steps)
        train_s, loop_eval_s = time.perf_counter() - t0, eval_s
        evaluate()
        algo.save_to_path(str((run_dir / "checkpoint").resolve()))
    finally:
        writer.close()
        algo.stop()
    # steps_per_s counts the periodic evaluations, like SB3's; sampling+learning alone is the second figure.
    summary = {"train_s": train_s, "steps": steps, "steps_per_s": steps / max(train_s, 1e-9),
               "eval_s": loop_eval_s, "steps_per_s_without_eval": steps / max(train_s - loop_eval_s, 1e-9),
               "iterations": iterations, "final": history[-1], "best_p99_e2e_s": best, "history": history,
               "checkpoint": str(run_dir / "checkpoint")}
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
