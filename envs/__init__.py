"""Gymnasium environments (installed as ``oserve_rl.envs``).

Coming with the environment issue: ``oserve_rl/Deploy-v0``, whose actions are
deployment choices and switches on the simulator in ``oserve_rl.sim``.
"""
