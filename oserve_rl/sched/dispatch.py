"""OServe's lower level: how much of each request type each replica should take.

Inputs: ``n[k, j]``, the throughput of replica ``k`` on type ``j`` alone
(requests/s, ``profiles.ThroughputTable``), and ``lam[j]``, the arrival rate of
type ``j``. Replica ``k`` serving ``x[k, j]`` requests/s of each type is busy a
share ``sum_j x[k, j] / n[k, j]`` of the time (its utilisation), which must
stay <= 1. Two linear programs, both solved with HiGHS's dual simplex (``highspy``, the
solver ``scipy.optimize.linprog(method="highs-ds")`` wraps, called directly: see ``_solve``):

(a) max-flow, as in the paper::

        max sum_kj x_kj   s.t.  sum_k x_kj <= lam_j,   sum_j x_kj / n_kj <= 1,   x >= 0

(b) load scale (suggested in oserve.md, not from the paper)::

        max alpha         s.t.  sum_k x_kj = alpha * lam_j,   sum_j x_kj / n_kj <= 1,   x >= 0

Max-flow cannot rank two deployments that both serve everything; ``alpha`` can:
the deployment serves ``alpha`` times the demand *in the same mix* before one
replica saturates (``alpha >= 1``: everything served with headroom ``alpha``;
``alpha < 1``: it cannot keep up). The search maximises ``alpha``.

Choices where the paper is silent:

- Edge caps: an edge ``(k, j)`` exists iff ``n[k, j] > 0`` (the replica can run
  the type at all: it fits the context and the KV pool); no other cap.
- Router weights: ``x = x_alpha / alpha`` when ``alpha >= 1`` (serves exactly
  ``lam`` and spreads the slack evenly: every replica sits at ``1 / alpha`` of
  its load-scale utilisation), the max-flow ``x`` otherwise (serves as much as
  possible; it may starve an expensive type, which is the paper's objective).
  ``DispatchResult.router_rates()`` is the ``[type, replica]`` matrix
  ``sim.router.WeightedTypeRouter`` takes.
- Bottleneck / redundant: at the load-scale optimum, replicas with utilisation
  >= 1 - 1e-6 are the bottleneck (they cap ``alpha``); the others have spare
  capacity even at the limit and are redundant. ``capacity_value[k]`` (the LP
  dual, d alpha / d capacity of replica k) ranks them further.
- Identical rows of ``n`` (replicas of one config) are merged into one row with
  their summed capacity before solving and split evenly afterwards: identical
  replicas get identical weights (an LP vertex would load one fully and leave
  the other idle), and the LP stays small whatever the replica count.

The paper phrases (a) as a max-flow solved by preflow-push, where a unit of
type-j flow uses ``M_k / n_kj`` of replica k's capacity ``M_k = lcm_j n_kj``.
Type-dependent consumption on a shared edge is a *generalised* flow (flow with
gains), which a plain max-flow cannot express; ``max_flow_csgraph`` builds the
plain network (integer capacities, replica capacity ``max_j n_kj``). It equals
(a) when each replica has one rate for every type it serves and is an upper
bound otherwise (tests check both).

    >>> import numpy as np
    >>> n = np.array([[10.0, 1.0], [2.0, 2.0]])        # replica 0 is fast on type 0 only
    >>> d = solve_dispatch(n, np.array([5.0, 1.0]))
    >>> d.alpha, d.x.tolist()                           # twice the demand fits; route exactly lam
    (2.0, [[5.0, 0.0], [0.0, 1.0]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import highspy
import numpy as np

from oserve_rl.errors import ConfigError

if TYPE_CHECKING:
    from oserve_rl.cluster import Deployment
    from oserve_rl.sched.profiles import ThroughputTable

SATURATED = 1.0 - 1e-6  # utilisation at or above this counts as saturated (LP round-off)


@dataclass(frozen=True)
class DispatchResult:
    """Routing of every type over the replicas (rates in requests/s; arrays are read-only).

    ``x``: [K, J] rates to route (router weights; see the module doc).
    ``alpha``: load scale (inf when there is no demand; 0 when a demanded type has no replica).
    ``served_rps``: [J] ``x.sum(0)``. ``utilization``: [K] busy share of each replica under ``x``.
    ``bottleneck`` / ``redundant``: [K] masks at the load-scale optimum.
    ``x_max_flow``: [K, J] the max-flow solution (== ``x`` when ``alpha < 1``).
    ``x_load_scale``: [K, J] ``alpha * lam`` routed at the limit (zeros when alpha is inf).
    ``capacity_value``: [K] d alpha / d (capacity of replica k), the LP dual.
    ``type_price``: [J] dual of the type rows, scaled so that ``lam @ type_price == 1``; for any
    deployment, ``alpha <= sum_k cap_k * max_j type_price_j * n_kj`` (weak duality).
    ``demand_rps``: [J] the ``lam`` it was solved for.
    """

    x: np.ndarray
    alpha: float
    served_rps: np.ndarray
    utilization: np.ndarray
    bottleneck: np.ndarray
    redundant: np.ndarray
    x_max_flow: np.ndarray
    x_load_scale: np.ndarray
    capacity_value: np.ndarray
    type_price: np.ndarray
    demand_rps: np.ndarray

    @property
    def max_flow_rps(self) -> float:
        return float(self.x_max_flow.sum())

    @property
    def demand_served(self) -> float:
        """Share of the total demand that ``x`` serves (1.0 when alpha >= 1 or there is no demand)."""
        total = float(self.demand_rps.sum())
        return min(1.0, float(self.served_rps.sum()) / total) if total > 0 else 1.0

    def router_rates(self) -> np.ndarray:
        """``[type, replica]`` weights for ``oserve_rl.sim.router.WeightedTypeRouter``."""
        return np.ascontiguousarray(self.x.T)


class LoadScale(NamedTuple):
    """Solution of LP (b): alpha, x [K, J] at the limit, capacity duals [K], type prices [J]."""

    alpha: float
    x: np.ndarray
    capacity_value: np.ndarray
    type_price: np.ndarray


# --------------------------------------------------------------------------- input checks


def _check(n: np.ndarray, lam: np.ndarray, capacity: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = np.asarray(n, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] == 0 or n.shape[1] == 0:
        raise ConfigError(f"dispatch: n must be a non-empty [replica, type] matrix, got shape {n.shape}")
    if lam.shape != (n.shape[1],):
        raise ConfigError(f"dispatch: lam must have one rate per type ({n.shape[1]}), got shape {lam.shape}")
    for name, a in (("n", n), ("lam", lam)):
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            bad = np.argwhere(~np.isfinite(a) | (a < 0))[0]
            raise ConfigError(f"dispatch: {name}{list(bad)} = {a[tuple(bad)]}; values must be finite and >= 0")
    if capacity is None:
        cap = np.ones(n.shape[0])
    else:
        cap = np.asarray(capacity, dtype=np.float64)
        if cap.shape != (n.shape[0],) or not np.all(np.isfinite(cap)) or np.any(cap < 0):
            raise ConfigError(
                f"dispatch: capacity must be {n.shape[0]} finite values >= 0 (replicas per row), got {capacity!r}"
            )
    return n, lam, cap


def _edges(n: np.ndarray, lam: np.ndarray, cap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, type) of every usable edge: the replica runs the type, the type is demanded, the row has capacity."""
    usable = (n > 0) & (lam > 0)[None, :] & (cap > 0)[:, None]
    return np.nonzero(usable)


