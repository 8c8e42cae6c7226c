"""What hardware costs: the calibrated performance model (see ``model.py`` for the formulas).

    >>> from oserve_rl.perf import replica_perf
    >>> perf = replica_perf("llama-2-70b", "a100-80gb", tp=2)
    >>> round(perf.prefill_s(1024) * 1e3) > 0
    True
"""

from oserve_rl.perf.model import EngineConfig, ReplicaPerf, check_parallelism, load_params, replica_perf

__all__ = ["EngineConfig", "ReplicaPerf", "check_parallelism", "load_params", "replica_perf"]
