#!/usr/bin/env python
"""Train an RL agent that chooses deployments (not yet available).

Coming with the environment issue: ``python train.py --config configs/train/NAME.yaml
[--backend sb3|rllib] [--algo ppo|maskable_ppo|dqn|a2c] [--total-steps N] [--seed S]
[--logdir runs/] [--ray-address auto|HOST:PORT]`` on the ``oserve_rl/Deploy-v0``
Gymnasium environment, with RL-Zoo-style YAML hyperparameters and TensorBoard logs.
Today the simulator it will train on is ready: ``python -m oserve_rl simulate --help``.
"""

import argparse
import sys


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print("train.py: training is not available yet (it arrives with the oserve_rl/Deploy-v0 environment); "
          "try `python -m oserve_rl simulate --help`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