class _LPSolution(NamedTuple):
    x: np.ndarray
    ub_duals: np.ndarray  # d objective / d b_ub (scipy's ``res.ineqlin.marginals``)
    eq_duals: np.ndarray  # d objective / d b_eq (``res.eqlin.marginals``)


_HIGHS: highspy.Highs | None = None


def _highs() -> highspy.Highs:
    """One solver for every LP, emptied before each: building a ``Highs`` costs ~0.11 ms, a quarter of a
    solve here, and ``clearModel`` drops the model, basis and solution (each LP is solved from scratch)."""
    global _HIGHS
    if _HIGHS is None:
        _HIGHS = highspy.Highs()
        # simplex_strategy 1: dual simplex (HiGHS's kSimplexStrategyDual, which highspy does not export by name).
        for option, value in (("output_flag", False), ("solver", "simplex"), ("simplex_strategy", 1)):
            _HIGHS.setOptionValue(option, value)
    _HIGHS.clearModel()
    return _HIGHS


def _solve(c, a_ub, b_ub, a_eq=None, b_eq=None) -> _LPSolution:
    """min ``c @ x`` s.t. ``a_ub @ x <= b_ub``, ``a_eq @ x == b_eq``, ``x >= 0``, by HiGHS's dual simplex.

    The LPs here have at most a few dozen variables, and ``scipy.optimize.linprog`` spent ~1.2 of its
    ~1.5 ms per call checking options and converting inputs around a ~0.3 ms solve; OServe's dispatch
    ranking asks for ~10 of them per decision, and RL env steps that switch ask for one ranking each.
    The options are linprog's for ``method="highs-ds"`` (simplex, dual strategy, presolve on), so with the
    HiGHS release scipy bundles (constraints.txt pins ``highspy`` to it) the same vertex comes back where
    an LP has several optima.
    """
    n_ub = len(b_ub)
    a = np.asarray(a_ub, dtype=np.float64) if a_eq is None else np.vstack([a_ub, a_eq])
    lower = np.full(n_ub, -highspy.kHighsInf)
    upper = np.asarray(b_ub, dtype=np.float64)
    if a_eq is not None:
        lower = np.concatenate([lower, b_eq])
        upper = np.concatenate([upper, b_eq])
    n_var = a.shape[1]
    h = _highs()
    h.addVars(n_var, np.zeros(n_var), np.full(n_var, highspy.kHighsInf))
    h.changeColsCost(n_var, np.arange(n_var, dtype=np.int32), np.asarray(c, dtype=np.float64))
    rows, cols = np.nonzero(a)
    starts = np.searchsorted(rows, np.arange(a.shape[0])).astype(np.int32)
    h.addRows(a.shape[0], lower, upper, rows.size, starts, cols.astype(np.int32), a[rows, cols])
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        # Both LPs are feasible (x = 0) and bounded; anything else is a solver failure.
        raise RuntimeError(f"dispatch LP failed: {h.modelStatusToString(h.getModelStatus())}")
    sol = h.getSolution()
    duals = np.asarray(sol.row_dual, dtype=np.float64)
    return _LPSolution(np.asarray(sol.col_value, dtype=np.float64), duals[:n_ub], duals[n_ub:])


