"""Deployment policies (installed as ``oserve_rl.agents``): OServe and the baselines.

Every policy implements ``oserve_rl.policy.Policy`` and runs through the same
control loop (``oserve_rl.policy.run_policy``) and, as an env policy, through
``oserve_rl/Deploy-v0``:

    >>> from oserve_rl.agents import make_policy, policy_names
    >>> policy = make_policy("vllm_static")

Your own policies load by ``"path/to/file.py:ClassName"`` or
``"package.module:ClassName"`` wherever a policy name is accepted
(``make_policy``, evaluate.py's ``--policies``): docs/policies.md.

| name | what it does |
|---|---|
| vllm_static | the best single homogeneous deployment for the whole episode (a sweep, with hindsight), least-work routing |
| oserve | OServe: k-means types, per-type forecasts, max-flow dispatch, flow-guided deployment search, re-sharding switches |
| oserve_oracle | OServe fed the true next-interval rates instead of the forecast |
| vllm_reload | OServe's plans, but every switch cold-reloads weights from disk |
| llumnix | homogeneous replicas (vllm_static's pick) with load-balancing dispatch on KV "freeness" |
| threshold_autoscaler | Dynamo/AIBrix-like: replica count from queue and KV thresholds with a cooldown |
| brute_force | OServe's decision loop with an exhaustive deployment search (small clusters only) |
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from oserve_rl.checks import check_number
from oserve_rl.errors import ConfigError, OServeError, UnknownNameError
from oserve_rl.policy import Policy

# name -> "module:Class" (imported on first use: torch and scipy are slow to import)
_REGISTRY: dict[str, str] = {
    "vllm_static": "oserve_rl.agents.static:VLLMStatic",
    "oserve": "oserve_rl.agents.oserve:OServe",
    "oserve_oracle": "oserve_rl.agents.oserve:OServeOracle",
    "vllm_reload": "oserve_rl.agents.oserve:VLLMReload",
    "brute_force": "oserve_rl.agents.oserve:BruteForce",
    "llumnix": "oserve_rl.agents.static:Llumnix",
    "threshold_autoscaler": "oserve_rl.agents.autoscaler:ThresholdAutoscaler",
}


def policy_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    """A registry name, or your own policy as ``path/to/file.py:ClassName`` or ``package.module:ClassName``
    (a ``Policy`` subclass; docs/policies.md)."""
    if ":" in str(name):
        return _user_policy_class(str(name))
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise UnknownNameError("policy", name, list(_REGISTRY))
    module, cls = _REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), cls)


def _user_policy_class(spec: str) -> type[Policy]:
    where, _, cls_name = spec.rpartition(":")
    hint = "give FILE.py:ClassName or package.module:ClassName"
    if not where or not cls_name:
        raise ConfigError(f"policy {spec!r}: {hint}")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"policy {spec!r}: no file {path}; {hint}")
        # One module per file (loaded once, however many episodes build the policy), named after its path.
        resolved = str(path.resolve())
        module_name = f"oserve_rl_user_policy_{path.stem}_{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"
        module = sys.modules.get(module_name)
        if module is None:
            loader = importlib.util.spec_from_file_location(module_name, resolved)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module  # dataclasses and pickling (evaluate --jobs) look modules up there
            try:
                loader.loader.exec_module(module)
            except Exception as e:  # the file's own error, e.g. a SyntaxError: one line naming file and line
                del sys.modules[module_name]
                raise ConfigError(f"policy {spec!r}: {path} does not load: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            # "sac:runs/x/model.zip" reads as a module "sac": say what a checkpoint spec is, too.
            raise ConfigError(f"policy {spec!r}: cannot import {where!r} ({e}); {hint} (a trained checkpoint is "
                              "KIND:PATH with KIND one of ppo, maskable_ppo, dqn, a2c, rllib: "
                              "oserve_rl.envs.checkpoints.checkpoint_policy)") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Policy)
                       and v is not Policy and v.__module__ == module.__name__)
        raise ConfigError(f"policy {spec!r}: {where} has no Policy subclass {cls_name!r} "
                          f"(Policy subclasses there: {', '.join(found) or 'none'})")
    return cls


def make_policy(name: str, **params: Any) -> Policy:
    """A fresh policy by registry name; ``params`` are its constructor's keyword arguments."""
    cls = policy_class(name)
    try:
        return cls(**params)
    except OServeError:  # the constructor's own message already names the parameter
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"policy {name!r}: bad parameters {sorted(params)}: {e}") from None


__all__ = ["check_number", "make_policy", "policy_class", "policy_names"]
