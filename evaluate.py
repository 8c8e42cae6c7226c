#!/usr/bin/env python
"""Compare deployment policies on the same episodes (not yet available).

Coming with the OServe issue: ``python evaluate.py --cluster CLUSTER --model MODEL
--trace TRACE --policies vllm_static,oserve,... [--seeds 0,1,2] --out DIR`` writing
tables (markdown, CSV, JSON) and plots per policy. Today a single static or
scheduled-switch deployment can be measured with ``python -m oserve_rl simulate``.
"""

import argparse
import sys


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print("evaluate.py: policy comparison is not available yet (it arrives with OServe and the baselines); "
          "try `python -m oserve_rl simulate --help`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
