"""Per-type, per-minute arrival counts: from request traces and from the ServeGen tables.

The forecasters see a workload as a matrix ``counts[minute, type]``. For a
request trace that is a histogram (:func:`type_counts_per_min`,
:func:`trace_type_counts`). For training, days of ServeGen traffic are needed,
and generating them request by request (~200 req/s for 10 days) is too big, so
:func:`servegen_type_counts` draws the per-minute counts directly from the same
tables and the same arrival model as ``oserve_rl.workload.servegen_trace``:

* **types**: for every (client, 6-hour block), ``samples_per_block`` request
  lengths are drawn from the client's quantile rows (or the model-level mix when
  the client has no table, exactly as ``servegen_trace`` does) and classified
  with the typer; the shares give the client's type probabilities ``p_cj`` for
  that block (computed once per client-block and typer, with a fixed seed).
* **arrivals**: within a 10-minute window a client is a stationary Gamma
  renewal process with the window's ``rate_rps * rate_scale`` and inter-arrival
  CV ``iat_cv`` (capped at ``max_cv``), as in ``servegen_trace``. Where a
  minute holds many arrivals relative to the burst scale (mean count per
  minute ``m >= max(50, 10 cv^2)``) the renewal central limit theorem applies
  and the minute's count is drawn with the right mean and variance
  ``m * cv^2`` (negative binomial if cv > 1, binomial if cv < 1), independently
  per minute. The remaining client-windows (low rates or very bursty; about
  5 % of m-large requests at production scale) are simulated arrival by
  arrival with the renewal process itself and binned. Each arrival or count is
  split into types with ``p_cj`` (multinomial).
* ``dispersion="poisson"`` instead draws every client-minute as Poisson
  (ignores ``iat_cv``; smoother series).

Collection gaps (windows with ``total_rate_rps == 0`` in ServeGen's model
table) are missing data, not idle time: their minutes are marked unobserved in
``SeriesMeta.observed`` and :meth:`SeriesMeta.segments` splits the series there,
so nothing trains on (or is scored against) fake zeros.

Rates are piecewise constant per 10-minute window in the published tables, so
within a window the synthesised minute counts vary only by arrival noise; the
real minute-level structure inside a window is unknown.

>>> import numpy as np
>>> type_counts_per_min(np.array([0.5, 30.0, 61.0, 125.0]), np.array([0, 1, 1, 0]), 2)
array([[1, 1],
       [0, 1],
       [1, 0]])
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from oserve_rl.errors import ConfigError, TraceError, UnknownNameError
from oserve_rl.workload.arrivals import gamma_renewal_times
from oserve_rl.workload.servegen import BLOCK_S, WINDOW_S, _draw_lengths, _model_data, servegen_models
from oserve_rl.workload.trace import Trace
from oserve_rl.workload.typing import RequestTyper

MINUTE_S = 60
DAY_S = 86_400
MINUTES_PER_WINDOW = WINDOW_S // MINUTE_S
DISPERSIONS = ("gamma", "poisson")
# A client-minute is drawn from the renewal CLT when its mean count m >= max(_CLT_MIN_COUNT, _CLT_BURSTS * cv^2):
# a Gamma renewal process with CV cv forgets its bursts after ~cv^2 mean gaps, so a minute must span many of them.
_CLT_MIN_COUNT = 50.0
_CLT_BURSTS = 10.0
_TYPE_PROBS_SEED = 0
_TYPE_PROBS_CHUNK = 256
_EXACT_CHUNK_ARRIVALS = 2_000_000


@dataclass(frozen=True)
class SeriesMeta:
    """Where a count series came from and which of its minutes are real data.

    ``observed[i]`` is False for minutes inside a collection gap (their counts
    are 0 and must not be trained on or scored). ``start_s`` is the time of
    minute 0 on the source's clock.
    """

    source: str
    start_s: float
    observed: np.ndarray
    type_names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def minutes(self) -> int:
        return len(self.observed)

    def segments(self, min_len_min: int = 1) -> list[tuple[int, int]]:
        """``[start, end)`` minute ranges of consecutive observed minutes, at least ``min_len_min`` long."""
        obs = np.concatenate(([False], np.asarray(self.observed, dtype=bool), [False]))
        edges = np.flatnonzero(np.diff(obs.astype(np.int8)))
        return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len_min]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (the mask as its segments)."""
        return {
            "source": self.source,
            "start_s": self.start_s,
            "minutes": self.minutes,
            "observed_minutes": int(np.sum(self.observed)),
            "segments": self.segments(),
            "type_names": list(self.type_names),
            "params": self.params,
            "notes": list(self.notes),
        }


