"""Workloads: real request traces and synthetic arrivals as numpy arrays.

>>> from oserve_rl.workload import load_trace
>>> trace = load_trace("azure-conv")            # 19,366 requests, 58 min
>>> busy = trace.scale_rate(2.0)                # twice the load
"""

from oserve_rl.workload.arrivals import ArrivalProcess, Diurnal, GammaArrivals, Poisson, parse_arrival
from oserve_rl.workload.loaders import (
    TRACE_NAMES,
    bundled_path,
    bundled_traces_dir,
    detect_format,
    length_pool_trace,
    load_azure,
    load_length_pool,
    load_mooncake,
    load_trace,
    trace_names,
    trace_span_s,
)
from oserve_rl.workload.servegen import servegen_models, servegen_trace
from oserve_rl.workload.trace import LONG_INPUT_TOKENS, LONG_OUTPUT_TOKENS, Trace, assign_prefix_groups
from oserve_rl.workload.typing import RequestTyper
from oserve_rl.workload.mixes import mix_trace, shares_with_cv, shift_trace, skew_trace  # noqa: E402  (needs the above)

__all__ = [
    "mix_trace", "shares_with_cv", "shift_trace", "skew_trace",
    "LONG_INPUT_TOKENS",
    "LONG_OUTPUT_TOKENS",
    "TRACE_NAMES",
    "ArrivalProcess",
    "Diurnal",
    "GammaArrivals",
    "Poisson",
    "RequestTyper",
    "Trace",
    "assign_prefix_groups",
    "bundled_path",
    "bundled_traces_dir",
    "detect_format",
    "length_pool_trace",
    "load_azure",
    "load_length_pool",
    "load_mooncake",
    "load_trace",
    "parse_arrival",
    "servegen_models",
    "servegen_trace",
    "trace_names",
    "trace_span_s",
]
