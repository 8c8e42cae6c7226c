#!/usr/bin/env python
"""Train an RL agent that chooses LLM-cluster deployments on oserve_rl/Deploy-v0.

Hyperparameters live in YAML (configs/train/*.yaml, RL-Zoo style); flags
override them. Every run directory gets the resolved config.yaml and
env_space.json beside the checkpoints (model.zip, best_model.zip), the
TensorBoard events (tb/), and train_summary.json. Every eval.every_steps the
agent and the heuristics (vllm_static, oserve) run on the validation windows,
logged under eval/<metric>/<policy> in TensorBoard.

examples:
  python train.py --config configs/train/quickstart.yaml
  python train.py --config configs/train/quickstart.yaml --algo ppo --total-steps 5000 --seed 1
  python train.py --config configs/train/azure_code_busy.yaml --n-envs 8 --vec-env subproc
  python train.py --config configs/train/azure_code_busy.yaml --init-from runs/azure_code_busy-maskable_ppo-s0/model.zip \\
      --total-steps 8000 --run-name azure_code_busy-more
  python train.py --config configs/train/quickstart_rllib.yaml     # RLlib PPO on a local Ray (docs/rllib.md)
  ray start --head --port 6379 && python train.py --config configs/train/quickstart_rllib.yaml \\
      --ray-address 127.0.0.1:6379 --num-env-runners 1
  tensorboard --logdir runs/

The config is checked whole before anything is written: a bad file, field or flag is one `error:` line
(exit code 2). A run directory that already holds a trained model is not trained into again unless
--overwrite is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oserve_rl.train.config import TrainConfig


def _default(field: str, rllib: str | None = None) -> str:
    """The help's "default: from the config, else X", X read from TrainConfig so the two never differ."""
    from oserve_rl.train.config import TrainConfig

    value = TrainConfig.model_fields[field].default
    return f"default: from the config, else {value}" + (f"; rllib: {rllib}" if rllib else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training YAML (default: built-in defaults, see configs/train/quickstart.yaml)")
    p.add_argument("--backend", choices=["sb3", "rllib"],
                   help=f"Stable-Baselines3 on this machine, or RLlib on Ray ({_default('backend')})")
    p.add_argument("--algo", choices=["ppo", "maskable_ppo", "dqn", "a2c"],
                   help=f"algorithm; rllib trains ppo only ({_default('algo', 'ppo')})")
    p.add_argument("--total-steps", type=int,
                   help=f"environment steps (decision intervals) to train for, >= 1 ({_default('total_steps')})")
    p.add_argument("--seed", type=int,
                   help=f"seed for the env draws, the network and the algorithm, >= 0 ({_default('seed')})")
    p.add_argument("--n-envs", type=int,
                   help=f"env copies per rollout (sb3; PPO collects n_steps from each), >= 1 ({_default('n_envs')})")
    p.add_argument("--vec-env", choices=["dummy", "subproc"],
                   help="sb3: step the n_envs copies in this process (dummy) or in parallel worker processes "
                        f"(subproc: for machines with a core per copy) ({_default('vec_env')})")
    p.add_argument("--init-from", metavar="MODEL_ZIP",
                   help="sb3: continue training this checkpoint (weights, optimiser, hyperparameters, step count) "
                        "for --total-steps more steps; it must fit the config's env")
    p.add_argument("--logdir", default="runs", help="parent of the run directory (default runs/)")
    p.add_argument("--run-name", help="run directory name (default: <config stem>-<algo>-s<seed>)")
    p.add_argument("--overwrite", action="store_true",
                   help="train into a run directory that already holds a trained model: its config, checkpoints "
                        "and summary are replaced as the run goes, its TensorBoard events kept beside the new ones "
                        "(default: refuse; pick another --run-name)")
    p.add_argument("--ray-address", help="Ray cluster to join: 'auto' or HOST:PORT (rllib backend; default: from "
                                         "the config, else a local Ray started for the run)")
    p.add_argument("--num-env-runners", type=int,
                   help=f"RLlib env runners (0: sample in the driver), >= 0 ({_default('num_env_runners')})")
    return p


# What a finished or interrupted run leaves (sb3: model.zip, best_model.zip; rllib: checkpoint/, best_module/).
TRAINED_MARKERS = ("model.zip", "best_model.zip", "checkpoint", "best_module")


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a run directory that is a file, or that holds a trained model (unless --overwrite): training
    into it would replace that model, its config and its summary."""
    from oserve_rl.errors import ConfigError

    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} is a file; pick another --run-name or --logdir")
    held = [m for m in TRAINED_MARKERS if (run_dir / m).exists()] if run_dir.is_dir() else []
    if held and not overwrite:
        raise ConfigError(f"run directory {run_dir} already holds a trained model ({', '.join(held)}); pick another "
                          f"--run-name, continue it with --init-from {run_dir / 'model.zip'} --run-name NEW, "
                          "pass --overwrite to replace it, or remove the folder")


def write_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    """The run directory with the resolved config and the env's space signature (a checkpoint's passport)."""
    import yaml

    from oserve_rl.errors import ConfigError

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        (run_dir / "env_space.json").write_text(json.dumps(cfg.env_config().space_signature(), indent=2) + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write run directory {run_dir}: {e.strerror or e} (check --logdir and --run-name)") \
            from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from oserve_rl.errors import OServeError

    cfg = run_dir = None
    try:
        from oserve_rl.train.config import load_train_config

        # Everything is checked before the run directory is touched: a bad config never clobbers a good run.
        cfg = load_train_config(args.config, backend=args.backend, algo=args.algo, total_steps=args.total_steps,
                                seed=args.seed, n_envs=args.n_envs, vec_env=args.vec_env, init_from=args.init_from,
                                ray_address=args.ray_address, num_env_runners=args.num_env_runners)
        stem = Path(args.config).stem if args.config else "default"
        target = Path(args.logdir) / (args.run_name or f"{stem}-{cfg.algo}-s{cfg.seed}")
        check_run_dir(target, args.overwrite)
        if cfg.backend == "rllib":
            from oserve_rl.train.rllib import check_ray_reachable, require_rllib

            require_rllib()
            if cfg.ray_address:
                check_ray_reachable(cfg.ray_address)
        write_run_dir(target, cfg)
        run_dir = target
        print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir})", flush=True)
        t0 = time.perf_counter()
        if cfg.backend == "sb3":
            from oserve_rl.train.sb3 import train_sb3

            summary = train_sb3(cfg, run_dir)
        else:
            from oserve_rl.train.rllib import train_rllib

            summary = train_rllib(cfg, run_dir)
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        saved = run_dir / "model.zip" if run_dir is not None else None
        if cfg is not None and cfg.backend == "sb3" and saved is not None and saved.is_file():
            print(f"interrupted: {saved} holds the model as it was; continue it with --init-from {saved}",
                  file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
    final = summary.get("final", {})
    new = summary.get("steps_this_run", summary["steps"])
    more = f" more ({summary['steps']} in all, from {cfg.init_from})" if cfg.init_from else ""
    print(f"trained {new} steps{more} in {time.perf_counter() - t0:.0f} s ({summary['steps_per_s']:.0f} steps/s)")
    for name, m in final.items():
        if isinstance(m, dict):
            print(f"  validation {name:>12}: p99 E2E {m['p99_e2e_s']:.2f} s, SLO attainment {m['slo_attainment']:.3f}, "
                  f"switches {m['switches']:.1f}")
    print(f"checkpoint: {run_dir}/model.zip" if cfg.backend == "sb3" else f"checkpoint: {run_dir}/checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
