"""Training backends for ``train.py``: Stable-Baselines3 (``sb3``) and RLlib on Ray (``rllib``)."""
