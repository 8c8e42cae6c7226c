"""Synthetic arrival processes (seeded) and the CLI spec parser.

Every process returns sorted arrival times in seconds starting at t = 0,
either a fixed number of them (``n``) or all of them in ``[0, duration_s)``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from oserve_rl.errors import ConfigError

ARRIVAL_SPECS = ("poisson:QPS", "gamma:QPS:CV", "diurnal:QPS:AMPLITUDE:PERIOD_S")


class ArrivalProcess(Protocol):
    def sample(self, rng: np.random.Generator, *, n: int | None = None, duration_s: float | None = None) -> np.ndarray:
        """Sorted arrival times (s): exactly ``n`` of them, or all in ``[0, duration_s)``."""
        ...

    def describe(self) -> str: ...


# More arrivals than this would not fit in memory as a trace; refuse up front instead of failing deep in numpy.
MAX_ARRIVALS = 10**9


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_n_or_duration(n: int | None, duration_s: float | None) -> None:
    if (n is None) == (duration_s is None):
        raise ConfigError("arrival process: give exactly one of n (requests) or duration_s")
    if n is not None:
        if not isinstance(n, numbers.Integral) or isinstance(n, bool):
            raise ConfigError(f"arrival process: n (requests) must be a whole number (int) >= 0, got {n!r}")
        if n < 0:
            raise ConfigError(f"arrival process: n must be >= 0, got {n}")
        if n > MAX_ARRIVALS:
            raise ConfigError(f"arrival process: n = {n} requests is more than the {MAX_ARRIVALS:.0e} supported")
    if duration_s is not None and not (_is_real(duration_s) and math.isfinite(duration_s) and duration_s > 0):
        raise ConfigError(f"arrival process: duration_s must be a positive number, got {duration_s!r}")


def _check_expected(process: str, rate: float, duration_s: float) -> None:
    expected = rate * duration_s
    if not expected <= MAX_ARRIVALS:
        raise ConfigError(
            f"{process}: rate {rate:g}/s over duration_s={duration_s:g} expects {expected:.3g} arrivals, more than "
            f"the {MAX_ARRIVALS:.0e} supported; lower the rate or the duration"
        )


def _positive(name: str, value: float) -> float:
    if not _is_real(value):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return value


def gamma_renewal_times(
    rng: np.random.Generator, rate_rps: np.ndarray, cv: np.ndarray, span_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Stationary Gamma renewal processes, one per entry, each over ``[0, span_s)``.

    Inter-arrival gaps are Gamma(shape 1/cv^2, mean 1/rate). The first arrival
    is drawn from the equilibrium forward-recurrence distribution (U * Gamma(k+1)),
    so each process is stationary from t = 0 instead of starting "just after an
    arrival". Returns (group index, time) pairs sorted by group then time.
    All groups are advanced together in vectorised rounds.
    """
    rate_rps = np.asarray(rate_rps, dtype=np.float64)
    cv = np.asarray(cv, dtype=np.float64)
    m = len(rate_rps)
    shape = 1.0 / np.square(cv)
    scale = 1.0 / (rate_rps * shape)
    clock = rng.random(m) * rng.gamma(shape + 1.0, scale)
    groups_out: list[np.ndarray] = []
    times_out: list[np.ndarray] = []
    first = clock < span_s
    groups_out.append(np.flatnonzero(first))
    times_out.append(clock[first])
    active = np.flatnonzero(first)
    while len(active):
        mean_count = rate_rps[active] * (span_s - clock[active])
        need = np.ceil(mean_count + 3.0 * np.sqrt(mean_count) * np.maximum(cv[active], 1.0) + 4.0).astype(np.int64)
        owner = np.repeat(active, need)
        gaps = rng.gamma(np.repeat(shape[active], need), np.repeat(scale[active], need))
        cs = np.cumsum(gaps)
        ends = np.cumsum(need)
        base = np.concatenate(([0.0], cs[ends[:-1] - 1]))
        t = cs - np.repeat(base - clock[active], need)
        keep = t < span_s
        groups_out.append(owner[keep])
        times_out.append(t[keep])
        clock[active] = t[ends - 1]
        active = active[clock[active] < span_s]
    group = np.concatenate(groups_out)
    times = np.concatenate(times_out)
    order = np.lexsort((times, group))
    return group[order], times[order]


@dataclass(frozen=True)
class Poisson:
    """Homogeneous Poisson arrivals at ``qps`` requests per second."""

    qps: float

    def __post_init__(self) -> None:
        _positive("poisson qps", self.qps)

    def sample(self, rng: np.random.Generator, *, n: int | None = None, duration_s: float | None = None) -> np.ndarray:
        _check_n_or_duration(n, duration_s)
        if n is not None:
            return np.cumsum(rng.exponential(1.0 / self.qps, size=n))
        _check_expected(self.describe(), self.qps, duration_s)
        count = rng.poisson(self.qps * duration_s)
        return np.sort(rng.uniform(0.0, duration_s, size=count))

    def describe(self) -> str:
        return f"poisson:{self.qps:g}"