# --------------------------------------------------------------------------- the two LPs


def load_scale_lp(n: np.ndarray, lam: np.ndarray, capacity: np.ndarray | None = None) -> LoadScale:
    """LP (b) on rows with ``capacity[k]`` replicas each (default 1): max alpha with alpha * lam served."""
    return _load_scale(*_check(n, lam, capacity))


def _load_scale(n: np.ndarray, lam: np.ndarray, cap: np.ndarray) -> LoadScale:
    """``load_scale_lp`` on checked inputs (``solve_dispatch`` checks once for both LPs)."""
    k_count, j_count = n.shape
    demanded = np.flatnonzero(lam > 0)
    if demanded.size == 0:
        return LoadScale(math.inf, np.zeros_like(n), np.zeros(k_count), np.zeros(j_count))
    rows, types = _edges(n, lam, cap)
    m = rows.size
    eq_row = np.searchsorted(demanded, types)
    # Variables: x on each edge, then alpha. Type rows: sum_k x_kj - lam_j alpha = 0. Replica rows: busy share <= cap.
    a_eq = np.zeros((demanded.size, m + 1))
    a_eq[eq_row, np.arange(m)] = 1.0
    a_eq[:, m] = -lam[demanded]
    a_ub = np.zeros((k_count, m + 1))
    a_ub[rows, np.arange(m)] = 1.0 / n[rows, types]
    c = np.zeros(m + 1)
    c[m] = -1.0
    res = _solve(c, a_ub, cap, a_eq, np.zeros(demanded.size))
    alpha = float(res.x[m])
    x = np.zeros_like(n)
    x[rows, types] = np.maximum(res.x[:m], 0.0)  # HiGHS may return -0.0 / -1e-17
    # Duals of min(-alpha): the type-row marginals are proportional to the prices of weak duality;
    # clip and rescale so that lam @ price == 1 holds exactly (any such price gives a valid bound).
    price = np.zeros(j_count)
    price[demanded] = np.maximum(res.eq_duals, 0.0)
    scale = float(lam @ price)
    price = price / scale if scale > 0 else price
    return LoadScale(alpha, x, -res.ub_duals, price)


