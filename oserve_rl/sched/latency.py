"""A tail-latency proxy for a dispatch, and the partitioned dispatches OServe ranks with it.

The load-scale LP (``dispatch.py``) sees each replica as a pool of busy time:
type ``j`` uses ``x_kj / n_kj`` of replica ``k`` whatever else runs there. That
is right for throughput and blind to latency. With chunked prefill, every
iteration of a replica carries one token of each decoding sequence *and* up to
``max_num_batched_tokens`` prompt tokens, so the prompts routed to a replica
set the time per output token (TPOT) of everything decoding on it: Llama-2-70B
on one TP4 H100 replica decodes 64 sequences in ~26 ms, but an iteration that
also carries a full 2,048-token chunk takes ~175 ms. A long-output request
that shares its replica with prompt-heavy types (Azure code: 54 % of requests
are 2,000-token prompts with 12-token outputs) decodes at the prompt-heavy
types' pace; moved to replicas that serve only decode-heavy types, it decodes
at the pure-decode pace. Which types share a replica matters for the p99,
not for the load scale.

``replica_latency`` (steady state of one replica under rates ``x[j]``):

    P  = sum_j x_j in_j                         prompt tokens/s
    B  = sum_j x_j out_j * TPOT                 sequences decoding (Little's law)
    T  = iteration with B decode tokens + a full chunk of (budget - B) prompt tokens
    d  = pure decode iteration of B sequences
    f  = P * T / (budget - B)                   share of time in prompt-carrying iterations (< 1)
    TPOT = 1 / (f / T + (1 - f) / d)            one token per decoding sequence per iteration
    TTFT_j = in_j * T / (budget - B)  +  f / (1 - f) * T / (budget - B) * E[in^2] / E[in] / 2   (M/G/1 wait)

solved as a fixed point in TPOT (B depends on it). ``inf`` when the replica
saturates (``f >= 1``) or its decode batch does not fit the KV pool or
``max_num_seqs``.

``p99_e2e_s`` (the proxy): output lengths of type ``j`` are taken as
log-normal, with the log-mean of the typer's k-means centre and the spread that
makes its mean the type's mean output (``sigma^2 = 2 ln(mean / geometric
mean)``: the typer's centres are means of log lengths); a request of type ``j``
on replica ``k`` finishes after ``TTFT_kj + out * TPOT_k``. The proxy is the
0.99 quantile of that mixture (requests weighted by ``x``), by bisection. On
the four Azure scenarios of docs/oserve.md the log-normal p99 of the types'
outputs is within 0.5-2x of the measured one; its ranking of deployments and
dispatches at the busiest minute's rates matched the simulator's in the
cases checked there (it misses queueing in sub-minute bursts, which is why
OServe checks capacity with the load-scale LP and its headroom first).

``partition_candidates``: OServe's paper routes with the max-flow LP, whose
optimum is a vertex: it tends to give each type its own few replicas, but
*which* vertex is arbitrary when the demand fits with room to spare (the LP is
degenerate). Our reading (the paper is silent): rank the dispatches by the
proxy. The candidates are the balanced LP dispatch (every replica open to every
type it runs) and every *partition*: the ``t`` types with the longest tail
outputs (log-normal p99) go to one side, the rest to the other, and each
config group of the deployment is split between the sides in every way
(``count_g + 1`` ways per group); the LP then routes within the sides.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from oserve_rl.cluster import ReplicaConfig
from oserve_rl.errors import ConfigError
from oserve_rl.perf import EngineConfig
from oserve_rl.perf.kernel import IterationCost

Z99 = 2.3263478740408408  # standard normal 0.99 quantile
SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)
KV_OUTPUT_SHARE = 0.75  # as in profiles.py: a request holds in + 0.75 out tokens of KV on average under preemption
MAX_SPLITS = 512  # partitions per type split: product of (count + 1) over config groups, beyond which groups are thinned


# --------------------------------------------------------------------------- output-length spread per type


@dataclass(frozen=True)
class OutputSpread:
    """Log-normal output lengths per type: ``log out ~ N(mu[j], sigma[j]^2)``."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def from_means(cls, mean_out: Sequence[float], center_out: Sequence[float],
                   sigma_range: tuple[float, float] = (0.05, 2.0)) -> OutputSpread:
        """From each type's mean output and its geometric mean (the typer's centre, ``exp`` of the log-mean).

        ``mean / geometric mean = exp(sigma^2 / 2)`` for a log-normal. ``sigma_range`` clips it: a type whose
        mean is below its centre (another window's means) still gets some spread, and no type an absurd one.
        """
        mean = np.asarray(mean_out, dtype=float)
        center = np.asarray(center_out, dtype=float)
        if mean.shape != center.shape or mean.ndim != 1 or not mean.size:
            raise ConfigError(f"OutputSpread: mean_out and center_out must be equal-length 1-d, got {mean.shape} "
                              f"and {center.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(center).all() and (mean > 0).all() and (center > 0).all()):
            raise ConfigError(f"OutputSpread: lengths must be finite and > 0, got mean {mean.tolist()}, "
                              f"centre {center.tolist()}")
        sigma = np.sqrt(2.0 * np.log(np.maximum(mean / center, 1.0)))
        mu, sigma = np.log(center), np.clip(sigma, *sigma_range)
        mu.setflags(write=False)
        sigma.setflags(write=False)
        return cls(mu, sigma)

    def quantile(self, q: float = 0.99) -> np.ndarray:
        """Output tokens at quantile ``q`` of each type (``q`` = 0.99 only; the proxy's tail)."""
        if q != 0.99:
            raise ConfigError(f"OutputSpread.quantile: only q = 0.99 is supported, got {q!r}")
        return np.exp(self.mu + Z99 * self.sigma)


# --------------------------------------------------------------------------- one replica


def replica_latency(config: ReplicaConfig, engine: EngineConfig, rates_rps: np.ndarray, input_tokens: np.ndarray,
                    output_tokens: np.ndarray, iterations: int = 30) -> tuple[float, np.ndarray]:
    """(TPOT s, TTFT s per type) of one replica of ``config`` serving ``rates_rps[j]`` of each type (module doc).

    ``inf`` everywhere when it saturates; ``(0, zeros)`` when it serves nothing.
    """
    x = np.asarray(rates_rps, dtype=float)
    inp, out = np.maximum(np.asarray(input_tokens, float), 1.0), np.maximum(np.asarray(output_tokens, float), 1.0)
    if x.shape != inp.shape or x.shape != out.shape:
        raise ConfigError(f"replica_latency: rates, input_tokens and output_tokens must have one entry per type, got "
                          f"shapes {x.shape}, {inp.shape}, {out.shape}")
    perf = config.perf()
    tpot, ttft = _replica_lists(perf.cost, float(perf.kv_capacity_tokens(engine)), engine, x.tolist(), inp.tolist(),
                                out.tolist(), int(iterations))
    return tpot, np.array(ttft)


def _replica_lists(cost: IterationCost, kv_capacity_tokens: float, engine: EngineConfig, rates: list, inp: list,
                   out: list, iterations: int) -> tuple[float, list]:
    """``replica_latency`` on lists (``LatencyModel`` calls it with its per-config constants looked up once)."""
    if not sum(rates) > 0:
        return 0.0, [0.0] * len(rates)
    tpot, per_token_s, wait_s = steady_state(cost, rates, inp, out, int(engine.max_num_batched_tokens),
                                             int(engine.max_num_seqs), kv_capacity_tokens, iterations)
    if tpot == math.inf:
        return math.inf, [math.inf] * len(rates)
    return tpot, [wait_s + i * per_token_s for i in inp]


def steady_state(cost: IterationCost, x: list, inp: list, out: list, budget: int, max_num_seqs: int,
                 kv_capacity_tokens: float, iterations: int) -> tuple[float, float, float]:
    """``replica_latency``'s fixed point on plain lists (compiled where built: ``latency.pxd``):
    (TPOT s, prompt seconds per token, mean queueing wait s), TPOT ``inf`` when the replica saturates."""
    prompt_rate = prompt_sq = decode_rate = ctx_sum = kv_sum = 0.0
    for j in range(len(x)):
        xj = x[j]
        prompt_rate += xj * inp[j]
        prompt_sq += xj * inp[j] * inp[j]
        decode_rate += xj * out[j]
        ctx_sum += xj * out[j] * (inp[j] + out[j] / 2.0)
        kv_sum += xj * out[j] * (inp[j] + KV_OUTPUT_SHARE * out[j])
    e_in = prompt_sq / prompt_rate  # prompt-token-weighted prompt length
    ctx_per_seq = ctx_sum / decode_rate  # KV a decoding sequence attends to
    b_max = min(float(max_num_seqs), kv_capacity_tokens / (kv_sum / decode_rate))
    tpot = cost.iteration_s_agg(1, 1, 0.0, 1, max(int(ctx_per_seq), 1))
    t_chunk = 0.0
    f = 0.0
    for _ in range(iterations):
        b_seqs = decode_rate * tpot
        if b_seqs > b_max:
            return math.inf, math.inf, math.inf
        b = max(_round(b_seqs), 1)
        chunk = max(budget - b, 1)
        ctx = int(b_seqs * ctx_per_seq)
        t_chunk = cost.iteration_s_agg(budget, b + 1, chunk * (min(e_in, float(budget)) + 1.0) / 2.0, b, ctx)
        d = cost.iteration_s_agg(b, b, 0.0, b, ctx)
        f = prompt_rate * t_chunk / chunk
        if f >= 1.0:
            return math.inf, math.inf, math.inf
        new = 1.0 / (f / t_chunk + (1.0 - f) / d)
        if abs(new - tpot) <= 1e-7:
            tpot = new
            break
        tpot = 0.5 * (tpot + new)  # damped: B grows with TPOT and TPOT with B
    per_token = t_chunk / max(budget - max(_round(decode_rate * tpot), 1), 1)
    return tpot, per_token, f / (1.0 - f) * per_token * e_in / 2.0


def _round(v: float) -> int:
    """Nearest integer, halves to even (Python's ``round``, the same compiled or not)."""
    r = math.floor(v)
    diff = v - r
    if diff > 0.5 or (diff == 0.5 and r % 2 != 0):
        r += 1
    return int(r)


# --------------------------------------------------------------------------- the mixture's p99


def p99_e2e_s(share: np.ndarray, ttft_s: np.ndarray, tpot_s: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
              q: float = 0.99) -> float:
    """Quantile ``q`` of E2E over (replica, type) cells: a share ``share`` of the requests, TTFT ``ttft_s``,
    TPOT ``tpot_s`` and log-normal outputs (``mu``, ``sigma``) per cell (flat arrays of equal length)."""
    w = np.asarray(share, dtype=float)
    tt, tp = np.asarray(ttft_s, dtype=float), np.asarray(tpot_s, dtype=float)
    mu, sg = np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    keep = w > 0
    return _cells_quantile_s(w[keep].tolist(), tt[keep].tolist(), tp[keep].tolist(), mu[keep].tolist(),
                             sg[keep].tolist(), float(q))


def _cells_quantile_s(w: list, tt: list, tp: list, mu: list, sg: list, q: float) -> float:
    """``p99_e2e_s`` on lists of the cells with a positive share: 0 with none, inf if any time is infinite."""
    if not w:
        return 0.0
    for i in range(len(tt)):
        if not (math.isfinite(tt[i]) and math.isfinite(tp[i])):
            return math.inf
    return mixture_quantile_s(w, tt, tp, mu, sg, q)


def mixture_quantile_s(w: list, tt: list, tp: list, mu: list, sg: list, q: float) -> float:
    """``p99_e2e_s`` on plain lists of the cells with a positive share and finite times, by bisection
    (compiled where built: ``latency.pxd``). A request of cell i exceeds ``L`` s when its output is over
    ``(L - tt[i]) / tp[i]`` tokens: ``P = 1 - Phi(z) = erfc(z / sqrt 2) / 2`` for log-normal outputs."""
    n = len(w)
    total = 0.0
    for i in range(n):
        total += w[i]
    tail = (1.0 - q) * total  # shares need not sum to 1: compare against the tail of their total
    hi = 0.0
    for i in range(n):
        top = tt[i] + max(tp[i], 1e-9) * math.exp(mu[i] + 5.0 * sg[i])
        if top > hi:
            hi = top
    lo = 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        over = 0.0
        for i in range(n):
            room = (mid - tt[i]) / max(tp[i], 1e-9)  # output tokens that still finish within mid
            if room > 0:
                z = (math.log(max(room, 1e-12)) - mu[i]) / sg[i]
                over += w[i] * 0.5 * math.erfc(z * SQRT_HALF)
            else:
                over += w[i]
        if over > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-4 * hi:
            break
    return hi


def mean_e2e_s(share: np.ndarray, ttft_s: np.ndarray, tpot_s: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """Mean E2E over the same cells as ``p99_e2e_s`` (log-normal mean output: ``exp(mu + sigma^2 / 2)``)."""
    w = np.asarray(share, dtype=float)
    if not (w > 0).any():
        return 0.0
    e2e = np.asarray(ttft_s, float) + np.asarray(tpot_s, float) * np.exp(np.asarray(mu, float) + 0.5 * np.asarray(sigma, float) ** 2)
    keep = w > 0
    return float((w[keep] * e2e[keep]).sum() / w[keep].sum())


class LatencyModel:
    """The p99 proxy for dispatches over replicas of ``configs`` (memoised per (config, rates)).

    OServe scores ~30 dispatches per decision with it, so the per-call work runs on plain lists (compiled
    where built) and the per-config constants (cost kernel, KV capacity) are looked up once: the same
    arithmetic as ``replica_latency`` and ``p99_e2e_s``, without numpy on 5-element arrays.
    """

    def __init__(self, engine: EngineConfig, type_lengths: np.ndarray, spread: OutputSpread):
        tl = np.asarray(type_lengths, dtype=float)
        if tl.ndim != 2 or tl.shape[1] != 2 or tl.shape[0] != spread.mu.size:
            raise ConfigError(f"LatencyModel: type_lengths must be [types={spread.mu.size}, 2] (input, output), "
                              f"got shape {tl.shape}")
        self.engine, self.spread = engine, spread
        self.inp, self.out = np.maximum(tl[:, 0], 1.0), np.maximum(tl[:, 1], 1.0)
        self._inp, self._out = self.inp.tolist(), self.out.tolist()
        self._mu, self._sigma = spread.mu.tolist(), spread.sigma.tolist()
        self._memo: dict[tuple, tuple[float, list]] = {}
        self._configs: dict[ReplicaConfig, tuple[IterationCost, float]] = {}

    def replica(self, config: ReplicaConfig, rates_rps: np.ndarray) -> tuple[float, np.ndarray]:
        """(TPOT s, TTFT s per type) of one replica of ``config`` at ``rates_rps`` (``replica_latency``)."""
        tpot, ttft = self._replica(config, np.asarray(rates_rps, float).tolist())
        return tpot, np.array(ttft)

    def _replica(self, config: ReplicaConfig, rates: list) -> tuple[float, list]:
        # Key: the rates rounded to 1e-6 rps (np.round's rint(x * 1e6) / 1e6, which Python's round matches).
        key = (config, tuple([round(v * 1e6) / 1e6 for v in rates]))
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) > 50_000:
                self._memo.clear()
            hit = self._memo[key] = self._solve(config, rates)
        return hit

    def _solve(self, config: ReplicaConfig, rates: list) -> tuple[float, list]:
        consts = self._configs.get(config)
        if consts is None:
            perf = config.perf()
            consts = self._configs[config] = (perf.cost, float(perf.kv_capacity_tokens(self.engine)))
        return _replica_lists(consts[0], consts[1], self.engine, rates, self._inp, self._out, 30)

    def p99_s(self, configs: Sequence[ReplicaConfig], x_rps: np.ndarray, counts: Sequence[int] | None = None) -> float:
        """Proxy p99 E2E when each replica of row ``k`` (``counts[k]`` replicas of ``configs[k]``, default 1)
        serves ``x_rps[k, j]`` requests/s of type ``j``."""
        return _cells_quantile_s(*self._cells(configs, x_rps, counts), 0.99)

    def p99_and_mean_s(self, configs: Sequence[ReplicaConfig], x_rps: np.ndarray,
                       counts: Sequence[int] | None = None) -> tuple[float, float]:
        """``p99_s`` and the mean E2E of the same mixture (what ranks plans whose tails are served alike)."""
        cells = self._cells(configs, x_rps, counts)
        return _cells_quantile_s(*cells, 0.99), mean_e2e_s(*(np.array(c) for c in cells))

    def p99_and_mean_rows_s(self, configs: Sequence[ReplicaConfig], rows: list, counts: list) -> tuple[float, float]:
        """``p99_and_mean_s`` on plain lists, unchecked: ``rows[k][j] >= 0`` rates per replica of row ``k``,
        ``counts[k] >= 0``. What OServe's ranking calls for each of the ~40 dispatches it scores per decision,
        whose rates come from the LPs (clipped at 0), without re-checking and re-listing them."""
        cells = self._cells_lists(configs, rows, counts)
        return _cells_quantile_s(*cells, 0.99), mean_e2e_s(*(np.array(c) for c in cells))

    def _cells(self, configs, x_rps, counts) -> tuple[list, list, list, list, list]:
        """(share, TTFT, TPOT, mu, sigma) of every (row, type) cell with traffic."""
        x = np.asarray(x_rps, dtype=float)
        if x.shape != (len(configs), self.inp.size):
            raise ConfigError(f"LatencyModel.p99_s: x must be [rows={len(configs)}, types={self.inp.size}], "
                              f"got {x.shape}")
        cnt = np.ones(len(configs)) if counts is None else np.asarray(counts, dtype=float)
        if cnt.shape != (len(configs),) or (cnt < 0).any():
            raise ConfigError(f"LatencyModel.p99_s: counts must be {len(configs)} values >= 0, got {counts!r}")
        return self._cells_lists(configs, x.tolist(), cnt.tolist(), x.sum(axis=1).tolist())

    def _cells_lists(self, configs, rows: list, cnts: list, row_sums: list | None = None
                     ) -> tuple[list, list, list, list, list]:
        """``_cells`` on lists. Without ``row_sums`` the rates must be >= 0 (a row carries traffic iff an entry
        is positive, as its sum is then positive)."""
        mu, sigma = self._mu, self._sigma
        share, tt, tp, mus, sgs = [], [], [], [], []
        for k in range(len(rows)):
            row = rows[k]
            if not (cnts[k] > 0 and (row_sums[k] > 0 if row_sums is not None else max(row) > 0)):
                continue
            tpot, ttft = self._replica(configs[k], row)
            for j in range(len(row)):
                if row[j] > 0:
                    share.append(row[j] * cnts[k])
                    tt.append(ttft[j])
                    tp.append(tpot)
                    mus.append(mu[j])
                    sgs.append(sigma[j])
        return share, tt, tp, mus, sgs


# --------------------------------------------------------------------------- partitions


def tail_order(spread: OutputSpread) -> np.ndarray:
    """Type ids, longest tail output (log-normal p99) first: the order in which types join the decode side."""
    return np.argsort(-spread.quantile(0.99), kind="stable")


def partition_candidates(counts: Sequence[int], order: Sequence[int],
                         demanded: np.ndarray) -> Iterator[tuple[np.ndarray, tuple[int, ...]]]:
    """Every partition of types and replicas into two sides (module doc).

    Yields ``(side0, split)``: ``side0[j]`` marks the types of side 0 (the ``t`` first of ``order``, which
    is ``tail_order``: the decode-heavy types), ``split[g]`` how many of the ``counts[g]`` replicas of
    config group ``g`` are on side 0. ``demanded`` marks the types with demand: a type split that leaves a
    side without any is skipped, as are splits that leave a side without replicas.
    """
    counts = [int(c) for c in counts]
    J = len(order)
    demanded = np.asarray(demanded, dtype=bool)
    ranges = [range(c + 1) for c in counts]
    total = math.prod(len(r) for r in ranges)
    if total > MAX_SPLITS:  # thin the biggest groups to about MAX_SPLITS combinations (large clusters only)
        per = max(2, int(MAX_SPLITS ** (1.0 / len(counts))))
        ranges = [sorted(set(np.linspace(0, c, min(c + 1, per)).round().astype(int).tolist())) for c in counts]
    for t in range(1, J):
        side0 = np.zeros(J, dtype=bool)
        side0[np.asarray(order[:t])] = True
        if not (side0 & demanded).any() or not (~side0 & demanded).any():
            continue
        for split in itertools.product(*ranges):
            on0 = sum(split)
            if on0 == 0 or on0 == sum(counts):
                continue
            yield side0, tuple(split)


__all__ = ["LatencyModel", "OutputSpread", "Z99", "p99_e2e_s", "partition_candidates", "replica_latency", "tail_order"]
