"""Read real trace files into ``Trace`` objects, and the ``load_trace`` front door.

Row numbers in errors and notes are 1-based *data* rows (the first row after
a CSV header, or the first line of a JSONL file, is data row 1), followed by
the file line they sit on.

Bad rows (missing or non-numeric fields, token counts <= 0, unparseable
times) raise ``TraceError`` naming file, row and field, unless
``skip_bad_rows`` allows that many to be dropped; dropped rows are listed in
``Trace.notes``. Out-of-order times raise unless ``sort=True`` (then they are
stably sorted, also noted).

A zero output length is a bad row by default. The bundled Azure 2023 traces
contain none; other releases may (a request that generated nothing still
occupied a prefill). ``zero_output="as_one"`` keeps such rows as 1-token
outputs and records how many were changed.
"""

from __future__ import annotations

import functools
import importlib.resources
import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from oserve_rl.errors import ConfigError, TraceError, UnknownNameError
from oserve_rl.workload.arrivals import ArrivalProcess, parse_arrival
from oserve_rl.workload.trace import Trace

ZeroOutput = Literal["error", "as_one"]

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
POOL_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")
MOONCAKE_BLOCK_TOKENS = 512

_BUNDLED_FILES = {
    "azure-conv": "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
    "azure-code": "azure_llm_2023/AzureLLMInferenceTrace_code.csv",
    "mooncake-synthetic": "mooncake/synthetic_trace.jsonl",
    "sharegpt": "length_only/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
    "arxiv": "length_only/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
}
SERVEGEN_NAMES = ("servegen:m-large", "servegen:m-small", "servegen:mm-image")
TRACE_NAMES = (*_BUNDLED_FILES, *SERVEGEN_NAMES)


# ------------------------------------------------------------------ locations
def bundled_traces_dir() -> Path:
    """Directory of the bundled trace files (installed package or source tree)."""
    try:
        root = importlib.resources.files("oserve_rl.traces")
        path = Path(str(root))
        if (path / "azure_llm_2023").is_dir():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "traces"


def bundled_path(name: str) -> Path:
    """Path of a bundled trace file by its short name (``azure-conv``, ``sharegpt``, ...)."""
    if name not in _BUNDLED_FILES:
        raise UnknownNameError("bundled trace file", name, _BUNDLED_FILES)
    return bundled_traces_dir() / _BUNDLED_FILES[name]


# ---------------------------------------------------------- row validation
# How to get past a bad or unsorted file, for every caller: the loader options (load_trace passes them on), and
# the one command with flags for them. evaluate.py and train.py have none: their traces must be clean files.
SKIP_HINT = ("fix the file, or drop up to N bad rows (listed in Trace.notes) with load_trace(..., skip_bad_rows=N) "
             "or `python -m oserve_rl simulate --skip-bad-rows N`")
SORT_HINT = ("sort the file by time, or pass sort=True to sort the trace (load_trace(..., sort=True); "
             "`python -m oserve_rl simulate --sort`)")
ZERO_HINT = "pass zero_output='as_one' (a load_trace option; no command has a flag for it) to count it as 1 token"


class _RowChecker:
    """Collects per-row problems, then either raises (first problem) or drops rows."""

    def __init__(self, path: Path, n_rows: int, line_offset: int):
        self.path, self.n_rows, self.line_offset = path, n_rows, line_offset
        self.bad = np.zeros(n_rows, dtype=bool)
        self.first: dict[int, str] = {}

    def where(self, row0: int) -> str:
        return f"{self.path}: data row {row0 + 1} (line {row0 + 1 + self.line_offset})"

    def flag(self, mask: np.ndarray, field: str, problem: str, raw: Any) -> None:
        if not mask.any():
            return
        rows = np.flatnonzero(mask)
        r = int(rows[0])
        value = raw[r] if raw is not None else None
        shown = "" if value is None else f", got {value!r}"
        self.first.setdefault(r, f"field {field!r}: {problem}{shown}")
        self.bad |= mask

    def resolve(self, skip_bad_rows: int, notes: list[str]) -> np.ndarray:
        """Boolean mask of rows to keep."""
        n_bad = int(self.bad.sum())
        if n_bad == 0:
            return ~self.bad
        first = min(self.first)
        if n_bad > skip_bad_rows:
            raise TraceError(
                f"{self.where(first)}, {self.first[first]} "
                f"({n_bad} bad row{'s' if n_bad > 1 else ''} in the file; skip_bad_rows={skip_bad_rows}; {SKIP_HINT})"
            )
        shown = ", ".join(str(r + 1) for r in np.flatnonzero(self.bad)[:10])
        notes.append(
            f"skipped {n_bad} bad row{'s' if n_bad > 1 else ''} of {self.n_rows} "
            f"(data rows {shown}{' ...' if n_bad > 10 else ''}; first: {self.first[first]})"
        )
        return ~self.bad


