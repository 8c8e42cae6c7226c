"""Request-level metrics from a ``RequestRecorder``: latencies, throughput, SLOs, cost.

Definitions (all times in seconds):

- TTFT = first_token - arrival; TPOT = (finish - first_token) / (output - 1),
  NaN for 1-token outputs; E2E = finish - arrival; queue = first_scheduled - arrival.
  Latency percentiles are over completed requests only.
- throughput_rps / throughput_tok_s: completed requests / generated tokens of
  completed requests per second of ``duration_s`` (default: first arrival to
  last finish).
- SLO attainment: share of ALL requests (rejected and unfinished count as
  misses) that completed with TTFT <= slo_ttft_s and TPOT <= slo_tpot_s (a
  missing SLO always passes; a 1-token request passes the TPOT SLO).
  goodput_rps: completed requests meeting the SLOs per second.
- SLO-scale@q (HexAGenT): smallest s such that a share q of the completed
  requests finish within s x their standalone latency
  (``perf.standalone_latency_s``), i.e. the q-quantile of e2e / standalone
  (``method="higher"``: an observed ratio, so s is attained exactly).
  Rejections and unfinished requests show in ``slo.attainment`` and the
  counts, not here (a trace's over-long prompts would otherwise make it inf).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from oserve_rl.errors import ConfigError
from oserve_rl.sim.requests import STATUS_COMPLETED, STATUS_PENDING, STATUS_REJECTED, RequestRecorder

__all__ = ["grouped_p99", "per_request", "summary", "write", "standalone_latencies_s", "percentiles"]

QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99/mean of the finite values (None if there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {**{k: None for k in QUANTILES}, "mean": None}
    q = np.percentile(v, list(QUANTILES.values()))
    return {**{k: float(x) for k, x in zip(QUANTILES, q)}, "mean": float(v.mean())}


def grouped_p99(values: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """``np.percentile(values[groups == g], 99)`` for every ``g`` in ``0 .. num_groups - 1`` (nan where a group is
    empty), bit for bit, in one sort instead of a percentile call per group (the env's per-replica latency
    features, every step). numpy's default method: the sorted values at ``(n - 1) * 0.99``, interpolated
    linearly, from the right-hand value when the fraction is >= 0.5."""
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    out = np.full(num_groups, np.nan)
    if not values.size:
        return out
    order = np.lexsort((values, groups))
    v = values[order]
    counts = np.bincount(groups, minlength=num_groups)[:num_groups]
    starts = np.cumsum(counts) - counts
    has = counts > 0
    n, s = counts[has], starts[has]
    virtual = (n - 1) * 0.99
    prev = np.floor(virtual)
    gamma = virtual - prev
    above = virtual >= n - 1  # n == 1 included: the last (only) value
    lo = s + np.where(above, n - 1, prev.astype(np.int64))
    hi = s + np.where(above, n - 1, prev.astype(np.int64) + 1)
    a, b = v[lo], v[hi]
    diff = b - a
    res = a + diff * gamma
    right = gamma >= 0.5
    res[right] = (b - diff * (1 - gamma))[right]
    out[has] = res
    return out


def per_request(rec: RequestRecorder) -> dict[str, np.ndarray]:
    """ttft_s, tpot_s, e2e_s, queue_s arrays (NaN where not applicable)."""
    done = rec.status == STATUS_COMPLETED
    out = rec.output_tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(done & (out > 1), (rec.finish_s - rec.first_token_s) / (out - 1), np.nan)
    e2e = np.where(done, rec.finish_s - rec.arrival_s, np.nan)
    return {
        "ttft_s": rec.first_token_s - rec.arrival_s,
        "tpot_s": tpot,
        "e2e_s": e2e,
        "queue_s": rec.first_scheduled_s - rec.arrival_s,
    }


def standalone_latencies_s(rec: RequestRecorder, perf: Any) -> np.ndarray:
    """Standalone latency of every request on ``perf``'s replica (memoised per length pair)."""
    cache: dict[tuple[int, int], float] = {}
    out = np.empty(rec.n)
    for i, (a, b) in enumerate(zip(rec.input_list, rec.output_list)):
        v = cache.get((a, b))
        if v is None:
            v = cache[(a, b)] = float(perf.standalone_latency_s(a, b))
        out[i] = v
    return out