def max_flow_lp(n: np.ndarray, lam: np.ndarray, capacity: np.ndarray | None = None) -> np.ndarray:
    """LP (a): the [K, J] rates that serve the most requests/s in total."""
    return _max_flow(*_check(n, lam, capacity))


def _max_flow(n: np.ndarray, lam: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """``max_flow_lp`` on checked inputs."""
    rows, types = _edges(n, lam, cap)
    x = np.zeros_like(n)
    if rows.size == 0:
        return x
    m = rows.size
    j_count = n.shape[1]
    a_ub = np.zeros((j_count + n.shape[0], m))
    a_ub[types, np.arange(m)] = 1.0
    a_ub[j_count + rows, np.arange(m)] = 1.0 / n[rows, types]
    res = _solve(-np.ones(m), a_ub, np.concatenate([lam, cap]))
    x[rows, types] = np.maximum(res.x, 0.0)
    return x


def solve_dispatch(n: np.ndarray, lam: np.ndarray, capacity: np.ndarray | None = None) -> DispatchResult:
    """Both LPs for replicas with throughputs ``n`` [K, J] under demand ``lam`` [J] (module doc).

    ``capacity[k]`` (default 1) lets one row stand for several identical replicas; rates are then per row.
    """
    n, lam, cap = _check(n, lam, capacity)
    ls, inverse, x_alpha, x_flow = _both_lps(n, lam, cap)
    x = x_flow
    busy = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    per_cap = np.divide(1.0, cap, out=np.zeros_like(cap), where=cap > 0)
    util = (x * busy).sum(axis=1) * per_cap
    util_alpha = (x_alpha * busy).sum(axis=1) * per_cap
    bottleneck = (util_alpha >= SATURATED) & (cap > 0)
    arrays = {
        "x": x, "served_rps": x.sum(axis=0), "utilization": util, "bottleneck": bottleneck, "redundant": ~bottleneck,
        "x_max_flow": x_flow, "x_load_scale": x_alpha, "capacity_value": ls.capacity_value[inverse],
        "type_price": ls.type_price, "demand_rps": lam.copy(),
    }
    for a in arrays.values():
        a.setflags(write=False)
    return DispatchResult(alpha=ls.alpha, **arrays)


def dispatch_rates(n: np.ndarray, lam: np.ndarray, capacity: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """``solve_dispatch``'s ``(alpha, x)`` alone, without the utilisation and price arrays: what OServe's
    dispatch ranking asks for each of the ~30 partitions it scores per decision."""
    n, lam, cap = _check(n, lam, capacity)
    ls, _, _, x_flow = _both_lps(n, lam, cap)
    return ls.alpha, x_flow


def load_scale(n: np.ndarray, lam: np.ndarray, capacity: np.ndarray | None = None) -> float:
    """``solve_dispatch(n, lam, capacity).alpha`` alone, bit for bit: the same load-scale LP on the merged rows,
    without the max-flow LP (``alpha < 1``) and the arrays. What ranking deployments by load scale needs."""
    n, lam, cap = _check(n, lam, capacity)
    return _merged_load_scale(n, lam, cap)[0].alpha


def _merged_load_scale(n: np.ndarray, lam: np.ndarray, cap: np.ndarray
                       ) -> tuple[LoadScale, np.ndarray, np.ndarray, np.ndarray]:
    """(load-scale LP on the distinct rows of ``n``, their summed capacities, each row's index among them, distinct
    rows). Identical rows (replicas of one config) become one row with their summed capacity."""
    uniq, inverse = _unique_rows(n)
    group_cap = np.bincount(inverse, weights=cap, minlength=len(uniq))
    return _load_scale(uniq, lam, group_cap), group_cap, inverse, uniq


def _both_lps(n: np.ndarray, lam: np.ndarray, cap: np.ndarray) -> tuple[LoadScale, np.ndarray, np.ndarray, np.ndarray]:
    """(load-scale LP on the distinct rows, each row's index among them, x at the load scale, the max-flow x)."""
    ls, group_cap, inverse, uniq = _merged_load_scale(n, lam, cap)
    share = np.divide(cap, group_cap[inverse], out=np.zeros_like(cap), where=group_cap[inverse] > 0)
    x_alpha = ls.x[inverse] * share[:, None]
    if math.isinf(ls.alpha):
        x_flow = np.zeros_like(n)
    elif ls.alpha >= 1.0:
        x_flow = x_alpha / ls.alpha  # serves lam exactly: a max-flow optimum
    else:
        x_flow = _max_flow(uniq, lam, group_cap)[inverse] * share[:, None]
    return ls, inverse, x_alpha, x_flow


def _unique_rows(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(n, axis=0, return_inverse=True)``: the distinct rows in lexicographic order (the LP's row
    order, hence which vertex it returns where several are optimal) and each row's index among them, in a
    fifth of the time for the few rows here (the LP is asked dozens of times per OServe decision)."""
    rows = [tuple(r) for r in n.tolist()]
    keys = sorted(set(rows))
    index = {k: i for i, k in enumerate(keys)}
    return (np.array(keys, dtype=np.float64).reshape(len(keys), n.shape[1]),
            np.array([index[r] for r in rows], dtype=np.intp))


def disjoint_dispatch(n: np.ndarray, lam: np.ndarray, capacity: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray | None] | None:
    """``solve_dispatch``'s ``(alpha, x)`` in closed form when every demanded type has exactly one usable row;
    ``None`` otherwise (then solve the LPs). ``x`` is ``None`` when ``alpha < 1``: the rates actually served
    then need the max-flow LP, but ``alpha`` alone already rules a dispatch out when it is below a floor.

    With one row per type the LP falls apart into one knapsack per row:
    ``alpha = min over rows of cap_k / sum_j lam_j / n_kj`` and each type's whole rate goes to its row, the
    unique optimum, so the answer is the LP's exactly. OServe scores dozens of such dispatches per decision
    (a homogeneous deployment, and each partition of its types and replicas into two sides); at ~2 ms per
    call through ``linprog`` (~0.25 ms through ``_solve`` now) they were most of the RL env's step time.
    """
    n = np.asarray(n, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64)
    cap = np.ones(n.shape[0]) if capacity is None else np.asarray(capacity, dtype=np.float64)
    # The structure first, on lists: most dispatches OServe scores need the LPs, and this says so in a few µs.
    lam_l, cap_l = lam.tolist(), cap.tolist()
    demanded_j = [j for j, v in enumerate(lam_l) if v > 0]
    if not demanded_j:
        return None
    rows_per_type = [0] * len(demanded_j)
    for row, c in zip(n.tolist(), cap_l):
        if c > 0:
            for i, j in enumerate(demanded_j):
                if row[j] > 0:
                    rows_per_type[i] += 1
    if 0 in rows_per_type:
        return 0.0, None  # a demanded type nothing serves: no load scale above 0
    if any(r != 1 for r in rows_per_type):
        return None
    usable = (n > 0) & (lam > 0)[None, :] & (cap > 0)[:, None]
    busy = np.divide(lam[None, :], n, out=np.zeros_like(n), where=usable).sum(axis=1)  # [K] busy share at lam
    loaded = busy > 0
    alpha = float((cap[loaded] / busy[loaded]).min())
    return alpha, (np.where(usable, lam[None, :], 0.0) if alpha >= 1.0 else None)


def load_scale_bound(n: list[list[float]], lam: list[float], cap: list[float]) -> float:
    """An upper bound on LP (b)'s ``alpha`` in a few microseconds, from weak duality (inputs as lists).

    Price each demanded type by the time its fastest usable row needs per request, ``p_j = 1 / m_j`` with
    ``m_j = max_k n_kj`` over rows with ``cap_k > 0``. Any feasible ``(x, alpha)`` then has
    ``alpha * sum_j lam_j p_j = sum_kj p_j n_kj (x_kj / n_kj) <= sum_k cap_k max_j p_j n_kj``: no dispatch
    can serve more than ``bound`` times the demand. 0 when a demanded type has no usable row, inf without
    demand. OServe's partition ranking drops a partition whose bound is below the load-scale floor it must
    keep without solving its LPs (``OServe.routings``): the LP would have rejected it anyway.
    """
    return LoadScaleBound(n, lam)(cap)


class LoadScaleBound:
    """``load_scale_bound(n, lam, cap)`` for one ``n`` and ``lam`` and many ``cap``, bit for bit.

    The prices depend on ``cap`` only through which rows have capacity, so each such pattern's per-row
    terms ``max_j n_kj / m_j`` and the demand ``sum_j lam_j / m_j`` are worked out once: OServe's ranking
    bounds every replica split of a type split (dozens per decision) against the same few patterns.
    """

    def __init__(self, n: list[list[float]], lam: list[float]):
        self.n, self.demanded = n, [j for j, v in enumerate(lam) if v > 0]
        self.lam = lam
        self._terms: dict[tuple[bool, ...], tuple[list[float], float] | float] = {}

    def __call__(self, cap: list[float]) -> float:
        if not self.demanded:
            return math.inf
        pattern = tuple([c > 0 for c in cap])
        terms = self._terms.get(pattern)
        if terms is None:
            terms = self._terms[pattern] = self._pattern_terms(pattern)
        if not isinstance(terms, tuple):
            return terms  # no usable row for a demanded type: 0
        per_row, demand_s = terms
        return sum([c * t for c, t in zip([c for c in cap if c > 0], per_row)]) / demand_s

    def _pattern_terms(self, pattern: tuple[bool, ...]) -> tuple[list[float], float] | float:
        demanded, lam = self.demanded, self.lam
        rows = [row for row, on in zip(self.n, pattern) if on]
        fastest = [max((row[j] for row in rows), default=0.0) for j in demanded]
        if not min(fastest) > 0:
            return 0.0
        demand_s = sum(lam[j] / m for j, m in zip(demanded, fastest))
        return [max(row[j] / m for j, m in zip(demanded, fastest)) for row in rows], demand_s


def dispatch_for_deployment(deployment: "Deployment", lam: np.ndarray, table: "ThroughputTable") -> DispatchResult:
    """``solve_dispatch`` on a deployment's replicas (rows in replica order) with ``table``'s throughputs."""
    if len(deployment) == 0:
        raise ConfigError(f"dispatch: deployment {deployment} has no replicas")
    return solve_dispatch(table.for_deployment(deployment), lam)


# --------------------------------------------------------------------------- the paper's network as a plain max-flow


def max_flow_csgraph(
    n: np.ndarray, lam: np.ndarray, capacity: np.ndarray | None = None, resolution_rps: float = 1e-3
) -> float:
    """Value (requests/s) of the plain max-flow source -> type -> replica -> sink (scipy's Dinic).

    Capacities are integers in units of ``resolution_rps``: source -> type j: ``lam_j``; type j ->
    replica k: ``cap_k * n_kj`` where ``n_kj > 0``; replica k -> sink: ``cap_k * max_j n_kj``.
    Equal to LP (a) (within ``resolution_rps`` per edge) when every replica has a single rate for
    the types it serves; an upper bound on it otherwise (module doc).
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import maximum_flow

    n, lam, cap = _check(n, lam, capacity)
    if not (math.isfinite(resolution_rps) and resolution_rps > 0):
        raise ConfigError(f"max_flow_csgraph: resolution_rps must be > 0, got {resolution_rps!r}")
    k_count, j_count = n.shape
    rows, types = _edges(n, lam, cap)
    src, sink = 0, 1 + j_count + k_count
    type_node, rep_node = 1 + np.arange(j_count), 1 + j_count + np.arange(k_count)
    tail = np.concatenate([np.zeros(j_count, int), type_node[types], rep_node])
    head = np.concatenate([type_node, rep_node[rows], np.full(k_count, sink)])
    rate = np.concatenate([lam, cap[rows] * n[rows, types], cap * n.max(axis=1)])
    units = np.floor(rate / resolution_rps + 1e-9)
    if units.max(initial=0) >= 2**31:
        raise ConfigError(f"max_flow_csgraph: rates up to {rate.max():g} rps overflow int32 at resolution "
                          f"{resolution_rps:g}; use a coarser resolution_rps")
    graph = csr_array((units.astype(np.int32), (tail, head)), shape=(sink + 1, sink + 1))
    return float(maximum_flow(graph, src, sink, method="dinic").flow_value) * resolution_rps


__all__ = [
    "SATURATED", "DispatchResult", "LoadScale", "disjoint_dispatch", "dispatch_for_deployment", "dispatch_rates",
    "LoadScaleBound", "load_scale", "load_scale_bound", "load_scale_lp", "max_flow_csgraph",
    "max_flow_lp", "solve_dispatch",
]