def _token_column(
    values: pd.Series | np.ndarray, field: str, checker: _RowChecker, *, allow_zero_as_one: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Whole positive token counts; returns (values, zero_mask). Flags everything else."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_integer_dtype(series.dtype):
        arr = series.to_numpy(dtype=np.int64)
        not_whole = np.zeros(len(arr), dtype=bool)
    else:
        num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            not_whole = ~np.isfinite(num) | (num != np.floor(num))
        arr = np.where(not_whole, 1, num).astype(np.int64)
    raw = series.to_numpy(dtype=object)
    checker.flag(not_whole, field, "expected a whole number of tokens", raw)
    zero = (arr == 0) & ~not_whole
    negative = (arr < 0) & ~not_whole
    checker.flag(negative, field, "token count must be > 0", raw)
    if not allow_zero_as_one:
        checker.flag(zero, field, f"token count must be > 0 ({ZERO_HINT})"
                     if field in ("GeneratedTokens", "output_length") else "token count must be > 0", raw)
        zero = np.zeros(len(arr), dtype=bool)
    return arr, zero


def _order(arrival: np.ndarray, kept_rows: np.ndarray, checker: _RowChecker, field: str, sort: bool,
           notes: list[str]) -> np.ndarray | None:
    """Permutation that sorts ``arrival`` (None if already sorted); raises if unsorted and not ``sort``."""
    back = np.diff(arrival) < 0
    if not back.any():
        return None
    if not sort:
        i = int(np.argmax(back)) + 1
        raise TraceError(
            f"{checker.where(int(kept_rows[i]))}, field {field!r}: time goes backwards "
            f"(earlier than data row {int(kept_rows[i - 1]) + 1}); {SORT_HINT}"
        )
    order = np.argsort(arrival, kind="stable")
    moved = int((order != np.arange(len(order))).sum())
    notes.append(f"sorted by arrival time: {int(back.sum())} out-of-order rows, {moved} requests moved")
    return order


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    try:
        frame = pd.read_csv(path, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise TraceError(f"{path}: empty trace (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: not a readable CSV: {exc}") from None
    # Blank lines at the end of a file are not requests; blank lines inside stay as bad rows.
    empty = frame.isna().all(axis=1).to_numpy()
    if empty.any() and empty[-1]:
        last = len(empty) - int(np.argmin(empty[::-1])) if not empty.all() else 0
        frame = frame.iloc[:last]
    return frame


def _flag_blank_and_missing(frame: pd.DataFrame, columns: tuple[str, ...], checker: _RowChecker) -> None:
    """Blank lines, then empty fields and fields a short row lacks (pandas reads both as NaN): "missing", as the
    JSONL loader says, instead of the value check's "expected a whole number, got nan". Call before the value
    checks: a row's first problem is the one reported."""
    blank = frame.isna().all(axis=1).to_numpy()
    checker.flag(blank, "(row)", "blank line", None)
    for col in columns:
        checker.flag(frame[col].isna().to_numpy() & ~blank, col, "missing (empty, or the row has fewer fields "
                     f"than the header's {len(frame.columns)})", None)


def _require_columns(frame: pd.DataFrame, path: Path, required: tuple[str, ...], kind: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TraceError(
            f"{path}: header (line 1) lacks field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"for a {kind} trace (found {list(map(str, frame.columns))}; needs {list(required)})"
        )


def _check_options(skip_bad_rows: int, zero_output: str) -> None:
    if int(skip_bad_rows) != skip_bad_rows or skip_bad_rows < 0:
        raise ConfigError(f"skip_bad_rows must be an integer >= 0, got {skip_bad_rows!r}")
    if zero_output not in ("error", "as_one"):
        raise ConfigError(f"zero_output must be 'error' or 'as_one', got {zero_output!r}")


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


# ---------------------------------------------------------------- Azure CSV
_OFFSET_RE = r"(?:[+-]\d{2}:?\d{2}|Z)\s*$"


def load_azure(
    path: str | Path, *, sort: bool = False, skip_bad_rows: int = 0, zero_output: ZeroOutput = "error",
    name: str | None = None,
) -> Trace:
    """Azure LLM inference trace CSV (2023: naive times, 7 digits; 2024: ``+00:00``, 6 digits).

    ``arrival_s`` is seconds since the earliest valid timestamp (so it starts at 0).
    Offset-aware times are compared in UTC.
    """
    _check_options(skip_bad_rows, zero_output)
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    return _load_azure_cached(*_file_key(path), sort, int(skip_bad_rows), zero_output, name or path.stem)


@functools.lru_cache(maxsize=16)
def _load_azure_cached(path_s: str, _mtime: int, _size: int, sort: bool, skip_bad_rows: int,
                       zero_output: str, name: str) -> Trace:
    path = Path(path_s)
    frame = _read_csv(path)
    _require_columns(frame, path, AZURE_COLUMNS, "Azure")
    if len(frame) == 0:
        raise TraceError(f"{path}: empty trace (header only, no requests)")
    checker = _RowChecker(path, len(frame), line_offset=1)
    _flag_blank_and_missing(frame, AZURE_COLUMNS, checker)
    raw_ts = frame["TIMESTAMP"].astype("string")
    has_offset = raw_ts.str.contains(_OFFSET_RE, regex=True, na=False).to_numpy()
    valid_text = raw_ts.notna().to_numpy()
    if has_offset[valid_text].any() and not has_offset[valid_text].all():
        first_kind = has_offset[np.argmax(valid_text)]
        r = int(np.flatnonzero(valid_text & (has_offset != first_kind))[0])
        raise TraceError(
            f"{checker.where(r)}, field 'TIMESTAMP': mixes times {'without' if first_kind else 'with'} a UTC offset "
            f"with earlier rows {'with' if first_kind else 'without'} one, got {raw_ts.iloc[r]!r}; "
            "use one convention per file"
        )
    ts = pd.to_datetime(raw_ts, format="ISO8601", errors="coerce", utc=bool(has_offset.any()))
    ts_ns = ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    bad_ts = ts.isna().to_numpy()
    checker.flag(bad_ts, "TIMESTAMP", "not a parseable date-time (expected e.g. 2023-11-16 18:15:46.6805900)",
                 raw_ts.to_numpy(dtype=object))
    inp, _ = _token_column(frame["ContextTokens"], "ContextTokens", checker)
    out, zero = _token_column(frame["GeneratedTokens"], "GeneratedTokens", checker,
                              allow_zero_as_one=zero_output == "as_one")
    notes: list[str] = []
    keep = checker.resolve(skip_bad_rows, notes)
    if not keep.any():
        raise TraceError(f"{path}: empty trace (all {len(frame)} rows are bad)")
    rows = np.flatnonzero(keep)
    ts_ns, inp, out, zero = ts_ns[keep], inp[keep], out[keep], zero[keep]
    if zero.any():
        notes.append(f"{int(zero.sum())} requests with GeneratedTokens = 0 counted as 1 output token (zero_output='as_one')")
        out = np.where(zero, 1, out)
    arrival = (ts_ns - ts_ns.min()) / 1e9
    order = _order(arrival, rows, checker, "TIMESTAMP", sort, notes)
    if order is not None:
        arrival, inp, out = arrival[order], inp[order], out[order]
    return Trace(arrival, inp, out, name=name, source=str(path), notes=tuple(notes))


# ------------------------------------------------------------ Mooncake JSONL
def load_mooncake(
    path: str | Path, *, sort: bool = False, skip_bad_rows: int = 0, zero_output: ZeroOutput = "error",
    jitter_s: float = 0.0, seed: int = 0, name: str | None = None,
) -> Trace:
    """Mooncake JSONL: ``timestamp`` (ms), ``input_length``, ``output_length``, optional ``hash_ids``.

    ``arrival_s`` keeps Mooncake's clock (ms / 1000). Some Mooncake traces
    quantise time to ~3 s buckets; ``jitter_s`` > 0 adds seeded uniform
    jitter in ``[0, jitter_s)`` to every arrival (then re-sorts stably), which
    spreads each bucket's requests over the bucket when ``jitter_s`` equals its width.
    """
    _check_options(skip_bad_rows, zero_output)
    if not (math.isfinite(jitter_s) and jitter_s >= 0):
        raise ConfigError(f"jitter_s must be a number >= 0, got {jitter_s!r}")
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    trace = _load_mooncake_cached(*_file_key(path), sort, int(skip_bad_rows), zero_output, name or path.stem)
    if jitter_s > 0:
        rng = np.random.default_rng(seed)
        arrival = trace.arrival_s + rng.uniform(0.0, jitter_s, size=len(trace))
        order = np.argsort(arrival, kind="stable")
        return trace._take(order, f"uniform arrival jitter in [0, {jitter_s:g}) s (seed {seed})", arrival_s=arrival[order])
    return trace


@functools.lru_cache(maxsize=8)
def _load_mooncake_cached(path_s: str, _mtime: int, _size: int, sort: bool, skip_bad_rows: int,
                          zero_output: str, name: str) -> Trace:
    path = Path(path_s)
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise TraceError(f"{path}: empty trace (no requests)")
    n = len(lines)
    checker = _RowChecker(path, n, line_offset=0)
    ts = np.full(n, np.nan)
    tok: dict[str, list[Any]] = {"input_length": [None] * n, "output_length": [None] * n}
    hashes: list[np.ndarray | None] = [None] * n
    not_json = np.zeros(n, dtype=bool)
    missing = {f: np.zeros(n, dtype=bool) for f in (*MOONCAKE_FIELDS, "hash_ids")}
    bad_hash = np.zeros(n, dtype=bool)
    raw_ts: list[Any] = [None] * n
    raw_hash: list[Any] = [None] * n
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError
        except ValueError:
            not_json[i] = True
            continue
        for f in MOONCAKE_FIELDS:
            if f not in rec:
                missing[f][i] = True
        t = rec.get("timestamp")
        raw_ts[i] = t
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            ts[i] = t
        tok["input_length"][i] = rec.get("input_length")
        tok["output_length"][i] = rec.get("output_length")
        h = rec.get("hash_ids")
        raw_hash[i] = h
        if h is None:
            missing["hash_ids"][i] = True
        else:
            arr = np.asarray(h) if isinstance(h, list) else np.empty((0, 0))
            if arr.size == 0 and arr.ndim == 1:
                hashes[i] = np.empty(0, dtype=np.uint64)
            elif arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr.dtype.kind == "i" and arr.min() < 0):
                bad_hash[i] = True  # floats, strings, nested lists, negatives; ids up to 2**64-1 are fine
            else:
                hashes[i] = arr.astype(np.uint64)
    checker.flag(not_json, "(line)", "not a JSON object", lines)
    for f in MOONCAKE_FIELDS:
        checker.flag(missing[f], f, "missing", None)
    checker.flag(~missing["timestamp"] & ~np.isfinite(ts), "timestamp", "expected a number of milliseconds", raw_ts)
    checker.flag(np.isfinite(ts) & (ts < 0), "timestamp", "must be >= 0 ms", raw_ts)
    has_hashes = not missing["hash_ids"][~not_json].all()
    if has_hashes:
        checker.flag(missing["hash_ids"] & ~not_json, "hash_ids", "missing (other rows have prefix hashes)", None)
        checker.flag(bad_hash, "hash_ids", "expected a list of integers >= 0", raw_hash)

    def tokens(field: str) -> pd.Series:
        return pd.Series(tok[field], dtype=object)

    skip_missing = missing["input_length"] | not_json
    inp, _ = _token_column(tokens("input_length").where(~skip_missing, 1), "input_length", checker)
    skip_missing = missing["output_length"] | not_json
    out, zero = _token_column(tokens("output_length").where(~skip_missing, 1), "output_length", checker,
                              allow_zero_as_one=zero_output == "as_one")
    notes: list[str] = []
    keep = checker.resolve(skip_bad_rows, notes)
    if not keep.any():
        raise TraceError(f"{path}: empty trace (all {n} rows are bad)")
    rows = np.flatnonzero(keep)
    arrival, inp, out, zero = ts[keep] / 1000.0, inp[keep], out[keep], zero[keep]
    if zero.any():
        notes.append(f"{int(zero.sum())} requests with output_length = 0 counted as 1 output token (zero_output='as_one')")
        out = np.where(zero, 1, out)
    kept_hashes = [hashes[i] for i in rows] if has_hashes else None
    if kept_hashes is not None:
        expected = -(-inp // MOONCAKE_BLOCK_TOKENS)
        got = np.fromiter((len(h) for h in kept_hashes), dtype=np.int64, count=len(kept_hashes))
        off = int((got != expected).sum())
        if off:
            notes.append(f"{off} requests have len(hash_ids) != ceil(input_length / {MOONCAKE_BLOCK_TOKENS})")
    order = _order(arrival, rows, checker, "timestamp", sort, notes)
    if order is not None:
        arrival, inp, out = arrival[order], inp[order], out[order]
        if kept_hashes is not None:
            kept_hashes = [kept_hashes[i] for i in order]
    return Trace(
        arrival, inp, out, name=name, source=str(path), prefix_hashes=kept_hashes,
        prefix_block_tokens=MOONCAKE_BLOCK_TOKENS if kept_hashes is not None else None, notes=tuple(notes),
    )


# ------------------------------------------------------------- length pools
def load_length_pool(path: str | Path, *, skip_bad_rows: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(input_tokens, output_tokens, notes) from a ``num_prefill_tokens, num_decode_tokens`` CSV."""
    _check_options(skip_bad_rows, "error")
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    return _load_pool_cached(*_file_key(path), int(skip_bad_rows))


@functools.lru_cache(maxsize=8)
def _load_pool_cached(path_s: str, _mtime: int, _size: int, skip_bad_rows: int):
    path = Path(path_s)
    frame = _read_csv(path)
    _require_columns(frame, path, POOL_COLUMNS, "length-pool")
    if len(frame) == 0:
        raise TraceError(f"{path}: empty length pool (header only)")
    checker = _RowChecker(path, len(frame), line_offset=1)
    _flag_blank_and_missing(frame, POOL_COLUMNS, checker)
    inp, _ = _token_column(frame["num_prefill_tokens"], "num_prefill_tokens", checker)
    out, _ = _token_column(frame["num_decode_tokens"], "num_decode_tokens", checker)
    notes: list[str] = []
    keep = checker.resolve(skip_bad_rows, notes)
    if not keep.any():
        raise TraceError(f"{path}: empty length pool (all {len(frame)} rows are bad)")
    inp, out = inp[keep], out[keep]
    inp.setflags(write=False)
    out.setflags(write=False)
    return inp, out, tuple(notes)


def length_pool_trace(
    path: str | Path, arrival: ArrivalProcess | str, *, n: int | None = None, duration_s: float | None = None,
    seed: int = 0, order: Literal["shuffle", "file"] = "shuffle", skip_bad_rows: int = 0, name: str | None = None,
) -> Trace:
    """Lengths from a pool CSV, arrivals from ``arrival`` (a process or a spec like ``poisson:3``).

    Give ``n`` requests or ``duration_s``. ``order="shuffle"`` walks seeded
    permutations of the pool (a new one for each pass), ``"file"`` takes rows
    in file order; either way the pool is reused cyclically when more
    requests are needed than it holds (recorded in notes).
    """
    process = parse_arrival(arrival) if isinstance(arrival, str) else arrival
    if order not in ("shuffle", "file"):
        raise ConfigError(f"order must be 'shuffle' or 'file', got {order!r}")
    path = Path(path)
    inp_pool, out_pool, pool_notes = load_length_pool(path, skip_bad_rows=skip_bad_rows)
    rng = np.random.default_rng(seed)
    times = process.sample(rng, n=n, duration_s=duration_s)
    count, size = len(times), len(inp_pool)
    if count == 0:
        raise TraceError(f"{path}: arrival process {process.describe()} produced no requests; raise the rate or duration")
    passes = -(-count // size)
    if order == "shuffle":
        index = np.concatenate([rng.permutation(size) for _ in range(passes)])[:count]
    else:
        index = np.arange(count) % size
    notes = [*pool_notes, f"lengths from {size}-entry pool ({order}, seed {seed}), arrivals {process.describe()}"]
    if passes > 1:
        notes.append(f"pool reused cyclically: {count} requests from {size} entries")
    return Trace(times, inp_pool[index], out_pool[index], name=name or path.stem,
                 source=f"{path} + {process.describe()}", notes=tuple(notes))


# --------------------------------------------------------- format detection
def detect_format(path: str | Path) -> Literal["azure", "mooncake", "length_pool"]:
    """Format of a trace file, from its header (CSV) or first record (JSONL)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = ""
        for line in fh:
            if line.strip():
                first = line.strip()
                break
    if not first:
        raise TraceError(f"{path}: empty trace file")
    if first.startswith("{"):
        return "mooncake"
    header = [c.strip().strip('"') for c in first.split(",")]
    if all(c in header for c in AZURE_COLUMNS):
        return "azure"
    if all(c in header for c in POOL_COLUMNS):
        return "length_pool"
    raise TraceError(
        f"{path}: line 1: unrecognised trace format (header {header[:6]}); expected an Azure CSV "
        f"({', '.join(AZURE_COLUMNS)}), a length pool ({', '.join(POOL_COLUMNS)}) or Mooncake JSONL"
    )


# -------------------------------------------------------------- front door
def _call_with(func: Callable[..., Trace], what: str, *args: Any, **opts: Any) -> Trace:
    params = inspect.signature(func).parameters
    unknown = [k for k in opts if k not in params]
    if unknown:
        valid = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
        raise ConfigError(f"{what}: unknown option{'s' if len(unknown) > 1 else ''} {unknown} (valid: {valid})")
    return func(*args, **opts)


def load_trace(name_or_path: str | Path, *, seed: int = 0, **opts: Any) -> Trace:
    """Load a bundled trace by name, or a trace file by path (format detected).

    Names: ``azure-conv``, ``azure-code``, ``mooncake-synthetic``,
    ``servegen:m-large|m-small|mm-image`` (options of ``servegen_trace``; give
    ``target_rps`` or ``rate_scale``), ``sharegpt`` / ``arxiv`` (length pools:
    need ``arrival=`` and ``n=`` or ``duration_s=``).

    For timestamped traces, ``arrival=`` (a spec such as ``"poisson:3"``)
    replaces the arrival times, keeping lengths (see ``Trace.with_arrivals``;
    ``duration_s=`` then sets the span). Other options go to the loader.
    """
    key = str(name_or_path)
    if key.startswith("servegen:"):
        from oserve_rl.workload.servegen import servegen_trace

        return _call_with(servegen_trace, key, key.split(":", 1)[1], seed=seed, **opts)
    if key in _BUNDLED_FILES:
        path, fmt = bundled_path(key), ("length_pool" if key in ("sharegpt", "arxiv") else None)
        opts.setdefault("name", key)
    else:
        path = Path(key).expanduser()
        if not path.is_file():
            if path.suffix or "/" in key or "\\" in key:
                raise TraceError(f"{path}: no such trace file")
            raise UnknownNameError("trace", key, TRACE_NAMES)
        fmt = None
    fmt = fmt or detect_format(path)
    if fmt == "length_pool":
        if "arrival" not in opts:
            raise ConfigError(f"trace {key!r} has lengths only: give arrival= (e.g. 'poisson:3') and n= or duration_s=")
        if "n" not in opts and "duration_s" not in opts:
            raise ConfigError(f"trace {key!r} has lengths only: give n= (requests) or duration_s= with arrival=")
        return _call_with(length_pool_trace, key, path, seed=seed, **opts)
    arrival = opts.pop("arrival", None)
    duration_s = opts.pop("duration_s", None)
    if fmt == "mooncake":
        trace = _call_with(load_mooncake, key, path, seed=seed, **opts)
    else:
        trace = _call_with(load_azure, key, path, **opts)
    if arrival is not None:
        trace = trace.with_arrivals(arrival, seed=seed, duration_s=duration_s)  # a spec string or a process
    elif duration_s is not None:
        raise ConfigError(f"{key}: duration_s only applies together with arrival= (use Trace.slice to cut a real trace)")
    return trace


def trace_names() -> tuple[str, ...]:
    """Names ``load_trace`` accepts besides file paths."""
    return TRACE_NAMES


@functools.lru_cache(maxsize=16)
def trace_span_s(name: str) -> float:
    """``load_trace(name).duration_s``, memoised: the span episodes are drawn from and windows checked
    against (the env draws a window per reset; train.py and evaluate.py check windows before they run)."""
    trace = load_trace(name)
    if len(trace) == 0:
        raise TraceError(f"trace {name!r} has no requests")
    return trace.duration_s
