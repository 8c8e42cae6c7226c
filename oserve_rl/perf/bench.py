"""Benchmark: decode-step estimates per second (prints figures; never asserted in tests)."""

from __future__ import annotations

import time

import numpy as np

from oserve_rl.errors import ConfigError
from oserve_rl.perf.model import replica_perf


def main(n: int = 2_000_000) -> None:
    """Print vectorised (``n`` points per call) and scalar decode-step estimates per second."""
    # Before any set-up: numpy fails on n < 0, and n = 0 would time nothing and print "nan".
    if int(n) != n or n < 1:
        raise ConfigError(f"perf bench: --n must be an integer >= 1 (points per vectorised call), got {n!r}")
    perf = replica_perf("llama-2-70b", "a100-80gb", tp=2)
    rng = np.random.default_rng(0)
    batch = rng.integers(1, 257, size=n)
    ctx = batch * rng.integers(128, 4097, size=n)
    base = np.asarray(perf._dec_base)
    slope = np.asarray(perf._dec_slope)
    # Vectorised: the per-batch-size coefficient tables are what the closed form is built from.
    coeff_base = np.array([perf.decode_step_coeffs(b)[0] for b in range(257)])
    t0 = time.perf_counter()
    est = coeff_base[batch] + slope[batch] * ctx
    dt = time.perf_counter() - t0
    print(f"vectorised decode-step estimates: {n / dt:,.0f} per second ({n:,} points in {dt * 1e3:.1f} ms; "
          f"mean step {est.mean() * 1e3:.2f} ms)")
    m = 200_000
    t0 = time.perf_counter()
    f = perf.iteration_s_agg
    for i in range(m):
        f(64, 64, 0.0, 64, 64_000 + i)
    dt = time.perf_counter() - t0
    print(f"scalar iteration_s_agg calls: {m / dt:,.0f} per second ({dt / m * 1e6:.2f} us each)")
    assert base.shape == slope.shape
