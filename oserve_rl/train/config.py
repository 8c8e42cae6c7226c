"""Training configs (RL-Zoo style YAML): env options, algorithm, hyperparameters, evaluation.

    env:            # any Deploy-v0 option (oserve_rl.envs.DeployEnvConfig)
      clusters: [h100x16]
      traces: [azure-conv]
      episode_s: 1200
      validation_windows: [2400]
    backend: sb3    # or rllib
    algo: maskable_ppo
    total_steps: 20000
    seed: 0
    hyperparams:    # passed to the SB3 algorithm (or RLlib's PPOConfig.training)
      n_steps: 256
      learning_rate: 0.0003
    eval:
      every_steps: 2000
      windows: [{start_s: 2400, rate_scale: 2.0, data_seed: 0}]
      heuristics: [vllm_static, oserve]

Unknown keys anywhere are an error that names them and the valid ones.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oserve_rl.envs.config import DeployEnvConfig, make_config
from oserve_rl.errors import ConfigError
from oserve_rl.yamlio import read_yaml_mapping

ALGOS = ("ppo", "maskable_ppo", "dqn", "a2c")


class EvalWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_s: float = Field(0.0, ge=0)
    rate_scale: float | None = None  # None: the env's (middle of its range)
    data_seed: int = 0
    trace: str | None = None
    cluster: str | None = None
    model: str | None = None


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every_steps: int = Field(2000, ge=1)
    windows: list[EvalWindow] = [EvalWindow()]
    heuristics: list[str] = ["vllm_static", "oserve"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: dict[str, Any] = {}
    backend: Literal["sb3", "rllib"] = "sb3"
    algo: Literal["ppo", "maskable_ppo", "dqn", "a2c"] = "maskable_ppo"
    total_steps: int = Field(20000, ge=1)
    seed: int = 0
    n_envs: int = Field(1, ge=1)
    # sb3: "subproc" steps the n_envs copies in worker processes, in parallel (the env, not the network, is
    # the cost: ~20-60 ms a step); "dummy" steps them one after another in this process. Same results.
    vec_env: Literal["dummy", "subproc"] = "dummy"
    torch_threads: int = Field(1, ge=1)
    hyperparams: dict[str, Any] = {}
    eval: EvalConfig = EvalConfig()
    # Added to a new policy's initial action logits, e.g. {1: 2.0}: start near "do what OServe does" and
    # explore from there instead of from uniformly random switching (sb3 backend; documented in docs/training.md).
    # Not applied with init_from: a continued policy starts from its checkpoint's logits.
    init_action_bias: dict[int, float] = {}
    num_env_runners: int = Field(0, ge=0)
    ray_address: str | None = None
    # sb3: continue training this checkpoint (its weights, optimiser state, hyperparameters and step count)
    # for total_steps more steps, like RL Zoo's --trained-agent. It must fit the env's spaces.
    init_from: str | None = None

    def env_config(self) -> DeployEnvConfig:
        return make_config(self.env)


def _fmt(e: ValidationError, where: str) -> str:
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            model = TrainConfig
            for part in err["loc"][:-1]:
                f = model.model_fields.get(str(part))
                ann = getattr(f, "annotation", None) if f else None
                model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else model
            valid = list(model.model_fields)
            hint = difflib.get_close_matches(str(err["loc"][-1]), valid, 1)
            out.append(f"unknown key {loc!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                       + f"; valid here: {', '.join(valid)}")
        else:
            out.append(f"{loc}: {err['msg']}")
    return f"{where}: " + "; ".join(out)


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML config (or start from defaults) and apply CLI overrides (None values are ignored)."""
    data: dict[str, Any] = {}
    where = "train config"
    if path is not None:
        p = Path(path)
        data = read_yaml_mapping(p, hint=" (configs live in configs/train/)")
        where = str(p)
    for k, v in overrides.items():
        if v is not None:
            data[k] = v
    try:
        cfg = TrainConfig(**data)
    except ValidationError as e:
        raise ConfigError(_fmt(e, where)) from None
    try:
        cfg.env_config()
    except ConfigError as e:
        raise ConfigError(f"{where}: env: {e}") from None
    if cfg.backend == "rllib" and (cfg.vec_env != "dummy" or cfg.n_envs != 1):
        raise ConfigError(f"{where}: n_envs and vec_env are for the sb3 backend; RLlib runs envs in parallel with "
                          "num_env_runners (and hyperparams.num_envs_per_env_runner)")
    if cfg.init_from is not None:
        if cfg.backend == "rllib":
            raise ConfigError(f"{where}: init_from is for the sb3 backend (RLlib restores with Algorithm.from_checkpoint)")
        from oserve_rl.envs.checkpoints import check_compatible

        check_compatible(cfg.init_from, cfg.env_config())  # exists, and fits the spaces of this config's env
    if cfg.backend == "rllib" and cfg.init_action_bias:
        raise ConfigError(f"{where}: init_action_bias is supported by the sb3 backend only; remove it for --backend rllib")
    return cfg
