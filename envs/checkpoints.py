"""Trained agents as policies: load a checkpoint, check it fits the env, run it on an episode.

Every run directory holds the checkpoint and ``config.yaml`` (the resolved
training config) and ``env_space.json`` (the observation/action signature).
Loading compares that signature with the env it is asked to act in and
refuses a mismatch with a ``CheckpointError`` naming the differing fields,
instead of crashing inside the network on a wrong-shaped tensor.

    >>> factory = checkpoint_policy("maskable_ppo:runs/quickstart/model.zip")
    >>> result = factory().run_episode(Scenario(...).build(seed=0))   # an EpisodeResult, like run_policy's
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from oserve_rl.envs.config import DeployEnvConfig, make_config
from oserve_rl.errors import CheckpointError, UnknownNameError
from oserve_rl.yamlio import read_yaml_mapping

KINDS = ("ppo", "maskable_ppo", "dqn", "a2c", "rllib")


def run_dir_of(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _saved_config(path: str | Path) -> tuple[dict[str, Any], Path] | tuple[None, None]:
    """(the train config saved beside a checkpoint, its file): train.py's ``config.yaml`` in the run directory,
    found from the model file or a folder up to two levels below the run (RLlib's checkpoint/...)."""
    run = run_dir_of(Path(path))
    for cand in (run, run.parent, run.parent.parent):
        cfg_path = cand / "config.yaml"
        if cfg_path.is_file():
            return read_yaml_mapping(cfg_path), cfg_path
    return None, None


def saved_env_config(path: str | Path) -> DeployEnvConfig:
    """The env config saved beside a checkpoint (file or directory)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    cfg, _ = _saved_config(p)
    if cfg is None:
        raise CheckpointError(f"no config.yaml beside checkpoint {p}: cannot tell which env it was trained on "
                              "(train.py writes one into every run directory)")
    return make_config(cfg.get("env", {}))


def saved_kind(path: str | Path) -> tuple[str | None, Path | None]:
    """(the checkpoint kind the run's config.yaml records, that file): ``rllib`` for the RLlib backend, else its
    ``algo``; (None, None) where no config says."""
    cfg, cfg_path = _saved_config(path)
    if cfg is None:
        return None, None
    kind = "rllib" if cfg.get("backend") == "rllib" else cfg.get("algo")
    return (kind if kind in KINDS else None), cfg_path


def check_kind(kind: str, path: str | Path) -> None:
    """Refuse a checkpoint named with another algorithm than the one that saved it: loading a MaskablePPO zip as
    ``ppo`` fails inside SB3 with a TypeError, as ``dqn`` with an AssertionError, neither naming the fix."""
    saved, cfg_path = saved_kind(path)
    if saved is not None and saved != kind:
        field = "backend: rllib" if saved == "rllib" else f"algo: {saved}"
        raise CheckpointError(f"checkpoint {path} was saved by {saved} ({field} in {cfg_path}), not {kind}: "
                              f"use {saved}:{path}")


def check_compatible(path: str | Path, env_cfg: DeployEnvConfig) -> None:
    """Refuse a checkpoint trained on different observation/action spaces."""
    run = run_dir_of(Path(path))
    sig_path = next((c / "env_space.json" for c in (run, run.parent, run.parent.parent)
                     if (c / "env_space.json").is_file()), None)
    if sig_path is None:  # rebuilding it from config.yaml would assume today's ENV_VERSION
        raise CheckpointError(f"no env_space.json beside checkpoint {path}: cannot tell which env version and spaces "
                              "it was trained on (train.py writes one into every run directory)")
    try:
        saved = json.loads(sig_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{sig_path}: not a readable space signature ({e})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{sig_path}: expected a mapping (env_version, num_types, ...), got {type(saved).__name__}")
    want = env_cfg.space_signature()
    diff = {k: (saved.get(k), want[k]) for k in want if saved.get(k) != want[k]}
    if diff:
        parts = ", ".join(f"{k}: checkpoint {a!r} vs env {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {path} was trained on a different observation/action space ({parts}); "
                              "evaluate it with the env options it was trained with, or retrain")


class CheckpointPolicy:
    """A trained agent acting through ``Deploy-v0`` on evaluate.py's episodes."""

    uses_hindsight = False

    def __init__(self, kind: str, path: str | Path):
        self.kind, self.path = kind, Path(path)
        self.name = f"{kind}:{path}"
        self.env_cfg = saved_env_config(self.path)
        check_kind(kind, self.path)
        check_compatible(self.path, self.env_cfg)
        self.act = load_actor(kind, self.path)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": str(self.path)}

    def run_episode(self, data: Any, **_: Any):
        import time

        from oserve_rl.envs.deploy import DeployEnv

        env = DeployEnv(self.env_cfg)
        obs, _ = env.reset(seed=0, options={"episode": data})
        while True:
            t0 = time.perf_counter()
            action = self.act(obs, env)
            think_s = time.perf_counter() - t0
            obs, _, terminated, truncated, _ = env.step(action)
            env.loop.decisions[-1]["decision_s"] = think_s  # the agent's own inference time (the env charges a fixed delay)
            if terminated or truncated:
                break
        return env.loop.result(self.name)


def load_actor(kind: str, path: Path):
    """``act(obs, env) -> action`` for a checkpoint (deterministic)."""
    if kind not in KINDS:
        raise UnknownNameError("checkpoint kind", kind, list(KINDS))
    if kind == "rllib":
        from oserve_rl.train.rllib import load_rllib_actor

        return load_rllib_actor(path)
    from oserve_rl.train.sb3 import agent_actor, algo_class

    try:
        model = algo_class(kind).load(str(path), device="cpu")
    except OSError as e:  # missing file, a directory: not about the kind
        raise CheckpointError(f"cannot load {kind} checkpoint {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- a foreign zip fails anywhere in SB3 (TypeError, AssertionError, ...)
        others = ", ".join(k for k in KINDS if k not in (kind, "rllib"))
        raise CheckpointError(f"cannot load {path} as a {kind} checkpoint ({type(e).__name__}: {e}); the kind must be "
                              f"the algorithm that trained it (train.py's `algo:`): if not {kind}, one of {others}, "
                              f"as KIND:{path}") from None
    return agent_actor(model, masked=kind == "maskable_ppo")


def checkpoint_policy(spec: str):
    """``"KIND:PATH"`` -> a factory of ``CheckpointPolicy``
    (evaluate.py's ``--policies maskable_ppo:runs/x/model.zip``)."""
    kind, _, path = spec.partition(":")
    if kind not in KINDS:
        raise UnknownNameError("checkpoint kind", kind, list(KINDS))
    if not path.strip():
        raise CheckpointError(f"{kind}: needs a checkpoint path, e.g. {kind}:runs/NAME/model.zip")
    CheckpointPolicy(kind, path)  # fail fast: missing file, wrong spaces
    return lambda: CheckpointPolicy(kind, path)
