"""Export trained Deploy-v0 agents to ONNX (+ ``policy.json``), and heuristics to ``policy.json``.

    >>> from oserve_rl.export.onnx_export import export_checkpoint, export_heuristic
    >>> res = export_checkpoint("runs/quickstart-maskable_ppo-s0/model.zip", "exports/q")   # doctest: +SKIP
    >>> res.agreement                     # (agreeing, checked) on random observations   # doctest: +SKIP
    (1000, 1000)
    >>> export_heuristic("oserve", "exports/oserve", {"hysteresis": 0.1})                 # doctest: +SKIP

The graph (opset 17, one file, checked with ``onnx.checker``) takes one
float32 input ``[batch, n]`` per observation key, named by the key, and
returns ``action`` (int64 ``[batch]``, the deterministic action with the
mask applied in the graph) and ``logits`` (float32 ``[batch, K+2]``).
RLlib modules read one flat vector (the non-mask keys in sorted order,
``oserve_rl.train.rllib.MaskedFlatObs``); the graph does that concatenation
itself, so every exported policy is fed the same per-key dict.

Masking, per kind (the rule each agent was trained and evaluated with):

- ``maskable_ppo``: masked logits (sb3-contrib's fill, -1e8) -> argmax, as
  ``MaskablePPO.predict(obs, action_masks=..., deterministic=True)``;
- ``rllib``: the module's own masking (``logits + clamp(log(mask), FLOAT_MIN)``) -> argmax;
- ``ppo``: plain PPO never saw the mask; it was trained and is evaluated with
  ``invalid_action: keep``, so the graph takes the argmax of the raw logits
  and turns a masked choice into ``0`` (keep), exactly what the env executes
  (``ppo_mask="argmax"`` instead takes the best allowed action).

``format_version`` 1 of ``policy.json`` is documented in docs/export.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import subprocess
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oserve_rl.errors import CheckpointError, ConfigError, UnknownNameError
from oserve_rl.yamlio import read_yaml_mapping
from oserve_rl.export.runtime import (
    FORMAT,
    FORMAT_VERSION,
    ONNX_FILE,
    POLICY_FILE,
    ExportedPolicy,
    file_sha256,
    load_exported,
    sample_observations,
)

KINDS = ("ppo", "maskable_ppo", "rllib")
PPO_MASK_RULES = ("keep", "argmax")
OPSET = 17
SB3_MASK_FILL = -1e8  # sb3-contrib MaskableCategorical's HUGE_NEG: masked logits become exactly this
ENV_ID = "oserve_rl/Deploy-v0"
NORMALISATION = ("none in the policy: Deploy-v0 already scales every feature (log1p rates and queues, shares in "
                 "[0, 1], log2 TP/PP, sin/cos time); feed the env's observations as they are, float32, "
                 "2-D entries flattened row-major")


@dataclass
class ExportResult:
    """What ``export_checkpoint`` wrote and checked.

    ``agreement``: (observations where onnxruntime chose the same action as
    the original framework, observations checked); ``None`` when ``verify=0``.
    ``reference_act``: ``act(obs) -> int`` through the original framework
    (for timing comparisons).
    """

    out_dir: Path
    spec: dict[str, Any]
    agreement: tuple[int, int] | None
    reference_act: Callable[[dict[str, np.ndarray]], int]

    @property
    def policy(self) -> ExportedPolicy:
        return load_exported(self.out_dir)


# ---------------------------------------------------------------- finding checkpoints
def _config_dir(path: Path) -> Path | None:
    """The run directory: the nearest ancestor with config.yaml (RLlib module dirs sit 5 levels below it)."""
    start = path if path.is_dir() else path.parent
    return next((c for c in [start, *start.parents][:7] if (c / "config.yaml").is_file()), None)


def _train_config(path: Path) -> dict[str, Any]:
    d = _config_dir(path)
    if d is None:
        return {}
    return read_yaml_mapping(d / "config.yaml")


def _rllib_module_dir(path: Path) -> Path | None:
    from oserve_rl.train.rllib import MODULE_SUBDIR

    # A run directory means its final checkpoint (as model.zip for SB3), else its best module.
    cands = [path / MODULE_SUBDIR, path / "checkpoint" / MODULE_SUBDIR, path, path / "best_module"]
    return next((c for c in cands if (c / "class_and_ctor_args.pkl").is_file()), None)


def _sb3_policy_module(zip_path: Path) -> str:
    """The module of the saved policy class, read from the zip's JSON (no unpickling)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            data = json.loads(z.read("data"))
        return str(data["policy_class"]["__module__"])
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{zip_path} is not a Stable-Baselines3 model zip ({type(e).__name__}: {e})") from None


