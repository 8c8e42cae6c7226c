"""Gymnasium environments (installed as ``oserve_rl.envs``).

``oserve_rl/Deploy-v0`` (``DeployEnv``): choose an LLM cluster's deployment
every decision interval on the simulator; see ``oserve_rl.envs.deploy``.
``oserve_rl/DeployDispatch-v0`` (``DeployDispatchEnv``): the same, plus the
dispatch weights as a ``Box``; see ``oserve_rl.envs.dispatch``.

    >>> import gymnasium as gym, oserve_rl.envs
    >>> env = gym.make("oserve_rl/Deploy-v0", cluster="h100x16", trace="azure-conv")
"""

from gymnasium.envs.registration import register, registry

from oserve_rl.envs.config import ENV_VERSION, OBS_KEYS, DeployEnvConfig, RewardConfig, make_config

ENV_ID = "oserve_rl/Deploy-v0"
DISPATCH_ENV_ID = "oserve_rl/DeployDispatch-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="oserve_rl.envs.deploy:DeployEnv", disable_env_checker=True)
if DISPATCH_ENV_ID not in registry:
    register(id=DISPATCH_ENV_ID, entry_point="oserve_rl.envs.dispatch:DeployDispatchEnv", disable_env_checker=True)

__all__ = ["DISPATCH_ENV_ID", "ENV_ID", "ENV_VERSION", "OBS_KEYS", "DeployEnvConfig", "RewardConfig", "make_config"]