def summary(
    rec: RequestRecorder,
    *,
    perf: Any = None,
    standalone_s: np.ndarray | None = None,
    slo_ttft_s: float | None = None,
    slo_tpot_s: float | None = None,
    duration_s: float | None = None,
    gpu_hours: float | None = None,
    cost_per_gpu_hour: float | None = None,
) -> dict[str, Any]:
    """JSON-ready aggregates of a finished (or partly finished) simulation.

    SLO-scale needs ``standalone_s`` (per request) or ``perf``; cost needs
    ``gpu_hours`` and ``cost_per_gpu_hour`` (the caller knows the deployment).
    """
    for name, v in (("slo_ttft_s", slo_ttft_s), ("slo_tpot_s", slo_tpot_s), ("duration_s", duration_s),
                    ("gpu_hours", gpu_hours), ("cost_per_gpu_hour", cost_per_gpu_hour)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"metrics.summary: {name} must be a finite number >= 0, got {v!r}")
    st = rec.status
    done = st == STATUS_COMPLETED
    n_done = int(done.sum())
    m = per_request(rec)
    if duration_s is None:
        if n_done:
            duration_s = float(np.nanmax(rec.finish_s[done]) - rec.arrival_s.min())
        else:
            duration_s = 0.0
    out_tok = int(rec.output_tokens[done].sum())
    in_tok = int(rec.input_tokens[done].sum())
    admitted = np.isfinite(rec.first_scheduled_s)
    res: dict[str, Any] = {
        "requests": int(rec.n),
        "completed": n_done,
        "rejected": int((st == STATUS_REJECTED).sum()),
        "in_flight": int((st == STATUS_PENDING).sum()),
        "rejected_reasons": rec.reject_counts(),
        "ttft_s": percentiles(m["ttft_s"][done]),
        "tpot_s": percentiles(m["tpot_s"][done]),
        "e2e_s": percentiles(m["e2e_s"][done]),
        "queue_s": percentiles(m["queue_s"][done]),
        "duration_s": duration_s,
        "throughput_rps": n_done / duration_s if duration_s > 0 else None,
        "throughput_tok_s": out_tok / duration_s if duration_s > 0 else None,
        "input_tok_s": in_tok / duration_s if duration_s > 0 else None,
        "preemptions_total": int(rec.preemptions.sum()),
        "preempted_requests": int((rec.preemptions > 0).sum()),
        "cached_tokens_total": int(rec.cached_tokens.sum()),
        "prefix_hit_rate": (float(rec.cached_tokens.sum() / rec.input_tokens[admitted].sum())
                            if admitted.any() else None),
    }
    ok = done.copy()
    if slo_ttft_s is not None:
        ok &= m["ttft_s"] <= slo_ttft_s
    if slo_tpot_s is not None:
        ok &= (rec.output_tokens <= 1) | (m["tpot_s"] <= slo_tpot_s)
    n_ok = int(ok.sum())
    res["slo"] = {
        "ttft_s": slo_ttft_s,
        "tpot_s": slo_tpot_s,
        "attainment": n_ok / rec.n if rec.n else None,
        "goodput_rps": n_ok / duration_s if duration_s > 0 else None,
    }
    if standalone_s is None and perf is not None:
        standalone_s = standalone_latencies_s(rec, perf)
    if standalone_s is not None:
        standalone_s = np.asarray(standalone_s, dtype=np.float64)
        if standalone_s.shape != (rec.n,):
            raise ConfigError(f"metrics.summary: standalone_s must have one entry per request ({rec.n}), "
                              f"got shape {standalone_s.shape}")
        ratio = m["e2e_s"][done] / standalone_s[done]
        for q in (95, 99):
            res[f"slo_scale_p{q}"] = float(np.percentile(ratio, q, method="higher")) if n_done else None
    if gpu_hours is not None:
        res["gpu_hours"] = gpu_hours
        if cost_per_gpu_hour is not None:
            res["cost_usd"] = gpu_hours * cost_per_gpu_hour
            res["cost_usd_per_1k_requests"] = (gpu_hours * cost_per_gpu_hour * 1000 / n_done) if n_done else None
    return res


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _num(x)
    return x


def write(rec: RequestRecorder, out_dir: str | Path, **summary_kwargs: Any) -> dict[str, Any]:
    """Write ``requests.parquet`` (one row per request) and ``summary.json``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = _jsonable(summary(rec, **summary_kwargs))
    frame = rec.frame()
    frame.to_parquet(out / "requests.parquet", index=False)
    with open(out / "summary.json", "w") as fh:
        json.dump(res, fh, indent=1, allow_nan=False)
    return res