def resolve_checkpoint(path: str | Path, kind: str | None = None) -> tuple[str, Path]:
    """``(kind, file or module directory)`` for a checkpoint path, a run directory or an RLlib checkpoint.

    SB3: ``model.zip`` (a run directory means its ``model.zip``); RLlib: the
    module directory of ``RUN/checkpoint``, ``RUN/best_module`` or ``RUN``.
    The kind comes from the run's ``config.yaml`` and the checkpoint itself;
    a ``kind`` that contradicts them is a ``CheckpointError``.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if kind is not None and kind not in KINDS:
        raise UnknownNameError("export kind", kind, KINDS)
    zip_path = p if p.is_file() else (p / "model.zip" if (p / "model.zip").is_file() else None)
    if zip_path is not None:
        module = _sb3_policy_module(zip_path)
        found = "maskable_ppo" if "maskable" in module else "ppo"
        algo = _train_config(zip_path).get("algo")
        if found == "ppo" and algo not in (None, "ppo"):
            raise CheckpointError(f"{zip_path} is an SB3 {algo} model: export supports {', '.join(KINDS)}")
        if kind is not None and kind != found:
            raise CheckpointError(f"{zip_path} holds a {found} policy ({module}), not {kind}: "
                                  f"pass --kind {found} or leave --kind out")
        return found, zip_path
    module_dir = _rllib_module_dir(p)
    if module_dir is None:
        raise CheckpointError(f"{p} is not an exportable checkpoint: expected an SB3 model.zip, a run directory "
                              "holding one, or an RLlib checkpoint (RUN/checkpoint, RUN/best_module)")
    if kind is not None and kind != "rllib":
        raise CheckpointError(f"{p} is an RLlib checkpoint, not {kind}: pass --kind rllib or leave --kind out")
    return "rllib", module_dir


def detect_kind(path: str | Path) -> str:
    """``"ppo"``, ``"maskable_ppo"`` or ``"rllib"`` for a checkpoint (see ``resolve_checkpoint``)."""
    return resolve_checkpoint(path)[0]


# ---------------------------------------------------------------- env description
def obs_layouts(cfg: Any) -> dict[str, tuple[int, ...]]:
    """The unflattened shape of every observation key for an env config (the env feeds them flattened)."""
    from oserve_rl.envs.deploy import DEP_FEATURES, N_ACTION_FEATURES, REP_FEATURES

    J, K, R, H = cfg.num_types, cfg.num_candidates, cfg.max_replicas, cfg.history_min
    every = {"rate_history": (H, J), "forecast": (J,), "lengths": (J, 2), "deployment": (DEP_FEATURES,),
             "replicas": (R, REP_FEATURES), "switch": (2,), "time": (3,), "candidates": (K + 2, N_ACTION_FEATURES + J),
             "action_mask": (K + 2,)}
    return {k: every[k] for k in cfg.obs_keys}


def _obs_docs() -> dict[str, str]:
    """Per-key content from the table in ``oserve_rl.envs.deploy``'s docstring (one source of truth)."""
    from oserve_rl.envs import deploy

    rows = re.findall(r"^\| (\w+) \| \(([^)]*)\) \| (.+?) \|\s*$", deploy.__doc__ or "", re.M)
    return {key: text.replace("``", "`") for key, _, text in rows}


