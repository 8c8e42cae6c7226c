"""Deployment policies (installed as ``oserve_rl.agents``).

Coming with the OServe issue: OServe's heuristic and the baselines
(vllm_static, vllm_reload, llumnix, threshold_autoscaler, brute_force), all
acting through one policy interface that RL agents share.
"""
