"""The request trace: parallel numpy arrays sorted by arrival time.

A ``Trace`` is immutable; every transformation returns a new one and appends a
line to ``notes`` so that what was done to a real trace (sorted, rows skipped,
rescaled, arrivals replaced) travels with it into results.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from oserve_rl.errors import ConfigError, TraceError

if TYPE_CHECKING:
    from oserve_rl.workload.arrivals import ArrivalProcess

# ServeGen's thresholds for "long" requests (servegen_model_6h_mix_train.csv),
# reused so that composition statistics are comparable across traces.
LONG_INPUT_TOKENS = 1073
LONG_OUTPUT_TOKENS = 208


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value: object) -> bool:
    """An int (or numpy integer), or a float holding a whole number; never a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()


def _token_array(name: str, field_name: str, values: object) -> np.ndarray:
    """``values`` as int64, refusing fractions, NaN/inf and non-numbers instead of truncating them."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.dtype.kind != "f":
        raise TraceError(f"trace {name!r}: {field_name} must hold whole numbers of tokens, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr) | (arr != np.floor(arr)) if arr.size else np.zeros(arr.shape, dtype=bool)
    if bad.any():
        i = np.flatnonzero(bad.ravel())[0]
        raise TraceError(
            f"trace {name!r}: {field_name} must hold whole numbers of tokens; {field_name}[{i}] is {float(arr.ravel()[i])!r}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _hash_array(name: str, i: int, values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return arr
    if arr.size and arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr) & (arr == np.floor(arr))):
            raise TraceError(f"trace {name!r}: prefix_hashes[{i}] must hold whole-number hashes, got {values!r}")
    elif arr.size and arr.dtype.kind not in "iu":
        raise TraceError(f"trace {name!r}: prefix_hashes[{i}] must hold whole-number hashes, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise TraceError(f"trace {name!r}: prefix_hashes[{i}] holds a negative hash; hashes are uint64 (>= 0)")
    return np.asarray(arr, dtype=np.uint64)


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests as parallel arrays, sorted by ``arrival_s`` (non-decreasing).

    ``arrival_s`` is seconds from the trace's own start (the first arrival may be
    later than 0). ``prefix_hashes`` holds, per request, the uint64 hashes of its
    prompt's ``prefix_block_tokens``-token blocks, where equal hashes at equal
    positions mean an identical prefix (Mooncake's ``hash_ids`` convention); it
    is None for traces without prefix information.
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str
    source: str
    prefix_hashes: list[np.ndarray] | None = None
    prefix_block_tokens: int | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        arrival = np.ascontiguousarray(self.arrival_s, dtype=np.float64)
        inp = _token_array(self.name, "input_tokens", self.input_tokens)
        out = _token_array(self.name, "output_tokens", self.output_tokens)
        n = len(arrival)
        if arrival.ndim != 1 or len(inp) != n or len(out) != n:
            raise TraceError(
                f"trace {self.name!r}: arrival_s, input_tokens and output_tokens must be 1-D and equally long "
                f"(got {arrival.shape}, {inp.shape}, {out.shape})"
            )
        if n and not np.all(np.isfinite(arrival)):
            raise TraceError(f"trace {self.name!r}: arrival_s has non-finite values")
        if n > 1 and np.any(np.diff(arrival) < 0):
            i = int(np.argmax(np.diff(arrival) < 0)) + 1
            raise TraceError(f"trace {self.name!r}: arrival_s must be sorted; request {i} arrives before request {i - 1}")
        if n and (inp.min() <= 0 or out.min() <= 0):
            raise TraceError(f"trace {self.name!r}: input_tokens and output_tokens must be > 0")
        for a in (arrival, inp, out):
            a.setflags(write=False)
        object.__setattr__(self, "arrival_s", arrival)
        object.__setattr__(self, "input_tokens", inp)
        object.__setattr__(self, "output_tokens", out)
        object.__setattr__(self, "notes", tuple(self.notes))
        if self.prefix_hashes is not None:
            if len(self.prefix_hashes) != n:
                raise TraceError(f"trace {self.name!r}: prefix_hashes has {len(self.prefix_hashes)} entries for {n} requests")
            if not (_is_whole(self.prefix_block_tokens) and self.prefix_block_tokens > 0):
                raise TraceError(
                    f"trace {self.name!r}: prefix_hashes given without a positive whole-number prefix_block_tokens "
                    f"(got {self.prefix_block_tokens!r})"
                )
            hashes = [_hash_array(self.name, i, h) for i, h in enumerate(self.prefix_hashes)]
            object.__setattr__(self, "prefix_hashes", hashes)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.arrival_s)

    def __repr__(self) -> str:
        return (
            f"Trace(name={self.name!r}, requests={len(self)}, duration_s={self.duration_s:.1f}, "
            f"prefix={'yes' if self.prefix_hashes is not None else 'no'})"
        )

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival (0 for fewer than two requests)."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def mean_rate_rps(self) -> float:
        """Requests per second over the span between first and last arrival."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("nan")

    def _replace(self, note: str | None = None, **changes: object) -> Trace:
        notes = self.notes + ((note,) if note else ())
        return dataclasses.replace(self, notes=notes, **changes)

    def _take(self, index: np.ndarray | slice, note: str | None, arrival_s: np.ndarray | None = None) -> Trace:
        """Requests at ``index`` (in that order), optionally with new arrival times."""
        hashes = None
        if self.prefix_hashes is not None:
            if isinstance(index, slice):
                hashes = self.prefix_hashes[index]
            else:
                hashes = [self.prefix_hashes[i] for i in index]
        return self._replace(
            note,
            arrival_s=self.arrival_s[index] if arrival_s is None else arrival_s,
            input_tokens=self.input_tokens[index],
            output_tokens=self.output_tokens[index],
            prefix_hashes=hashes,
        )

    # -------------------------------------------------------- transformations
    def head(self, n: int) -> Trace:
        """The first ``n`` requests (all of them if the trace is shorter)."""
        if not (isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0):
            raise ConfigError(f"head(n): n must be a whole number of requests >= 0, got {n!r}")
        return self._take(slice(0, n), f"head({n})")

    def fitting(self, max_tokens: int) -> Trace:
        """The requests whose prompt + output fit in ``max_tokens`` (a model's context): the others are
        rejected on arrival whatever serves them."""
        if not max_tokens >= 2:
            raise ConfigError(f"fitting(max_tokens): need at least 2 tokens (1 prompt + 1 output), got {max_tokens!r}")
        keep = np.flatnonzero(self.input_tokens + self.output_tokens <= max_tokens)
        return self._take(keep, f"fitting({max_tokens}): dropped {len(self) - len(keep)}")

    def slice(self, start_s: float, end_s: float, *, rebase: bool = False) -> Trace:
        """Requests arriving in ``[start_s, end_s)``.

        Times stay absolute (so window boundaries of the original trace still
        line up) unless ``rebase=True``, which subtracts ``start_s``.
        """
        for arg, v in (("start_s", start_s), ("end_s", end_s)):
            if not (_is_real(v) and not math.isnan(v)):
                raise ConfigError(f"slice: {arg} must be a number of seconds, got {v!r}")
        if not math.isfinite(start_s):
            raise ConfigError(f"slice: start_s must be finite, got {start_s!r}")
        if not end_s > start_s:
            raise ConfigError(f"slice: end_s ({end_s}) must be greater than start_s ({start_s})")
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        out = self._take(slice(int(lo), int(hi)), f"slice({start_s:g}, {end_s:g})")
        return out.rebase(start_s) if rebase else out

    def rebase(self, origin_s: float | None = None) -> Trace:
        """Shift times so that ``origin_s`` (default: the first arrival) becomes 0."""
        if origin_s is None:
            origin_s = float(self.arrival_s[0]) if len(self) else 0.0
        elif not (_is_real(origin_s) and math.isfinite(origin_s)):
            raise ConfigError(f"rebase: origin_s must be a finite number of seconds or None, got {origin_s!r}")
        if len(self) and self.arrival_s[0] < origin_s:
            raise ConfigError(f"rebase: origin_s {origin_s:g} is after the first arrival {self.arrival_s[0]:g}")
        return self._replace(f"rebase({origin_s:g})", arrival_s=self.arrival_s - origin_s)

    def scale_rate(self, factor: float) -> Trace:
        """Compress time by ``factor``: factor > 1 means more load (arrival_s / factor)."""
        if not (_is_real(factor) and np.isfinite(factor) and factor > 0):
            raise ConfigError(f"scale_rate: factor must be a positive number, got {factor!r}")
        return self._replace(f"scale_rate({factor:g})", arrival_s=self.arrival_s / factor)

    def scale_load(self, factor: float, *, seed: int = 0, jitter_s: float = 30.0) -> Trace:
        """``factor`` times the load over the same span, keeping how the mix moves in time.

        ``scale_rate`` compresses time, which also compresses the minutes-long
        shifts of the type mix that a deployment scheduler reacts to. Here each
        request instead appears ``floor(factor)`` times, plus once more with
        probability ``frac(factor)`` (so factor < 1 thins the trace); copies
        other than the original are shifted by uniform jitter in
        ``[-jitter_s, jitter_s]`` so they do not arrive in lockstep. Seeded.
        """
        if not (_is_real(factor) and np.isfinite(factor) and factor > 0):
            raise ConfigError(f"scale_load: factor must be a positive number, got {factor!r}")
        if not (_is_real(jitter_s) and np.isfinite(jitter_s) and jitter_s >= 0):
            raise ConfigError(f"scale_load: jitter_s must be >= 0, got {jitter_s!r}")
        if factor == 1.0 or len(self) == 0:
            return self
        rng = np.random.default_rng(seed)
        n = len(self)
        copies = np.full(n, int(factor)) + (rng.random(n) < factor - int(factor))
        index = np.repeat(np.arange(n), copies)
        first = np.ones(len(index), dtype=bool)
        first[1:] = index[1:] != index[:-1]
        shift = np.where(first, 0.0, rng.uniform(-jitter_s, jitter_s, len(index)))
        lo = float(self.arrival_s[0])
        arrival = np.maximum(self.arrival_s[index] + shift, lo)
        order = np.argsort(arrival, kind="stable")
        return self._take(index[order], f"scale_load({factor:g}, seed={seed}, jitter_s={jitter_s:g})",
                          arrival_s=arrival[order])

    def with_arrivals(self, process: ArrivalProcess, *, seed: int = 0, duration_s: float | None = None) -> Trace:
        """Keep the request lengths (and prefixes), replace the arrival times.

        Without ``duration_s`` every request gets a new arrival time from
        ``process`` in its original order. With ``duration_s`` the process runs
        for that long: requests are truncated if fewer are needed, and reused
        cyclically (in order, recorded in ``notes``) if more are needed.
        """
        if isinstance(process, str):
            from oserve_rl.workload.arrivals import parse_arrival

            process = parse_arrival(process)
        elif not (callable(getattr(process, "sample", None)) and callable(getattr(process, "describe", None))):
            raise ConfigError(
                "with_arrivals: process must be an arrival process (Poisson, GammaArrivals, Diurnal) or a spec "
                f"string such as 'poisson:3', got {process!r}"
            )
        if len(self) == 0:
            raise TraceError(f"trace {self.name!r} is empty; nothing to re-time")
        rng = np.random.default_rng(seed)
        if duration_s is None:
            arrival = process.sample(rng, n=len(self))
            return self._replace(f"arrivals replaced by {process.describe()} (seed {seed})", arrival_s=arrival)
        arrival = process.sample(rng, duration_s=duration_s)
        n = len(arrival)
        index = np.arange(n) % len(self)
        note = f"arrivals replaced by {process.describe()} over {duration_s:g} s (seed {seed}): {n} requests"
        if n > len(self):
            note += f"; lengths reused cyclically ({n / len(self):.2f} passes over {len(self)} requests)"
        return self._take(index, note, arrival_s=arrival)

    # ------------------------------------------------------------- inspection
    def to_frame(self) -> pd.DataFrame:
        """One row per request: arrival_s, input_tokens, output_tokens (+ prefix_blocks)."""
        frame = pd.DataFrame(
            {"arrival_s": self.arrival_s, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        )
        if self.prefix_hashes is not None:
            frame["prefix_blocks"] = np.fromiter((len(h) for h in self.prefix_hashes), dtype=np.int64, count=len(self))
        return frame

    def window_stats(
        self,
        window_s: float = 600.0,
        *,
        long_input_tokens: int = LONG_INPUT_TOKENS,
        long_output_tokens: int = LONG_OUTPUT_TOKENS,
    ) -> pd.DataFrame:
        """Composition per ``window_s`` window, aligned to t = 0 of the trace clock.

        Columns: window_start_s, count, rate_rps, input_mean/p50/p99,
        output_mean/p50/p99, share_long_input, share_long_output (shares of
        requests above the thresholds; defaults are ServeGen's). Empty windows
        between the first and last arrival are kept with count 0 and NaN stats.
        """
        if not (_is_real(window_s) and math.isfinite(window_s) and window_s > 0):
            raise ConfigError(f"window_stats: window_s must be a finite number of seconds > 0, got {window_s!r}")
        columns = [
            "window_start_s", "count", "rate_rps", "input_mean", "input_p50", "input_p99",
            "output_mean", "output_p50", "output_p99", "share_long_input", "share_long_output",
        ]  # fmt: skip
        if len(self) == 0:
            return pd.DataFrame(columns=columns)
        window = np.floor(self.arrival_s / window_s).astype(np.int64)
        frame = pd.DataFrame(
            {
                "w": window,
                "i": self.input_tokens,
                "o": self.output_tokens,
                "li": self.input_tokens > long_input_tokens,
                "lo": self.output_tokens > long_output_tokens,
            }
        )
        g = frame.groupby("w", sort=True)
        stats = pd.DataFrame(
            {
                "count": g.size(),
                "input_mean": g["i"].mean(),
                "input_p50": g["i"].quantile(0.5),
                "input_p99": g["i"].quantile(0.99),
                "output_mean": g["o"].mean(),
                "output_p50": g["o"].quantile(0.5),
                "output_p99": g["o"].quantile(0.99),
                "share_long_input": g["li"].mean(),
                "share_long_output": g["lo"].mean(),
            }
        )
        stats = stats.reindex(np.arange(window[0], window[-1] + 1))
        stats["count"] = stats["count"].fillna(0).astype(np.int64)
        stats["rate_rps"] = stats["count"] / window_s
        stats["window_start_s"] = stats.index.to_numpy() * window_s
        return stats.reset_index(drop=True)[columns]


# ----------------------------------------------------------- shared prefixes
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Stateless 64-bit mixer: distinct inputs give (practically) distinct, stable hashes."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _block_hashes(namespace: int, owner: np.ndarray, block: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(namespace) ^ _splitmix64(owner.astype(np.uint64)))
        return _splitmix64(key ^ block.astype(np.uint64))


def assign_prefix_groups(
    trace: Trace,
    group_prefix_tokens: Sequence[int],
    *,
    weights: Sequence[float] | None = None,
    share: float = 1.0,
    block_tokens: int = 512,
    prepend: bool = True,
    seed: int = 0,
) -> Trace:
    """Give requests shared system prompts so a prefix cache can reuse blocks.

    Each request joins prompt group ``g`` (probability ``weights[g]``, uniform by
    default) with probability ``share``, otherwise it shares nothing. Group ``g``
    has a ``group_prefix_tokens[g]``-token prompt. With ``prepend=True`` that
    prompt is added in front of the request (input_tokens grows by it); with
    ``prepend=False`` it is taken to be already inside the input, so only the
    whole blocks that fit are shared. Only full ``block_tokens`` blocks of the
    prompt are shared (as in vLLM's block-level prefix caching); the remaining
    blocks get hashes unique to the request. Hashes depend only on (group,
    block) and (seed, request, block), so reruns are identical.
    """
    prompt = np.asarray(group_prefix_tokens, dtype=np.int64)
    if prompt.ndim != 1 or len(prompt) == 0 or prompt.min() < 0:
        raise ConfigError(f"group_prefix_tokens must be a non-empty list of token counts >= 0, got {group_prefix_tokens!r}")
    if block_tokens <= 0:
        raise ConfigError(f"block_tokens must be > 0, got {block_tokens}")
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"share must be in [0, 1], got {share}")
    if weights is None:
        p = np.full(len(prompt), 1.0 / len(prompt))
    else:
        p = np.asarray(weights, dtype=np.float64)
        if p.shape != prompt.shape or p.min() < 0 or p.sum() <= 0:
            raise ConfigError(f"weights must be {len(prompt)} non-negative numbers with a positive sum, got {weights!r}")
        p = p / p.sum()
    n = len(trace)
    rng = np.random.default_rng(seed)
    group = rng.choice(len(prompt), size=n, p=p)
    grouped = rng.random(n) < share
    prompt_tokens = np.where(grouped, prompt[group], 0)
    inp = trace.input_tokens + prompt_tokens if prepend else trace.input_tokens
    shared_blocks = np.minimum(prompt_tokens, inp) // block_tokens
    total_blocks = -(-inp // block_tokens)

    # One flat array of all blocks, then split per request: vectorised for 1e5+ requests.
    owner = np.repeat(np.arange(n), total_blocks)
    pos = np.arange(total_blocks.sum()) - np.repeat(np.cumsum(total_blocks) - total_blocks, total_blocks)
    is_shared = pos < np.repeat(shared_blocks, total_blocks)
    flat = np.where(
        is_shared,
        _block_hashes(0x5EED0001, np.repeat(group, total_blocks), pos),
        _block_hashes((0x5EED0002 ^ (seed << 20)) & 0xFFFFFFFFFFFFFFFF, owner, pos),
    )
    hashes = np.split(flat, np.cumsum(total_blocks)[:-1])
    note = (
        f"prefix groups: {len(prompt)} prompts of {list(map(int, prompt))} tokens, share {share:g}, "
        f"{'prepended' if prepend else 'inside input'}, {block_tokens}-token blocks (seed {seed}); "
        f"{int(grouped.sum())}/{n} requests grouped"
    )
    if trace.prefix_hashes is not None:
        note += "; replaced the trace's own prefix hashes"
    return trace._replace(note, input_tokens=inp, prefix_hashes=hashes, prefix_block_tokens=block_tokens)