def _env_block(cfg: Any) -> dict[str, Any]:
    return {"id": ENV_ID, "env_version": cfg.space_signature()["env_version"],
            "space_signature": cfg.space_signature(), "space_hash": cfg.space_hash(),
            "config": cfg.model_dump(mode="json")}


def _actions_block(cfg: Any) -> dict[str, Any]:
    from oserve_rl.agents.oserve import OServe

    K = cfg.num_candidates
    oserve = OServe().describe()
    oserve.pop("name", None)
    initial = "OServe's pick" if cfg.initial == "oserve" else cfg.initial
    table = [
        {"index": 0, "name": "keep", "meaning": f"keep the current deployment and dispatch weights "
                                               f"(at the first decision: install `initial` = {initial})"},
        {"index": 1, "name": "oserve", "meaning": "do what OServe decides now: flow-guided search on the forecast, "
                                                 "its switch rule and LP dispatch weights", "oserve_params": oserve},
    ]
    for k in range(K):
        table.append({"index": 2 + k, "name": f"candidate_{k}", "candidate": k,
                      "meaning": f"switch to the episode's candidate {k} (DeployEnv reset info['candidates'][{k}]), "
                                 "placed so unchanged replicas keep their GPUs, dispatched by the LP weights for "
                                 "the forecast; masked when the slot is unused or is the current deployment"})
    return {
        "n": K + 2,
        "table": table,
        "candidates": {
            "per_episode": True,
            "how": ("computed once per (cluster, model, request-type mean lengths) by "
                    "oserve_rl.envs.deploy._candidates: every homogeneous deployment plus OServe's flow-guided search "
                    "results for demand mixes (uniform, and each type weighted x3) at 0.5 / 0.9 / 1.3 times the best "
                    "homogeneous capacity, ranked by the LP load scale at a uniform demand; the best num_candidates. "
                    "Reproduce them with DeployEnv(env.config).reset(...): info['candidates'] lists their spec strings"),
            "determined_by": {"clusters": cfg.clusters, "models": cfg.models, "traces": cfg.traces,
                              "num_types": cfg.num_types, "num_candidates": K, "slo_tpot_s": cfg.slo_tpot_s,
                              "type_lengths": "mean (input, output) tokens of the trace's k-means request types "
                                              "(typer_seed 0), rounded", "engine": "EngineConfig() defaults"},
        },
    }