@dataclass(frozen=True)
class GammaArrivals:
    """Gamma renewal arrivals: mean rate ``qps``, inter-arrival CV ``cv`` (cv = 1 is Poisson)."""

    qps: float
    cv: float

    def __post_init__(self) -> None:
        _positive("gamma qps", self.qps)
        _positive("gamma cv", self.cv)

    def sample(self, rng: np.random.Generator, *, n: int | None = None, duration_s: float | None = None) -> np.ndarray:
        _check_n_or_duration(n, duration_s)
        shape = 1.0 / self.cv**2
        scale = 1.0 / (self.qps * shape)
        if n is not None:
            first = rng.random() * rng.gamma(shape + 1.0, scale)
            if n == 0:
                return np.empty(0)
            return first + np.concatenate(([0.0], np.cumsum(rng.gamma(shape, scale, size=n - 1))))
        _check_expected(self.describe(), self.qps, duration_s)
        _, times = gamma_renewal_times(rng, np.array([self.qps]), np.array([self.cv]), duration_s)
        return times

    def describe(self) -> str:
        return f"gamma:{self.qps:g}:{self.cv:g}"


@dataclass(frozen=True)
class Diurnal:
    """Poisson arrivals whose rate follows qps * (1 + amplitude * sin(2 pi (t + phase_s) / period_s)).

    Sampled exactly by thinning a Poisson process at the peak rate.
    """

    qps: float
    amplitude: float
    period_s: float
    phase_s: float = 0.0

    def __post_init__(self) -> None:
        _positive("diurnal qps", self.qps)
        _positive("diurnal period_s", self.period_s)
        if not (_is_real(self.amplitude) and 0.0 <= self.amplitude <= 1.0):
            raise ConfigError(f"diurnal amplitude must be in [0, 1] (rate stays >= 0), got {self.amplitude!r}")
        if not (_is_real(self.phase_s) and math.isfinite(self.phase_s)):
            raise ConfigError(f"diurnal phase_s must be a finite number of seconds, got {self.phase_s!r}")

    def rate_at(self, t_s: np.ndarray) -> np.ndarray:
        return self.qps * (1.0 + self.amplitude * np.sin(2.0 * np.pi * (np.asarray(t_s) + self.phase_s) / self.period_s))

    def _over(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        peak = self.qps * (1.0 + self.amplitude)
        t = np.sort(rng.uniform(0.0, duration_s, size=rng.poisson(peak * duration_s)))
        return t[rng.random(len(t)) * peak < self.rate_at(t)]

    def sample(self, rng: np.random.Generator, *, n: int | None = None, duration_s: float | None = None) -> np.ndarray:
        _check_n_or_duration(n, duration_s)
        if duration_s is not None:
            _check_expected(self.describe(), self.qps * (1.0 + self.amplitude), duration_s)
            return self._over(rng, duration_s)
        # Extend the horizon in whole chunks until n arrivals exist; chunks are
        # independent Poisson pieces, so the union is still the same process.
        out: list[np.ndarray] = []
        start, have = 0.0, 0
        chunk = max(self.period_s, 1.2 * n / self.qps + 10.0 / self.qps)
        while have < n:
            piece = Diurnal(self.qps, self.amplitude, self.period_s, self.phase_s + start)._over(rng, chunk) + start
            out.append(piece)
            have += len(piece)
            start += chunk
        return np.concatenate(out)[:n] if out else np.empty(0)

    def describe(self) -> str:
        phase = f":{self.phase_s:g}" if self.phase_s else ""
        return f"diurnal:{self.qps:g}:{self.amplitude:g}:{self.period_s:g}{phase}"


def parse_arrival(spec: str) -> ArrivalProcess:
    """Parse a CLI arrival spec: ``poisson:3``, ``gamma:3:2.0`` (qps, cv), ``diurnal:3:0.5:86400``.

    ``diurnal`` takes an optional fifth field, phase_s.
    """
    if isinstance(spec, (Poisson, GammaArrivals, Diurnal)):
        return spec
    parts = str(spec).strip().split(":")
    kind = parts[0].lower()
    shapes = {"poisson": (1, 1), "gamma": (2, 2), "diurnal": (3, 4)}
    if kind not in shapes:
        raise ConfigError(f"arrival spec {spec!r}: unknown process {kind!r} (valid: {', '.join(ARRIVAL_SPECS)})")
    lo, hi = shapes[kind]
    if not lo <= len(parts) - 1 <= hi:
        raise ConfigError(f"arrival spec {spec!r}: {kind} takes {lo}{'-' + str(hi) if hi > lo else ''} numbers (valid: {', '.join(ARRIVAL_SPECS)})")
    try:
        values = [float(p) for p in parts[1:]]
    except ValueError:
        raise ConfigError(f"arrival spec {spec!r}: fields after {kind!r} must be numbers (valid: {', '.join(ARRIVAL_SPECS)})") from None
    if kind == "poisson":
        return Poisson(*values)
    if kind == "gamma":
        return GammaArrivals(*values)
    return Diurnal(*values)