def type_counts_per_min(
    arrival_s: np.ndarray, types: np.ndarray, num_types: int, start_s: float = 0.0, minutes: int | None = None
) -> np.ndarray:
    """Arrivals per one-minute bin and type: int64 ``[minutes, num_types]``.

    Bin ``i`` covers ``[start_s + 60 i, start_s + 60 (i + 1))``. Arrivals
    outside ``[start_s, start_s + 60 * minutes)`` are ignored. With
    ``minutes=None`` the bins run to the one holding the last arrival.
    """
    arrival_s = np.asarray(arrival_s, dtype=np.float64)
    types = np.asarray(types, dtype=np.int64)
    if arrival_s.shape != types.shape or arrival_s.ndim != 1:
        raise ConfigError(f"type_counts_per_min: arrival_s {arrival_s.shape} and types {types.shape} must be equal 1-D")
    if int(num_types) != num_types or num_types < 1:
        raise ConfigError(f"type_counts_per_min: num_types must be an integer >= 1, got {num_types!r}")
    if len(types) and (types.min() < 0 or types.max() >= num_types):
        raise ConfigError(f"type_counts_per_min: type ids must be in 0..{num_types - 1}, got {types.min()}..{types.max()}")
    minute = np.floor((arrival_s - start_s) / MINUTE_S).astype(np.int64)
    if minutes is None:
        minutes = int(minute.max()) + 1 if len(minute) and minute.max() >= 0 else 0
    if minutes < 0:
        raise ConfigError(f"type_counts_per_min: minutes must be >= 0, got {minutes}")
    keep = (minute >= 0) & (minute < minutes)
    flat = minute[keep] * num_types + types[keep]
    return np.bincount(flat, minlength=minutes * num_types).reshape(minutes, num_types)


def type_names(typer: RequestTyper) -> tuple[str, ...]:
    """Labels such as ``t0 (in 420, out 36)``: centre lengths in tokens."""
    return tuple(f"t{j} (in {c[0]:.0f}, out {c[1]:.0f})" for j, c in enumerate(typer.centers_tokens))


