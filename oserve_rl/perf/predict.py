"""What-if queries: predicted iteration times for a table of (replica, batch) points."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from oserve_rl.errors import ConfigError, OServeError
from oserve_rl.perf.model import replica_perf

POINT_COLUMNS = ("gpu", "model", "tp", "pp", "phase", "batch_size", "prompt_tokens", "context_tokens")


def read_points(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: file not found")
    try:
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{p}: empty file; expected a header {','.join(POINT_COLUMNS)} and one row per point") from None
    missing = [c for c in POINT_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{p}: missing columns {missing} (expected {', '.join(POINT_COLUMNS)})")
    if df.empty:
        raise ConfigError(f"{p}: no rows after the header; add one row per point")
    return df


def predict_points(df: pd.DataFrame, source: str = "points") -> pd.DataFrame:
    """Add ``predicted_ms``: a prefill of ``batch_size`` prompts of ``prompt_tokens`` (one iteration),
    or one decode step of ``batch_size`` sequences each holding ``context_tokens``."""
    out = []
    for i, row in enumerate(df.itertuples(index=False), start=1):
        where = f"{source}: row {i}"
        try:
            tp, pp, b = int(row.tp), int(row.pp), int(row.batch_size)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: tp, pp and batch_size must be whole numbers, got "
                              f"tp={row.tp!r}, pp={row.pp!r}, batch_size={row.batch_size!r}") from None
        phase = str(row.phase).strip().lower()
        if phase not in ("prefill", "decode"):
            raise ConfigError(f"{where}: phase {row.phase!r} must be 'prefill' or 'decode'")
        field = "prompt_tokens" if phase == "prefill" else "context_tokens"
        try:
            tokens = int(getattr(row, field))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {field} must be a whole number, got {getattr(row, field)!r}") from None
        if b <= 0 or tokens <= 0:
            raise ConfigError(f"{where}: batch_size and {field} must be > 0, got batch_size={b}, {field}={tokens}")
        try:
            perf = replica_perf(str(row.model), str(row.gpu), tp=tp, pp=pp)
        except OServeError as e:
            raise ConfigError(f"{where}: {e}") from None
        t = perf.prefill_s(tokens, b) if phase == "prefill" else perf.decode_s(b, tokens)
        out.append(t * 1e3)
    res = df.copy()
    res["predicted_ms"] = out
    return res
