"""Synthesise request traces from the ServeGen tables (Xiang et al., NSDI 2026).

ServeGen publishes per-client, per-10-minute arrival rates and inter-arrival
CVs, and per-client, per-6-hour inverse-CDF tables of request lengths. A
trace is rebuilt as:

* arrivals: for every client and window, a stationary Gamma renewal process
  (shape 1/CV^2) at ``rate_rps * rate_scale`` over the 600 s window;
* lengths: inverse-CDF draws from the client's quantile row for the 6-hour
  block containing the arrival, linear between the published quantiles
  (q0.5 ... q99.9, then ``max`` at 1.0; below q0.5 the q0.5 value). Clients
  without a usable table for that block draw from the model-level mix: the
  covered clients of that block, weighted by their expected request counts.
  For ``mm-image``, input = text tokens + image tokens, drawn independently
  from the same client's tables.

Deviations from the published data are recorded in ``Trace.notes``: CVs
capped at ``max_cv``, collection-gap windows filled from the nearest earlier
window, fallback share, and lengths of 0 raised to 1 token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from oserve_rl.errors import ConfigError, TraceError, UnknownNameError
from oserve_rl.workload.arrivals import gamma_renewal_times
from oserve_rl.workload.trace import Trace

WINDOW_S = 600
BLOCK_S = 21_600
_QCOLS = ["q0_5", "q1", *[f"q{i}" for i in range(2, 100)], "q99_5", "q99_9"]
_LEVELS = np.array([0.0, 0.005, 0.01, *[i / 100 for i in range(2, 100)], 0.995, 0.999, 1.0])
# Which quantile fields add up to a request's input and output per model kind.
_INPUT_FIELDS = {"mm-image": ("text_tokens", "image_tokens")}
_DEFAULT_INPUT_FIELDS = ("input_tokens",)
_OUTPUT_FIELDS = ("output_tokens",)


def _servegen_dir() -> Path:
    from oserve_rl.workload.loaders import bundled_traces_dir

    return bundled_traces_dir() / "servegen" / "train"


@dataclass(frozen=True)
class _LengthTable:
    """Quantile matrices per field plus the (client, block) keys that are usable."""

    keys: pd.MultiIndex  # (client, block_start_s) covered for this length kind
    values: tuple[np.ndarray, ...]  # per component field: (len(keys), len(_LEVELS))


@dataclass(frozen=True)
class _ModelData:
    rates: pd.DataFrame  # client, window_start_s, rate_rps, iat_cv (rate > 0 only)
    gap_windows: np.ndarray  # window starts with total_rate_rps == 0 (collection gaps)
    span_s: int
    input_table: _LengthTable
    output_table: _LengthTable


def _length_table(q: pd.DataFrame, fields: tuple[str, ...]) -> _LengthTable:
    parts = []
    for f in fields:
        sub = q[q["field"] == f].set_index(["client", "block_start_s"]).sort_index()
        parts.append(sub)
    keys = parts[0].index
    for p in parts[1:]:
        keys = keys.intersection(p.index)
    # All-zero rows are empty tables (a client with no requests that block), not 0-token requests.
    usable = np.zeros(len(keys), dtype=bool)
    for p in parts:
        usable |= p.loc[keys, "max"].to_numpy() > 0
    keys = keys[usable]
    values = tuple(
        np.column_stack([p.loc[keys, _QCOLS].to_numpy(np.float64)[:, :1], p.loc[keys, _QCOLS].to_numpy(np.float64),
                         p.loc[keys, "max"].to_numpy(np.float64)])
        for p in parts
    )
    return _LengthTable(keys, values)


@functools.lru_cache(maxsize=4)
def _model_data(model: str) -> _ModelData:
    root = _servegen_dir()
    try:
        rates = pd.read_parquet(
            root / "servegen_client_rates_train.parquet",
            columns=["model", "client", "window_start_s", "rate_rps", "iat_cv"],
            filters=[("model", "==", model)],
        )
        quant = pd.read_parquet(root / "servegen_client_length_quantiles_train.parquet", filters=[("model", "==", model)])
        windows = pd.read_csv(root / "servegen_model_windows_train.csv")
    except FileNotFoundError as exc:
        raise TraceError(f"ServeGen tables missing: {exc.filename}") from None
    windows = windows[windows["model"] == model]
    span_s = int(windows["window_start_s"].max()) + WINDOW_S
    gaps = windows.loc[windows["total_rate_rps"] <= 0, "window_start_s"].to_numpy(np.int64)
    rates = rates[rates["rate_rps"] > 0].drop(columns="model").reset_index(drop=True)
    quant = quant.astype({"client": np.int64})
    return _ModelData(
        rates=rates,
        gap_windows=gaps,
        span_s=span_s,
        input_table=_length_table(quant, _INPUT_FIELDS.get(model, _DEFAULT_INPUT_FIELDS)),
        output_table=_length_table(quant, _OUTPUT_FIELDS),
    )


@functools.lru_cache(maxsize=1)
def servegen_models() -> tuple[str, ...]:
    """Models present in the bundled ServeGen tables."""
    windows = pd.read_csv(_servegen_dir() / "servegen_model_windows_train.csv", usecols=["model"])
    return tuple(sorted(windows["model"].unique()))


def _inverse_cdf(table: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    j = np.clip(np.searchsorted(_LEVELS, u, side="right"), 1, len(_LEVELS) - 1)
    lo, hi = _LEVELS[j - 1], _LEVELS[j]
    a, b = table[rows, j - 1], table[rows, j]
    return a + (b - a) * (u - lo) / (hi - lo)


def _draw_lengths(
    table: _LengthTable, client: np.ndarray, block: np.ndarray, block_weights: pd.Series, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Token counts per request (float, unrounded) and how many used the model-level mix."""
    n = len(client)
    rows = table.keys.get_indexer(pd.MultiIndex.from_arrays([client, block]))
    missing = rows < 0
    if missing.any():
        key_blocks = table.keys.get_level_values(1).to_numpy()
        key_clients = table.keys.get_level_values(0).to_numpy()
        weight = block_weights.reindex(pd.MultiIndex.from_arrays([key_clients, key_blocks])).fillna(0).to_numpy()
        for b in np.unique(block[missing]):
            need = np.flatnonzero(missing & (block == b))
            cand = np.flatnonzero((key_blocks == b) & (weight > 0))
            if len(cand) == 0:  # no covered client this block: mix over all blocks
                cand = np.flatnonzero(weight > 0) if (weight > 0).any() else np.arange(len(weight))
            w = weight[cand] if weight[cand].sum() > 0 else np.ones(len(cand))
            rows[need] = rng.choice(cand, size=len(need), p=w / w.sum())
    total = np.zeros(n)
    for values in table.values:
        total += _inverse_cdf(values, rows, rng.random(n))
    return total, int(missing.sum())