def _obs_block(cfg: Any, keys: list[str], bounds: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    layouts, docs = obs_layouts(cfg), _obs_docs()
    entries = []
    for k in keys:
        lo, hi = bounds[k]
        entries.append({"key": k, "shape": [int(np.prod(layouts[k]))], "layout": list(layouts[k]),
                        "dtype": "float32", "low": lo, "high": hi, "content": docs.get(k, "")})
    return {"dtype": "float32", "keys": entries, "normalisation": NORMALISATION,
            "source": "oserve_rl.envs.deploy.DeployEnv observations (reset/step), one array per key"}


# ---------------------------------------------------------------- provenance
def _git_state() -> tuple[str | None, bool | None]:
    import oserve_rl

    repo = Path(oserve_rl.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def _tree_sha256(path: Path) -> str:
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def _versions(*names: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def _provenance(kind: str, checkpoint: Path, source: Path, train_cfg: dict[str, Any],
                trained_steps: int | None) -> dict[str, Any]:
    import oserve_rl

    commit, dirty = _git_state()
    run_dir = _config_dir(source)
    libs = ("torch", "onnx", "onnxruntime", "onnxscript") + (("ray",) if kind == "rllib" else
                                                            ("stable-baselines3", "sb3-contrib"))
    return {
        "algo": train_cfg.get("algo", "ppo" if kind == "rllib" else kind),
        "backend": train_cfg.get("backend", "rllib" if kind == "rllib" else "sb3"),
        "seed": train_cfg.get("seed"), "total_steps": train_cfg.get("total_steps"), "trained_steps": trained_steps,
        "run_dir": str(run_dir.resolve()) if run_dir else None,
        "checkpoint": str(source.resolve()), "checkpoint_loaded": str(checkpoint.resolve()),
        "checkpoint_sha256": _tree_sha256(checkpoint),
        "train_config": {k: v for k, v in train_cfg.items() if k != "env"},
        "git_commit": commit, "git_dirty": dirty,
        "git_note": "the oserve-rl checkout at export time (train.py records no commit)",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "exported_by": f"oserve-rl {oserve_rl.__version__}", "versions": _versions(*libs),
    }


def _trained_steps_rllib(source: Path) -> int | None:
    run = _config_dir(source)
    summary = run / "train_summary.json" if run else None
    if summary and summary.is_file():
        try:
            return int(json.loads(summary.read_text())["steps"])
        except (KeyError, ValueError, TypeError, json.JSONDecodeError):
            return None
    return None


# ---------------------------------------------------------------- graphs
def _mask_logits(torch: Any, logits: Any, mask: Any, rule: str):
    """(action, logits) for a mask rule; see the module docstring."""
    allowed = mask > 0.5
    if rule == "masked_argmax":
        masked = torch.where(allowed, logits, torch.full_like(logits, SB3_MASK_FILL))
        return torch.argmax(masked, dim=1), masked
    if rule == "keep_if_masked":
        action = torch.argmax(logits, dim=1)
        ok = torch.gather(allowed, 1, action.unsqueeze(1)).squeeze(1)
        return torch.where(ok, action, torch.zeros_like(action)), logits
    if rule == "module_masked_argmax":  # the RLlib module already masked its logits
        return torch.argmax(logits, dim=1), logits
    raise AssertionError(rule)


def _sb3_graph(policy: Any, keys: list[str], rule: str):
    import torch
    from stable_baselines3.common.policies import BaseModel

    class SB3Policy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy

        def forward(self, *xs: Any):
            obs = dict(zip(keys, xs))
            p = self.policy
            # BaseModel.extract_features: preprocess (a float cast for Boxes) + the actor's extractor.
            features = BaseModel.extract_features(p, obs, p.pi_features_extractor)
            logits = p.action_net(p.mlp_extractor.forward_actor(features))
            return _mask_logits(torch, logits, obs["action_mask"], rule)

    return SB3Policy().eval()


def _rllib_graph(module: Any, keys: list[str], flat: list[str]):
    import torch
    from ray.rllib.core.columns import Columns

    class RLlibPolicy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, *xs: Any):
            obs = dict(zip(keys, xs))
            x = torch.cat([obs[k] for k in flat], dim=1)  # MaskedFlatObs: non-mask keys, sorted
            out = self.module.forward_inference({Columns.OBS: {"observations": x, "action_mask": obs["action_mask"]}})
            return _mask_logits(torch, out[Columns.ACTION_DIST_INPUTS], obs["action_mask"], "module_masked_argmax")

    return RLlibPolicy().eval()


@contextlib.contextmanager
def _quiet():
    """The exporter logs progress, missing torchvision ops and the 18 -> 17 opset conversion: not news."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export_graph(graph: Any, keys: list[str], dims: Mapping[str, int], path: Path) -> None:
    import onnx
    import torch

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    example = tuple(torch.zeros(2, dims[k]) for k in keys)  # batch 2: torch.export specialises sizes 0 and 1
    if "action_mask" in keys:
        example[keys.index("action_mask")].fill_(1.0)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(graph, example, str(tmp), input_names=keys, output_names=["action", "logits"],
                              opset_version=OPSET, dynamic_shapes=(tuple({0: batch} for _ in keys),),
                              external_data=False, dynamo=True, verbose=False)
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model, full_check=True)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset != OPSET:
            raise CheckpointError(f"the exporter wrote opset {opset}, not {OPSET} (torch {torch.__version__}, "
                                  f"onnx {onnx.__version__}): the version conversion failed")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- export
def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, kind: str | None = None, *,
                      ppo_mask: str = "keep", verify: int = 1000, seed: int = 0) -> ExportResult:
    """Write ``out_dir/policy.onnx`` and ``out_dir/policy.json`` for an SB3 or RLlib checkpoint.

    ``verify``: random observations (``runtime.sample_observations``) on which
    onnxruntime must choose the same action as the original framework; any
    difference is a ``CheckpointError`` (and no ``policy.json`` is left).
    """
    from oserve_rl.envs.checkpoints import check_compatible, saved_env_config

    if ppo_mask not in PPO_MASK_RULES:
        raise UnknownNameError("ppo mask rule", ppo_mask, PPO_MASK_RULES)
    source = Path(checkpoint)
    kind, ckpt = resolve_checkpoint(source, kind)
    run_dir = _config_dir(ckpt)
    if run_dir is None:
        raise CheckpointError(f"no config.yaml beside checkpoint {source} or in the directories above it: cannot "
                              "tell which env it was trained on (train.py writes one into every run directory)")
    cfg = saved_env_config(run_dir)
    check_compatible(run_dir, cfg)
    layouts = obs_layouts(cfg)
    dims = {k: int(np.prod(s)) for k, s in layouts.items()}
    train_cfg = _train_config(ckpt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / POLICY_FILE).unlink(missing_ok=True)  # never leave a JSON that describes another graph

    if kind == "rllib":
        graph, keys, bounds, reference, steps, mask = _prepare_rllib(ckpt, cfg, dims)
    else:
        graph, keys, bounds, reference, steps, mask = _prepare_sb3(kind, ckpt, dims, ppo_mask)
    _export_graph(graph, keys, dims, out / ONNX_FILE)

    spec = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "onnx",
        "env_version": cfg.space_signature()["env_version"],
        "policy": {"algo": kind, "backend": "rllib" if kind == "rllib" else "sb3", "deterministic": True},
        "onnx": {"file": ONNX_FILE, "sha256": file_sha256(out / ONNX_FILE), "opset": OPSET,
                 "inputs": keys, "batch_axis": 0, "mask": mask,
                 "outputs": {"action": "int64 [batch]: the action to take (mask applied)",
                             "logits": f"float32 [batch, {cfg.num_candidates + 2}]: "
                                       + ("the policy's raw logits" if mask["rule"] == "keep_if_masked"
                                          else "masked logits (masked actions at the fill value)")}},
        "observation": _obs_block(cfg, keys, bounds),
        "actions": _actions_block(cfg),
        "env": _env_block(cfg),
        "provenance": _provenance(kind, ckpt, source, train_cfg, steps),
    }
    _write_json(out / POLICY_FILE, spec)
    agreement = None
    if verify > 0:
        try:
            agreement = _verify(out, reference, int(verify), seed)
        except BaseException:
            (out / POLICY_FILE).unlink(missing_ok=True)
            raise
        spec["verification"] = {"observations": agreement[1], "agreeing": agreement[0], "seed": seed,
                                "how": "runtime.sample_observations: onnxruntime vs the original framework's "
                                       "deterministic action"}
        _write_json(out / POLICY_FILE, spec)
    return ExportResult(out, spec, agreement, reference)


def _prepare_sb3(kind: str, zip_path: Path, dims: Mapping[str, int], ppo_mask: str):
    import torch

    from oserve_rl.train.sb3 import algo_class

    run = _config_dir(zip_path)
    if run is not None and any(run.glob("vecnormalize*.pkl")):
        raise CheckpointError(f"{run} holds VecNormalize statistics: exporting normalised agents is not supported "
                              "(Deploy-v0 features are already scaled; train without VecNormalize)")
    torch.set_num_threads(1)
    try:
        model = algo_class(kind).load(str(zip_path), device="cpu")
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"cannot load {kind} checkpoint {zip_path}: {e}") from None
    space = model.observation_space
    keys = list(space.spaces)
    got = {k: int(np.prod(space[k].shape)) for k in keys}
    if got != dict(dims):
        raise CheckpointError(f"{zip_path}: the model's observation space {got} does not match its config.yaml "
                              f"env {dict(dims)}")
    if getattr(model.action_space, "n", None) != dims["action_mask"]:
        raise CheckpointError(f"{zip_path}: {model.action_space} does not match the env's {dims['action_mask']} actions")
    policy = model.policy
    policy.set_training_mode(False)
    rule = "masked_argmax" if kind == "maskable_ppo" or ppo_mask == "argmax" else "keep_if_masked"
    bounds = {k: (float(np.min(space[k].low)), float(np.max(space[k].high))) for k in keys}

    def reference_batch(obs: dict[str, np.ndarray]) -> np.ndarray:
        mask = obs["action_mask"] > 0.5
        if kind == "maskable_ppo":
            a, _ = model.predict(obs, action_masks=mask, deterministic=True)
            return np.asarray(a)
        if rule == "keep_if_masked":  # what Deploy-v0 (invalid_action: keep) executes for PPO's choice
            a, _ = model.predict(obs, deterministic=True)
            a = np.asarray(a)
            return np.where(mask[np.arange(len(a)), a], a, 0)
        with torch.no_grad():
            t, _ = policy.obs_to_tensor(obs)
            logits = policy.get_distribution(t).distribution.logits.numpy()
        return np.argmax(np.where(mask, logits, SB3_MASK_FILL), axis=1)

    mask = {"rule": rule, "input": "action_mask", "allowed": "action_mask > 0.5",
            "fill": SB3_MASK_FILL if rule == "masked_argmax" else None,
            "note": {"masked_argmax": "argmax over the logits with masked actions set to the fill value",
                     "keep_if_masked": "argmax of the raw logits; a masked choice becomes 0 (keep), as Deploy-v0 "
                                       "with invalid_action: keep executes it (plain PPO was trained that way)"}[rule]}
    return (_sb3_graph(policy, keys, rule), keys, bounds, _batched(reference_batch),
            int(model.num_timesteps), mask)


def _prepare_rllib(module_dir: Path, cfg: Any, dims: Mapping[str, int]):
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    from oserve_rl.train.rllib import flat_keys, module_actor

    torch.set_num_threads(1)
    try:
        with _quiet():
            module = RLModule.from_checkpoint(module_dir)
    except Exception as e:  # pickle/torch/pyarrow errors of a damaged or foreign checkpoint
        raise CheckpointError(f"cannot load RLlib module from {module_dir}: {type(e).__name__}: {e}") from None
    module.eval()
    keys = sorted(dims)
    flat = flat_keys(dims)
    space = getattr(module, "observation_space", None)
    try:
        obs_box, mask_box = space["observations"], space["action_mask"]
    except (TypeError, KeyError):
        raise CheckpointError(f"{module_dir}: not a masked RLlib module (observation space {space}); "
                              "train.py --backend rllib trains ActionMaskingTorchRLModule") from None
    want = sum(dims[k] for k in flat)
    if obs_box.shape[0] != want or mask_box.shape[0] != dims["action_mask"]:
        raise CheckpointError(f"{module_dir}: the module reads {obs_box.shape[0]} features and "
                              f"{mask_box.shape[0]} actions, its config.yaml env gives {want} and "
                              f"{dims['action_mask']}")
    bounds, off = {"action_mask": (0.0, 1.0)}, 0
    for k in flat:
        lo, hi = obs_box.low[off:off + dims[k]], obs_box.high[off:off + dims[k]]
        bounds[k] = (float(np.min(lo)), float(np.max(hi)))
        off += dims[k]
    act = module_actor(module)

    mask = {"rule": "module_masked_argmax", "input": "action_mask", "allowed": "action_mask > 0",
            "fill": "logits + clamp(log(action_mask), FLOAT_MIN=-3.4e38)",
            "note": "RLlib ActionMaskingTorchRLModule's own masking, then argmax (load_rllib_actor); the graph "
                    "concatenates the non-mask keys in sorted order into the module's flat 'observations' input "
                    f"({', '.join(flat)})"}
    return (_rllib_graph(module, keys, flat), keys, bounds, act, _trained_steps_rllib(module_dir), mask)


def _batched(reference_batch: Callable[[dict[str, np.ndarray]], np.ndarray]):
    def act(obs: dict[str, np.ndarray]) -> int:
        return int(reference_batch({k: np.asarray(v, dtype=np.float32)[None] for k, v in obs.items()})[0])

    act.batch = reference_batch  # type: ignore[attr-defined]
    return act


def _verify(out: Path, reference: Callable[[dict[str, np.ndarray]], int], n: int, seed: int) -> tuple[int, int]:
    policy = load_exported(out)
    batch = sample_observations(policy, n, seed)
    got = policy.act_batch(batch)
    if hasattr(reference, "batch"):
        want = np.asarray(reference.batch(batch))
    else:
        want = np.array([reference({k: v[i] for k, v in batch.items()}) for i in range(n)])
    agree = int((got == want).sum())
    if agree < n:
        i = int(np.flatnonzero(got != want)[0])
        logits = policy.logits_batch({k: v[i:i + 1] for k, v in batch.items()})[0]
        raise CheckpointError(f"the exported graph disagrees with the checkpoint on {n - agree} of {n} random "
                              f"observations (first: #{i}, onnxruntime {int(got[i])}, original {int(want[i])}, "
                              f"logits {np.round(logits, 6).tolist()}); policy.onnx is left in {out} for inspection")
    return agree, n


# ---------------------------------------------------------------- heuristics
def exportable_heuristics() -> list[str]:
    """Registry names that can run live (no hindsight of the episode's future)."""
    from oserve_rl.agents import policy_class, policy_names

    return [n for n in policy_names() if not policy_class(n).uses_hindsight]


def export_heuristic(name: str, out_dir: str | Path, params: Mapping[str, Any] | None = None, *,
                     env_config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_dir/policy.json`` naming a heuristic and its full parameters (defaults filled in).

    ``params`` are the policy's constructor arguments (validated by building
    it). ``env_config``: optionally the env the heuristic is meant for (a train
    config YAML, an env-options YAML or a mapping), recorded with its
    signature. Returns the JSON written.
    """
    from oserve_rl.agents import make_policy, policy_class

    params = dict(params or {})
    cls = policy_class(name)
    key = cls.name
    if cls.uses_hindsight and not params.get("deployment"):
        raise ConfigError(f"heuristic {key!r} needs the episode's future (hindsight) and cannot run live; "
                          f"exportable: {', '.join(exportable_heuristics())} (vllm_static/llumnix with "
                          "--param deployment=SPEC)")
    desc = make_policy(key, **params).describe()
    desc.pop("name", None)
    full = {**desc, **params}
    try:
        make_policy(key, **full)
    except (ConfigError, TypeError):  # describe() of this policy reports more than its constructor takes
        full = params
    env_block = None
    if env_config is not None:
        env_block = _env_block(_env_from(env_config))
    from oserve_rl.export.runtime import installed_env_version

    commit, dirty = _git_state()
    import oserve_rl

    spec = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "heuristic",
        "env_version": env_block["env_version"] if env_block else installed_env_version(),
        "heuristic": {"name": key, "params": full, "class": f"{cls.__module__}:{cls.__qualname__}",
                      "how_to_run": "oserve_rl.agents.make_policy(name, **params) in oserve_rl.policy.ControlLoop "
                                    "(ExportedPolicy.make_heuristic())"},
        "env": env_block,
        "provenance": {"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "git_commit": commit, "git_dirty": dirty, "exported_by": f"oserve-rl {oserve_rl.__version__}"},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ONNX_FILE).unlink(missing_ok=True)  # a graph from an earlier export would contradict this JSON
    _write_json(out / POLICY_FILE, spec)
    return spec


def _env_from(env_config: str | Path | Mapping[str, Any]):
    from oserve_rl.envs.config import make_config

    if isinstance(env_config, Mapping):
        return make_config(dict(env_config))
    p = Path(env_config)
    data = read_yaml_mapping(p)
    try:
        return make_config(data["env"] if isinstance(data.get("env"), dict) else data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def _write_json(path: Path, spec: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(spec, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (Path, tuple)):
        return str(x) if isinstance(x, Path) else list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