def trace_type_counts(trace: Trace, typer: RequestTyper) -> tuple[np.ndarray, SeriesMeta]:
    """Per-minute type counts of a request trace, from the minute of its first arrival.

    The minute holding the last arrival is dropped: it is cut off by the end of
    the recording, so its count would be a fake dip.
    """
    if len(trace) == 0:
        raise TraceError(f"trace {trace.name!r} has no requests")
    start_s = float(np.floor(trace.arrival_s[0] / MINUTE_S) * MINUTE_S)
    minutes = int((trace.arrival_s[-1] - start_s) // MINUTE_S)
    counts = type_counts_per_min(trace.arrival_s, typer.predict(trace), typer.k, start_s, minutes)
    meta = SeriesMeta(
        source=trace.name,
        start_s=start_s,
        observed=np.ones(minutes, dtype=bool),
        type_names=type_names(typer),
        params={"trace_source": trace.source},
        notes=("last, partial minute dropped",),
    )
    return counts, meta


# ------------------------------------------------------------------------------------------ ServeGen


def parse_days(days: str | int | Sequence[int] | range) -> range:
    """``"0-6"`` (inclusive), ``"7"``, ``7``, ``(0, 6)`` (inclusive) or a ``range`` -> ``range`` of days."""
    if isinstance(days, range):
        out = days
    elif isinstance(days, int | np.integer):
        out = range(int(days), int(days) + 1)
    elif isinstance(days, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", days)
        if not m:
            raise ConfigError(f"days {days!r}: expected FIRST-LAST (inclusive, e.g. '0-6') or one day ('7')")
        first = int(m.group(1))
        out = range(first, int(m.group(2) or first) + 1)
    else:
        seq = list(days)
        if len(seq) != 2:
            raise ConfigError(f"days {days!r}: expected (first, last), inclusive")
        out = range(int(seq[0]), int(seq[1]) + 1)
    if len(out) == 0 or out.step != 1 or out.start < 0:
        raise ConfigError(f"days {days!r}: need a non-empty run of consecutive days >= 0 (e.g. '0-6')")
    return out


def _servegen_model(model: str) -> str:
    valid = servegen_models()
    if model not in valid:
        raise UnknownNameError("ServeGen model", model, valid)
    return model


def _days_span(model: str, days: range) -> tuple[int, int]:
    data = _model_data(model)
    num_days = data.span_s // DAY_S
    if days.stop > num_days:
        raise ConfigError(
            f"servegen:{model}: days {days.start}-{days.stop - 1} are outside the data (valid: 0-{num_days - 1})"
        )
    return days.start * DAY_S, days.stop * DAY_S


def _block_weights(rates: pd.DataFrame) -> pd.Series:
    """Expected requests per (client, block): the weights of ServeGen's model-level length mix."""
    return (
        (rates["rate_rps"] * WINDOW_S)
        .groupby([rates["client"].astype(np.int64), (rates["window_start_s"] // BLOCK_S) * BLOCK_S])
        .sum()
    )


def _draw_request_lengths(
    model: str, client: np.ndarray, block: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) tokens per request, drawn as ``servegen_trace`` draws them (fallbacks, rounding, >= 1)."""
    data = _model_data(model)
    weights = _block_weights(data.rates)
    inp, _ = _draw_lengths(data.input_table, client, block, weights, rng)
    out, _ = _draw_lengths(data.output_table, client, block, weights, rng)
    return np.maximum(np.rint(inp), 1).astype(np.int64), np.maximum(np.rint(out), 1).astype(np.int64)


def servegen_length_sample(model: str, days: str | range = "0-6", n: int = 50_000, seed: int = 0) -> Trace:
    """``n`` request lengths drawn in proportion to ServeGen's expected requests over ``days``.

    For fitting a :class:`~oserve_rl.workload.RequestTyper`. Arrival times are
    all 0 (only the lengths mean anything).

    >>> from oserve_rl.workload import RequestTyper
    >>> typer = RequestTyper.fit(servegen_length_sample("m-large", "0-6", n=20_000), k=4)
    """
    model = _servegen_model(model)
    days = parse_days(days)
    lo_s, hi_s = _days_span(model, days)
    if int(n) != n or n < 1:
        raise ConfigError(f"servegen_length_sample: n must be an integer >= 1, got {n!r}")
    weights = _block_weights(_model_data(model).rates)
    blocks = weights.index.get_level_values(1).to_numpy()
    weights = weights[(blocks >= lo_s) & (blocks < hi_s)]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(weights), size=int(n), p=(weights / weights.sum()).to_numpy())
    client = weights.index.get_level_values(0).to_numpy()[pick]
    block = weights.index.get_level_values(1).to_numpy()[pick]
    inp, out = _draw_request_lengths(model, client, block, rng)
    return Trace(np.zeros(len(inp)), inp, out, name=f"servegen:{model} lengths",
                 source=f"ServeGen {model} days {days.start}-{days.stop - 1}, {n} draws weighted by expected requests, "
                        f"seed {seed}")


@functools.lru_cache(maxsize=8)
def _client_block_type_probs(
    model: str, centers_key: tuple[tuple[float, float], ...], lo_s: int, hi_s: int, samples_per_block: int
) -> tuple[pd.MultiIndex, np.ndarray]:
    """Type probabilities ``[pairs, k]`` of every (client, block) with traffic in ``[lo_s, hi_s)``.

    Estimated from ``samples_per_block`` length draws each, with a fixed seed:
    the shares are a property of the data, so a series' seed only changes its
    arrival noise (with 4096 draws a share is off by < 0.8 points, 1 sigma).
    """
    typer = RequestTyper(np.array(centers_key, dtype=np.float64))
    keys = _block_weights(_model_data(model).rates).index
    blocks = keys.get_level_values(1).to_numpy(np.int64)
    keys = keys[(blocks >= lo_s // BLOCK_S * BLOCK_S) & (blocks < hi_s)]
    rng = np.random.default_rng(_TYPE_PROBS_SEED)
    probs = np.zeros((len(keys), typer.k))
    for lo in range(0, len(keys), _TYPE_PROBS_CHUNK):  # chunks bound memory to ~100 MB
        part = keys[lo : lo + _TYPE_PROBS_CHUNK]
        client = np.repeat(part.get_level_values(0).to_numpy(np.int64), samples_per_block)
        block = np.repeat(part.get_level_values(1).to_numpy(np.int64), samples_per_block)
        inp, out = _draw_request_lengths(model, client, block, rng)
        types = typer.predict(Trace(np.zeros(len(inp)), inp, out, name="type-probs", source=model))
        pair = np.repeat(np.arange(len(part)), samples_per_block)
        counts = np.bincount(pair * typer.k + types, minlength=len(part) * typer.k).reshape(len(part), typer.k)
        probs[lo : lo + len(part)] = counts / samples_per_block
    return keys, probs


def _client_minute_totals(
    rng: np.random.Generator, mean_count: np.ndarray, fano: np.ndarray
) -> np.ndarray:
    """Counts with mean ``mean_count`` and variance ``mean_count * fano`` (renewal-CLT regime)."""
    total = np.zeros(len(mean_count), dtype=np.int64)
    over = fano > 1.0 + 1e-9
    under = fano < 1.0 - 1e-9
    poisson = ~(over | under)
    # Negative binomial as a Gamma-Poisson mixture: Var = m + m^2/shape = m * fano.
    shape = mean_count[over] / (fano[over] - 1.0)
    total[over] = rng.poisson(mean_count[over] * rng.gamma(shape, 1.0 / shape))
    # Binomial(n, p) with n p = m, n p (1 - p) = m * fano (n rounded up, p adjusted to keep the mean).
    n = np.ceil(mean_count[under] / (1.0 - fano[under])).astype(np.int64)
    total[under] = rng.binomial(n, mean_count[under] / n)
    total[poisson] = rng.poisson(mean_count[poisson])
    return total


def servegen_type_counts(
    model: str = "m-large",
    typer: RequestTyper | None = None,
    *,
    days: str | int | Sequence[int] | range = "0-6",
    rate_scale: float = 1.0,
    dispersion: str = "gamma",
    max_cv: float = 8.0,
    samples_per_block: int = 4096,
    seed: int = 0,
) -> tuple[np.ndarray, SeriesMeta]:
    """Per-minute arrival counts per type over ServeGen ``days``: (int64 ``[minutes, k]``, meta).

    ``rate_scale`` multiplies the production rates (m-large averages ~200
    req/s; 0.05 gives ~10 req/s). Minute 0 is midnight of ``days.start``
    (``meta.start_s`` on ServeGen's clock). ``typer`` defaults to a 4-type
    typer fitted on 50,000 lengths from the same days. Seeded and deterministic:
    same arguments, same counts.

    >>> counts, meta = servegen_type_counts("m-large", days="0", rate_scale=0.05, seed=0)
    >>> counts.shape, meta.segments()
    ((1440, 4), [(0, 1440)])
    """
    model = _servegen_model(model)
    days = parse_days(days)
    lo_s, hi_s = _days_span(model, days)
    if dispersion not in DISPERSIONS:
        raise UnknownNameError("dispersion", dispersion, DISPERSIONS)
    if not (np.isfinite(rate_scale) and rate_scale > 0):
        raise ConfigError(f"servegen:{model}: rate_scale must be a positive number, got {rate_scale!r}")
    if not max_cv > 0:
        raise ConfigError(f"servegen:{model}: max_cv must be > 0, got {max_cv!r}")
    if typer is None:
        typer = RequestTyper.fit(servegen_length_sample(model, days, seed=seed), k=4, seed=seed)
    data = _model_data(model)
    k = typer.k
    minutes = (hi_s - lo_s) // MINUTE_S

    keys, probs = _client_block_type_probs(
        model, tuple(map(tuple, typer.centers_log.tolist())), int(lo_s), int(hi_s), int(samples_per_block)
    )
    rows = data.rates[(data.rates["window_start_s"] >= lo_s) & (data.rates["window_start_s"] < hi_s)]
    client = rows["client"].to_numpy(np.int64)
    window_s = rows["window_start_s"].to_numpy(np.int64)
    pair = keys.get_indexer(pd.MultiIndex.from_arrays([client, window_s // BLOCK_S * BLOCK_S]))
    rate_rps = rows["rate_rps"].to_numpy(np.float64) * rate_scale
    cv = np.clip(rows["iat_cv"].to_numpy(np.float64), 1e-3, max_cv)
    first_min = (window_s - lo_s) // MINUTE_S

    rng = np.random.default_rng(seed)
    counts = np.zeros((minutes, k), dtype=np.int64)
    mean_per_min = rate_rps * MINUTE_S
    if dispersion == "poisson":
        clt = np.ones(len(rows), dtype=bool)
        fano = np.ones(len(rows))
    else:
        clt = mean_per_min >= np.maximum(_CLT_MIN_COUNT, _CLT_BURSTS * cv**2)
        fano = cv**2

    # total[row, i]: arrivals of client-window ``row`` in its minute i.
    total = np.zeros((len(rows), MINUTES_PER_WINDOW), dtype=np.int64)
    # Renewal-CLT client-windows: one draw per client-minute.
    idx = np.flatnonzero(clt)
    total[idx] = _client_minute_totals(
        rng, np.repeat(mean_per_min[idx], MINUTES_PER_WINDOW), np.repeat(fano[idx], MINUTES_PER_WINDOW)
    ).reshape(-1, MINUTES_PER_WINDOW)
    # The rest: the renewal process itself, arrival by arrival (in chunks of ~2M arrivals to bound memory).
    exact = np.flatnonzero(~clt)
    chunk_of = (np.cumsum(rate_rps[exact] * WINDOW_S) // _EXACT_CHUNK_ARRIVALS).astype(np.int64)
    for c in np.unique(chunk_of):
        part = exact[chunk_of == c]
        group, t_s = gamma_renewal_times(rng, rate_rps[part], cv[part], float(WINDOW_S))
        flat = group * MINUTES_PER_WINDOW + (t_s // MINUTE_S).astype(np.int64)
        total[part] = np.bincount(flat, minlength=len(part) * MINUTES_PER_WINDOW).reshape(-1, MINUTES_PER_WINDOW)
    # Split every client-minute into types with the client's shares for that block.
    split = rng.multinomial(total.ravel(), np.repeat(probs[pair], MINUTES_PER_WINDOW, axis=0))
    minute = (first_min[:, None] + np.arange(MINUTES_PER_WINDOW)).ravel()
    for j in range(k):
        counts[:, j] = np.bincount(minute, weights=split[:, j], minlength=minutes).astype(np.int64)

    observed = np.ones(minutes, dtype=bool)
    gaps = data.gap_windows[(data.gap_windows >= lo_s) & (data.gap_windows < hi_s)]
    for g in (gaps - lo_s) // MINUTE_S:
        observed[g : g + MINUTES_PER_WINDOW] = False
    counts[~observed] = 0
    notes = []
    if len(gaps):
        notes.append(f"{len(gaps)} collection-gap windows marked unobserved")
    volume = rate_rps * WINDOW_S
    meta = SeriesMeta(
        source=f"servegen:{model}",
        start_s=float(lo_s),
        observed=observed,
        type_names=type_names(typer),
        params={
            "model": model,
            "days": f"{days.start}-{days.stop - 1}",
            "rate_scale": float(rate_scale),
            "dispersion": dispersion,
            "max_cv": float(max_cv),
            "samples_per_block": int(samples_per_block),
            "seed": int(seed),
            "mean_rate_rps": float(counts[observed].sum() / max(observed.sum(), 1) / MINUTE_S),
            "share_simulated_exactly": float(volume[~clt].sum() / max(volume.sum(), 1e-12)),
        },
        notes=tuple(notes),
    )
    return counts, meta