def servegen_trace(
    model: str,
    *,
    start_s: float = 0.0,
    duration_s: float = 3600.0,
    target_rps: float | None = None,
    rate_scale: float | None = None,
    max_cv: float = 8.0,
    seed: int = 0,
    name: str | None = None,
) -> Trace:
    """A request trace for ServeGen ``model`` over ``[start_s, start_s + duration_s)``.

    Times are on ServeGen's clock (t = 0 is local midnight of day 0); use
    ``Trace.rebase()`` to start at 0. Give exactly one of ``rate_scale``
    (multiplies every client's rate) or ``target_rps`` (picks the scale so the
    expected mean rate over the span is ``target_rps``). ``max_cv`` caps
    per-window inter-arrival CVs (published values reach ~400, which a Gamma
    renewal process turns into single instants holding whole windows of load).
    """
    valid = servegen_models()
    if model not in valid:
        raise UnknownNameError("ServeGen model", model, valid)
    if (target_rps is None) == (rate_scale is None):
        raise ConfigError(
            f"servegen:{model}: give exactly one of target_rps= (mean req/s of the result) or rate_scale= "
            "(multiplier on production rates, which average ~200 req/s for m-large)"
        )
    for label, value in (("target_rps", target_rps), ("rate_scale", rate_scale)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ConfigError(f"servegen:{model}: {label} must be a positive number, got {value!r}")
    if not max_cv > 0:
        raise ConfigError(f"servegen:{model}: max_cv must be > 0, got {max_cv!r}")
    data = _model_data(model)
    end_s = start_s + duration_s
    if not (duration_s > 0 and start_s >= 0 and end_s <= data.span_s):
        raise ConfigError(
            f"servegen:{model}: span [{start_s:g}, {end_s:g}) s is outside the data; "
            f"valid: 0 <= start_s, duration_s > 0, start_s + duration_s <= {data.span_s} s"
        )
    notes: list[str] = []
    first_w = int(start_s // WINDOW_S) * WINDOW_S
    windows = np.arange(first_w, end_s, WINDOW_S, dtype=np.int64)
    rates = data.rates
    # Collection gaps are missing data, not idle periods: borrow the nearest earlier window's clients.
    source_w = windows.copy()
    gap_in_span = np.isin(windows, data.gap_windows)
    if gap_in_span.any():
        good = np.setdiff1d(np.arange(0, data.span_s, WINDOW_S), data.gap_windows)
        for i in np.flatnonzero(gap_in_span):
            earlier = good[good < windows[i]]
            source_w[i] = earlier[-1] if len(earlier) else good[good > windows[i]][0]
        notes.append(f"{int(gap_in_span.sum())} collection-gap windows filled from the nearest earlier window")
    picked = rates[rates["window_start_s"].isin(source_w)]
    rows = picked.merge(pd.DataFrame({"window_start_s": source_w, "target_w": windows}), on="window_start_s")
    win_start = rows["target_w"].to_numpy(np.int64)
    overlap = np.minimum(win_start + WINDOW_S, end_s) - np.maximum(win_start, start_s)
    prod_rate = rows["rate_rps"].to_numpy(np.float64)
    expected_prod_rps = float((prod_rate * overlap).sum() / duration_s)
    if expected_prod_rps <= 0:
        raise TraceError(f"servegen:{model}: no requests in [{start_s:g}, {end_s:g}) s")
    scale = rate_scale if rate_scale is not None else target_rps / expected_prod_rps
    notes.append(f"production mean {expected_prod_rps:.2f} req/s scaled by {scale:.6g}")
    cv = rows["iat_cv"].to_numpy(np.float64)
    capped = cv > max_cv
    if capped.any():
        notes.append(f"inter-arrival CV capped at {max_cv:g} in {int(capped.sum())} of {len(cv)} client-windows")
    cv = np.clip(cv, 1e-3, max_cv)

    rng = np.random.default_rng(seed)
    group, t = gamma_renewal_times(rng, prod_rate * scale, cv, float(WINDOW_S))
    arrival = win_start[group] + t
    inside = (arrival >= start_s) & (arrival < end_s)
    group, arrival = group[inside], arrival[inside]
    order = np.argsort(arrival, kind="stable")
    group, arrival = group[order], arrival[order]
    client = rows["client"].to_numpy(np.int64)[group]
    block = (arrival // BLOCK_S).astype(np.int64) * BLOCK_S

    # Weights of the model-level mix: each client's expected requests per block.
    all_rates = data.rates
    block_weights = (
        (all_rates["rate_rps"] * WINDOW_S)
        .groupby([all_rates["client"].astype(np.int64), (all_rates["window_start_s"] // BLOCK_S) * BLOCK_S])
        .sum()
    )
    inp_f, miss_in = _draw_lengths(data.input_table, client, block, block_weights, rng)
    out_f, miss_out = _draw_lengths(data.output_table, client, block, block_weights, rng)
    inp = np.rint(inp_f).astype(np.int64)
    out = np.rint(out_f).astype(np.int64)
    n = len(arrival)
    if n:
        notes.append(
            f"lengths from the model-level mix for {miss_in / n:.1%} of inputs and {miss_out / n:.1%} of outputs "
            "(clients without a length table)"
        )
    zero_in, zero_out = int((inp < 1).sum()), int((out < 1).sum())
    if zero_in or zero_out:
        notes.append(f"raised 0-token draws to 1 token: {zero_in} inputs, {zero_out} outputs")
        inp, out = np.maximum(inp, 1), np.maximum(out, 1)
    return Trace(
        arrival,
        inp,
        out,
        name=name or f"servegen:{model}",
        source=f"ServeGen {model} [{start_s:g}, {end_s:g}) s, scale {scale:.6g}, max_cv {max_cv:g}, seed {seed}",
        notes=tuple(notes),
    )
