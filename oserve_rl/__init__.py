"""oserve-rl: learn how to deploy LLMs on GPU clusters.

Layers, bottom up (each only imports those below it):

- ``oserve_rl.catalog``  GPUs, models and clusters as validated YAML catalogs.
- ``oserve_rl.perf``     what hardware costs: calibrated iteration times and memory.
- ``oserve_rl.workload`` real traces and synthetic arrivals as request arrays.
- ``oserve_rl.cluster``  deployments as data, placement, switch-cost plans.
- ``oserve_rl.sim``      what happens: vLLM-like replica engines, routing, metrics.
"""

from oserve_rl import _native

_native.select()  # compiled simulator core or its Python sources: decided before either is imported

from oserve_rl._native import native_status  # noqa: E402
from oserve_rl.errors import ConfigError, OServeError, TraceError, UnknownNameError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ConfigError", "OServeError", "TraceError", "UnknownNameError", "__version__", "native_status"]
