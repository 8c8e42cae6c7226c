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

Unknown keys anywhere are an error that names them and the valid ones; bad values are an error that
names the file (or the CLI flag that set them) and the field. ``load_train_config`` checks everything it
can before a run starts (names in the env and eval sections, validation windows, hyperparameters), so
``train.py`` never writes a run directory for a config that cannot train.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oserve_rl.envs.config import DeployEnvConfig, make_config
from oserve_rl.errors import ConfigError
from oserve_rl.yamlio import read_yaml_mapping

ALGOS = ("ppo", "maskable_ppo", "dqn", "a2c")
RLLIB_ALGO = "ppo"  # the rllib backend trains PPO with action masking, nothing else
# SB3 seeds np.random with the run's seed, which takes 0..2**32-1 (gymnasium refuses negative seeds).
MAX_SEED = 2**32 - 1


class EvalWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_s: float = Field(0.0, ge=0)
    rate_scale: float | None = Field(None, gt=0)  # None: the env's (middle of its range)
    data_seed: int = Field(0, ge=0, le=MAX_SEED)
    trace: str | None = None
    cluster: str | None = None
    model: str | None = None


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every_steps: int = Field(2000, ge=1)
    # At least one: the agent's validation p99 picks best_model.zip (no window: NaN, never a best model).
    windows: list[EvalWindow] = Field([EvalWindow()], min_length=1)
    heuristics: list[str] = ["vllm_static", "oserve"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: dict[str, Any] = {}
    backend: Literal["sb3", "rllib"] = "sb3"
    algo: Literal["ppo", "maskable_ppo", "dqn", "a2c"] = "maskable_ppo"  # rllib: ppo (set when not given)
    total_steps: int = Field(20000, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
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


# ----------------------------------------------------------------- formatting pydantic's errors
BOUND_OPS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _loc_str(loc: tuple[Any, ...]) -> str:
    """``("eval", "windows", 0, "start_s")`` as ``eval.windows[0].start_s``, the way the YAML nests it."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _config_model(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds, directly or as list items / optional: where its keys are checked."""
    if typing.get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _config_model(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The section whose keys are valid at ``loc`` (list indices step into the list's items)."""
    model: type[BaseModel] = TrainConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _config_model(field.annotation) if field is not None else None
        if inner is None:
            break
        model = inner
    return model


def _short_msg(err: dict[str, Any]) -> str:
    """pydantic's message, with bounds said the way the docs say them ("must be >= 1")."""
    op = BOUND_OPS.get(err["type"])
    if op is not None:
        return f"must be {op} {next(iter(err['ctx'].values()))}"
    if err["type"] == "too_short":
        return f"needs at least {err['ctx']['min_length']} entry"
    return err["msg"].removeprefix("Value error, ")


def _unknown_key(loc: tuple[Any, ...]) -> str:
    valid = list(_model_at(loc[:-1]).model_fields)
    hint = difflib.get_close_matches(str(loc[-1]), valid, 1)
    return (f"unknown key {_loc_str(loc)!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid here: {', '.join(valid)}")


def _fmt(e: ValidationError, where: str, flags: dict[str, str] | None = None) -> str:
    """One line for every problem: those of CLI flags name the flag, the others the file and the field."""
    flags = flags or {}
    in_file, from_flags = [], []
    for err in e.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            in_file.append(_unknown_key(loc))
        elif loc and str(loc[0]) in flags:
            from_flags.append(f"{flags[str(loc[0])]}: {_short_msg(err)}")
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if isinstance(got, (int, float, str)) or got is None else ""
            in_file.append(f"{_loc_str(loc)}: {_short_msg(err)}{shown}")
    return "; ".join(from_flags + ([f"{where}: " + "; ".join(in_file)] if in_file else []))


# ----------------------------------------------------------------- loading
def _read(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; --config expects a training YAML file "
                          "(e.g. configs/train/quickstart.yaml)")
    return read_yaml_mapping(p, hint=" (configs live in configs/train/)")


def _flag_text(key: str, value: Any) -> str:
    """The train.py flag behind an override, with its value: a bad value is blamed on the flag, not the YAML."""
    return f"--{key.replace('_', '-')} {value}"


def _rllib_algo(cfg: TrainConfig, where: str, flags: dict[str, str]) -> TrainConfig:
    """The rllib backend trains PPO: an algo nobody set becomes ppo; one the user set otherwise is an error."""
    if cfg.backend != "rllib" or cfg.algo == RLLIB_ALGO:
        return cfg
    backend = flags.get("backend", f"backend: rllib ({where})")
    if "algo" in flags:
        raise ConfigError(f"{flags['algo']}: {cfg.algo} is sb3-only; {backend} trains PPO (with action masking): "
                          "pass --algo ppo or --backend sb3")
    if "algo" in cfg.model_fields_set:
        raise ConfigError(f"{where}: algo: {cfg.algo} is sb3-only; {backend} trains PPO (with action masking): "
                          "set algo: ppo (or pass --algo ppo), or see configs/train/quickstart_rllib.yaml")
    return cfg.model_copy(update={"algo": RLLIB_ALGO})


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply CLI overrides (None values are ignored) and check
    everything a run needs: a config this returns trains, or fails for reasons outside the config."""
    data: dict[str, Any] = {}
    where = "train config"
    if path is not None:
        data = _read(path)
        where = str(path)
    flags = {k: _flag_text(k, v) for k, v in overrides.items() if v is not None}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = TrainConfig(**data)
    except ValidationError as e:
        raise ConfigError(_fmt(e, where, flags)) from None
    cfg = _rllib_algo(cfg, where, flags)
    try:
        env_cfg = cfg.env_config()
    except ConfigError as e:
        raise ConfigError(f"{where}: env: {e}") from None
    if cfg.backend == "rllib" and (cfg.vec_env != "dummy" or cfg.n_envs != 1):
        which = ", ".join(flags[k] for k in ("n_envs", "vec_env") if k in flags) or where
        raise ConfigError(f"{which}: n_envs and vec_env are for the sb3 backend; RLlib runs envs in parallel with "
                          "num_env_runners (and hyperparams.num_envs_per_env_runner)")
    if cfg.init_from is not None:
        if cfg.backend == "rllib":
            raise ConfigError(f"{flags.get('init_from', where + ': init_from')}: init_from is for the sb3 backend "
                              "(RLlib restores with Algorithm.from_checkpoint)")
        from oserve_rl.envs.checkpoints import check_compatible

        check_compatible(cfg.init_from, env_cfg)  # exists, and fits the spaces of this config's env
    if cfg.backend == "rllib" and cfg.init_action_bias:
        raise ConfigError(f"{where}: init_action_bias is supported by the sb3 backend only; remove it for --backend rllib")
    if cfg.ray_address is not None:
        from oserve_rl.train.rllib import ray_address_problem

        problem = ray_address_problem(cfg.ray_address)
        if problem is not None:
            raise ConfigError(f"{flags.get('ray_address', f'{where}: ray_address {cfg.ray_address!r}')}: {problem}")
    from oserve_rl.train.validation import check_runnable

    try:  # names, windows and hyperparameters: what would otherwise fail after the run directory exists
        check_runnable(cfg, env_cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg
