"""Synthetic type-mix traces: real request lengths, chosen type shares, synthetic arrivals.

OServe's evaluation sweeps two knobs of the workload that real traces do not
let one set: how skewed the mix of request types is (*spatial* skew) and how
far the mix moves over time (*temporal* shift). These helpers build such
traces from a real one: each request's (input, output) lengths are drawn from
the base trace's requests of a type drawn from the segment's shares, so the
lengths inside a type stay real while the mix is ours.

Definitions (the paper does not give its own):

- **CV of a type mix** ``shares`` (J shares summing to 1):
  ``std(shares) / mean(shares)`` with the population std (ddof = 0) and
  ``mean = 1 / J``. 0 is the uniform mix; the largest value, all requests of
  one type, is ``sqrt(J - 1)`` (1.732 for J = 4).
- **Shift level** T1..T4 (:func:`shift_shares`): segments alternate between two
  mixes mirrored around the uniform one, ``1/J + a*d`` and ``1/J - a*d``, where
  ``d`` is +1 on the decode-light half of the types and -1 on the
  decode-heavy half (:func:`shift_trace` ranks types by their centre output
  length: long outputs hold KV cache for long, the memory-bound end of the
  paper's spatial heterogeneity). ``a`` gives each mix a CV of
  ``0.15 * level`` (0.15, 0.30, 0.45, 0.60), so the total-variation distance
  between consecutive segments grows with the level (for J = 4: 0.15, 0.30,
  0.45, 0.60; T4 swings between 40/40/10/10 % and 10/10/40/40 % of
  light/light/heavy/heavy).

    >>> from oserve_rl.workload import load_trace
    >>> base = load_trace("azure-conv").head(4000)
    >>> skew = skew_trace(base, cv=0.5, rate_rps=5.0, duration_s=120.0, seed=0)
    >>> 400 < len(skew) < 800
    True
    >>> round(mix_cv(shares_with_cv(0.5, 4, seed=0)), 6)
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from oserve_rl.errors import ConfigError
from oserve_rl.workload.arrivals import GammaArrivals, Poisson
from oserve_rl.workload.trace import Trace
from oserve_rl.workload.typing import RequestTyper

SHIFT_LEVELS: dict[int, float] = {1: 0.15, 2: 0.30, 3: 0.45, 4: 0.60}  # level -> CV of each of the two mixes
SHARES_ATOL = 1e-6


def mix_cv(shares: Sequence[float] | np.ndarray) -> float:
    """CV of a type mix: ``std(shares) / mean(shares)`` (population std)."""
    s = np.asarray(shares, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ConfigError(f"mix_cv: shares must be a non-empty 1-D list, got shape {s.shape}")
    return float(s.std() / s.mean())


def check_shares(shares: Sequence[float] | np.ndarray, num_types: int | None = None, where: str = "shares") -> np.ndarray:
    """``shares`` as a float array, or ConfigError if it is not J >= 1 non-negative numbers summing to 1."""
    s = np.asarray(shares, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ConfigError(f"{where}: expected a non-empty list of type shares, got {shares!r}")
    if num_types is not None and s.size != num_types:
        raise ConfigError(f"{where}: {s.size} shares for {num_types} request types; give one share per type")
    if not np.all(np.isfinite(s)) or s.min() < 0:
        raise ConfigError(f"{where}: shares must be finite and >= 0, got {s.tolist()}")
    if abs(s.sum() - 1.0) > SHARES_ATOL:
        raise ConfigError(f"{where}: shares must sum to 1 (within {SHARES_ATOL:g}), got sum {s.sum():.6g} "
                          f"for {s.tolist()}")
    return s


def _positive(where: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{where} must be a positive number, got {value!r}")
    return v


def mix_trace(base: Trace, typer: RequestTyper, segments: Sequence[tuple[float, float, Sequence[float]]],
              seed: int = 0, *, arrival_cv: float = 1.0, name: str | None = None) -> Trace:
    """Arrivals at ``rate_rps`` per segment, lengths from ``base``'s requests of a type drawn from ``shares``.

    ``segments``: ``(duration_s, rate_rps, shares)`` in order; segment ``i``
    covers ``[sum of earlier durations, + duration_s)``. ``shares`` has one
    entry per type of ``typer`` (its type ids), non-negative, summing to 1.
    ``arrival_cv`` = 1 gives Poisson arrivals, otherwise Gamma renewal arrivals
    with that inter-arrival CV (restarted in each segment). Requests are drawn
    with replacement, uniformly among the base requests ``typer`` puts in the
    type. Seeded: the same arguments give the same trace.

        >>> from oserve_rl.workload import load_trace, RequestTyper
        >>> base = load_trace("azure-code").head(3000)
        >>> typer = RequestTyper.fit(base, k=4, seed=0)
        >>> tr = mix_trace(base, typer, [(60.0, 4.0, [0.7, 0.1, 0.1, 0.1]), (60.0, 2.0, [0.1, 0.1, 0.1, 0.7])])
        >>> bool(tr.arrival_s[-1] < 120.0)
        True
    """
    if len(base) == 0:
        raise ConfigError(f"mix_trace: base trace {base.name!r} is empty")
    if not segments:
        raise ConfigError("mix_trace: give at least one segment (duration_s, rate_rps, shares)")
    arrival_cv = _positive("mix_trace: arrival_cv", arrival_cv)
    base_types = typer.predict(base)
    pools = [np.flatnonzero(base_types == j) for j in range(typer.k)]
    rng = np.random.default_rng(seed)
    arrivals, picks, described = [], [], []
    t0 = 0.0
    for i, seg in enumerate(segments):
        try:
            duration_s, rate_rps, shares = seg
        except (TypeError, ValueError):
            raise ConfigError(f"mix_trace: segment {i} must be (duration_s, rate_rps, shares), got {seg!r}") from None
        duration_s = _positive(f"mix_trace: segment {i} duration_s", duration_s)
        rate_rps = _positive(f"mix_trace: segment {i} rate_rps", rate_rps)
        s = check_shares(shares, typer.k, f"mix_trace: segment {i} shares")
        empty = [j for j in range(typer.k) if s[j] > 0 and len(pools[j]) == 0]
        if empty:
            raise ConfigError(f"mix_trace: segment {i} gives share to type(s) {empty}, but base trace {base.name!r} "
                              "has no request of them; use a longer base trace or give them share 0")
        process = Poisson(rate_rps) if arrival_cv == 1.0 else GammaArrivals(rate_rps, arrival_cv)
        t = process.sample(rng, duration_s=duration_s)
        types = rng.choice(typer.k, size=len(t), p=s / s.sum())
        idx = np.empty(len(t), dtype=np.int64)
        for j in range(typer.k):
            sel = types == j
            if sel.any():
                idx[sel] = pools[j][rng.integers(0, len(pools[j]), int(sel.sum()))]
        arrivals.append(t + t0)
        picks.append(idx)
        described.append(f"{duration_s:g}s@{rate_rps:g}rps[{','.join(f'{x:.3f}' for x in s)}]")
        t0 += duration_s
    arrival = np.concatenate(arrivals)
    index = np.concatenate(picks)
    order = np.argsort(arrival, kind="stable")
    arrival, index = arrival[order], index[order]
    hashes = [base.prefix_hashes[k] for k in index] if base.prefix_hashes is not None else None
    process_name = "poisson" if arrival_cv == 1.0 else f"gamma(cv={arrival_cv:g})"
    note = f"mix_trace of {base.name} ({len(base)} requests, {typer.k} types), {process_name}, seed {seed}: " + \
        "; ".join(described)
    return Trace(arrival, base.input_tokens[index], base.output_tokens[index],
                 name=name or f"mix:{base.name}", source="synthetic", prefix_hashes=hashes,
                 prefix_block_tokens=base.prefix_block_tokens if hashes is not None else None,
                 notes=(*base.notes, note))


def _feasible(direction: np.ndarray, cv: float, J: int) -> np.ndarray | None:
    """``1/J + t*direction`` with CV ``cv``, or None if a share would go negative."""
    shares = 1.0 / J + direction * (cv / J) / direction.std()
    if shares.min() < -1e-12:
        return None
    shares = np.maximum(shares, 0.0)
    return shares / shares.sum()


def shares_with_cv(cv: float, num_types: int = 4, seed: int = 0) -> np.ndarray:
    """A type mix of ``num_types`` shares whose CV (``std / mean``, population std) is ``cv``.

    The mix moves away from uniform along a random direction fixed by
    ``seed`` (a centred Gaussian draw), so for one seed a larger ``cv`` is the
    same kind of skew, only stronger. Where that direction would push a share
    below 0, it is bent towards the type it favours most, just as far as
    needed (at the largest CV, ``sqrt(J - 1)``, that type gets everything).

        >>> s = shares_with_cv(0.4, 4, seed=1)
        >>> round(float(s.sum()), 9), round(mix_cv(s), 9)
        (1.0, 0.4)
    """
    if int(num_types) != num_types or num_types < 2:
        raise ConfigError(f"shares_with_cv: num_types must be an integer >= 2, got {num_types!r}")
    J = int(num_types)
    top = math.sqrt(J - 1)
    try:
        cv = float(cv)
    except (TypeError, ValueError):
        raise ConfigError(f"shares_with_cv: cv must be a number, got {cv!r}") from None
    if not (math.isfinite(cv) and 0.0 <= cv <= top + 1e-12):
        raise ConfigError(f"shares_with_cv: cv={cv!r} is out of reach for {J} types; valid: 0 <= cv <= "
                          f"sqrt(J - 1) = {top:.4f} (one type taking every request)")
    if cv == 0.0:
        return np.full(J, 1.0 / J)
    g = np.random.default_rng(seed).standard_normal(J)
    g -= g.mean()
    g /= g.std()
    k = int(np.argmax(g))
    e = np.full(J, -1.0 / J)
    e[k] += 1.0
    e /= e.std()
    hit = _feasible(g, cv, J)
    if hit is not None:
        return hit
    lo, hi = 0.0, 1.0  # blend weight towards the one-hot direction: hi is always feasible
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        d = (1 - mid) * g + mid * e
        if _feasible(d, cv, J) is None:
            lo = mid
        else:
            hi = mid
    return _feasible((1 - hi) * g + hi * e, cv, J)


def _level(level: int | str) -> int:
    key = str(level).strip().upper().removeprefix("T")
    if key.isdigit() and int(key) in SHIFT_LEVELS:
        return int(key)
    raise ConfigError(f"shift level {level!r}: valid levels are {', '.join(f'T{k}' for k in SHIFT_LEVELS)} "
                      f"(or {', '.join(map(str, SHIFT_LEVELS))})")


def shift_shares(level: int | str, num_types: int = 4, order: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two mixes a shift level alternates between (module doc): the first half of ``order`` up, then the second.

    ``order``: type ids from lightest to heaviest (default ``0 .. J-1``).
    """
    lv = _level(level)
    if int(num_types) != num_types or num_types < 2:
        raise ConfigError(f"shift_shares: num_types must be an integer >= 2, got {num_types!r}")
    J = int(num_types)
    rank = np.arange(J) if order is None else np.asarray(order)
    if sorted(rank.tolist()) != list(range(J)):
        raise ConfigError(f"shift_shares: order must be a permutation of the type ids 0..{J - 1}, got {order!r}")
    d = np.zeros(J)
    d[rank[: J // 2]] = 1.0
    d[rank[J - J // 2:]] = -1.0  # an odd middle type keeps 1/J
    a = _feasible(d, SHIFT_LEVELS[lv], J)
    b = _feasible(-d, SHIFT_LEVELS[lv], J)
    if a is None or b is None:
        raise ConfigError(f"shift level T{lv} needs a CV of {SHIFT_LEVELS[lv]} on both mixes, "
                          f"out of reach for {J} types")
    return a, b


def decode_order(typer: RequestTyper) -> np.ndarray:
    """Type ids by centre output length, shortest first (ties: by id)."""
    return np.argsort(typer.centers_tokens[:, 1], kind="stable")


def _typer_for(base: Trace, typer: RequestTyper | None, num_types: int) -> RequestTyper:
    # seed 0, not the trace seed: the types must mean the same for every seed of a sweep
    return typer if typer is not None else RequestTyper.fit(base, k=num_types, seed=0)


def skew_trace(base: Trace, cv: float, rate_rps: float, duration_s: float, seed: int = 0, *,
               typer: RequestTyper | None = None, num_types: int = 4, arrival_cv: float = 1.0) -> Trace:
    """A stationary mix with CV ``cv`` (``shares_with_cv(cv, J, seed)``) at ``rate_rps`` for ``duration_s``.

    ``typer`` defaults to k-means (``num_types`` types, seed 0) on ``base``.
    """
    ty = _typer_for(base, typer, num_types)
    shares = shares_with_cv(cv, ty.k, seed)
    return mix_trace(base, ty, [(duration_s, rate_rps, shares)], seed, arrival_cv=arrival_cv,
                     name=f"skew-cv{cv:g}:{base.name}")


def shift_segments(level: int | str, rate_rps: float, duration_s: float, num_types: int = 4,
                   segment_s: float = 300.0, order: Sequence[int] | None = None) -> list[tuple[float, float, np.ndarray]]:
    """``mix_trace`` segments of a shift level: ``segment_s`` long (the last one cut at ``duration_s``), A, B, A, ..."""
    duration_s = _positive("shift: duration_s", duration_s)
    segment_s = _positive("shift: segment_s", segment_s)
    rate_rps = _positive("shift: rate_rps", rate_rps)
    a, b = shift_shares(level, num_types, order)
    out, t, i = [], 0.0, 0
    while t < duration_s - 1e-9:
        d = min(segment_s, duration_s - t)
        out.append((d, rate_rps, a if i % 2 == 0 else b))
        t, i = t + d, i + 1
    return out


def shift_trace(base: Trace, level: int | str, rate_rps: float, duration_s: float, seed: int = 0, *,
                segment_s: float = 300.0, typer: RequestTyper | None = None, num_types: int = 4,
                arrival_cv: float = 1.0) -> Trace:
    """Shift level T1..T4 (module doc): the mix alternates every ``segment_s`` at a constant ``rate_rps``.

    Mix A favours the types with the shorter centre output lengths, mix B the longer (:func:`decode_order`).
    """
    ty = _typer_for(base, typer, num_types)
    segs = shift_segments(level, rate_rps, duration_s, ty.k, segment_s, decode_order(ty))
    return mix_trace(base, ty, segs, seed, arrival_cv=arrival_cv, name=f"shift-T{_level(level)}:{base.name}")


__all__ = ["SHIFT_LEVELS", "check_shares", "decode_order", "mix_cv", "mix_trace", "shares_with_cv", "shift_segments", "shift_shares",
           "shift_trace", "skew_trace"]
