"""OServe's upper level: which replicas to run. Flow-guided local search, brute force, homogeneous baselines.

A deployment *shape* is a multiset of replica configs (gpu, tp, pp), stored as
a count per config of the ``ThroughputTable``; it fits when every GPU type has
enough GPUs and ``oserve_rl.cluster.place_replicas`` can place it (TP groups
inside a node). Every shape is scored by the load scale ``alpha`` of
``dispatch.load_scale_lp`` (the largest multiple of the demand mix it serves),
with one row per config and ``capacity`` = its replica count. Ties (alpha equal
within 1e-7 relative) prefer fewer switches from ``start`` (replicas started +
stopped), then fewer GPUs. Types that no config of the table can serve at all
(``n == 0`` everywhere, e.g. prompts over the model's context) are left out of
the demand, else every shape would score 0; they are listed in
``SearchResult.unservable_types``. Since ``alpha(s * lam) = alpha(lam) / s``,
the ranking depends on the mix of types only, not on the total rate.

Flow-guided search (paper: start somewhere, solve dispatch, move GPUs from
redundant to bottleneck replicas, re-enumerate the strategies of the affected
replicas, keep the change if the objective improves, stop after 20 iterations
without improvement). Choices where the paper is silent:

- Start: the best homogeneous deployment (one config, as many replicas as fit),
  the strongest "uniform split"; or a given deployment (e.g. the one running).
- One iteration: solve the current shape. Replicas saturated at the load-scale
  limit are the bottleneck, the others (spare capacity there) are redundant.
  Pick a *receiver* among the bottleneck replicas (weighted by capacity value
  per GPU, the LP dual d alpha / d capacity), then *donors* of its GPU type one
  at a time (redundant ones weighted by their spare share; if every replica is
  saturated, the lowest value per GPU is likeliest) until, with the idle GPUs,
  enough are freed to grow the receiver one size; all draws from the seeded
  rng. The receiver's, donors' and idle GPUs form a pool; every maximal way to
  fill the pool with configs (TP x PP re-enumerated: removing, shrinking,
  growing, splitting and adding replicas are all such fillings) is a
  candidate, and the best candidate is kept if it beats the current shape.
  Growing a receiver by one size needs all the donors it takes: with a single
  donor per move, a TP8 next to four redundant TP2s can never become two TP8s
  (a stuck local optimum, 37 % below brute force, seen on OPT-66B).
- Candidates are scored lazily: the current shape's type prices ``p`` (LP
  duals, ``lam @ p = 1``) give every shape the bound ``alpha <= sum_c count_c *
  max_j p_j n_cj`` (weak duality), so candidates are solved in decreasing bound
  order and the rest skipped once the bound cannot beat the best found. LP
  results are cached per shape.
- Fillings use only configs not dominated for this demand: config a is
  dominated by b (same GPU type) if ``m = gpus_a // gpus_b >= 1`` copies of b
  serve every demanded type at least as fast as one a. Replacing a by its
  dominator never lowers alpha, so this loses nothing (brute force checks).

Brute force enumerates every maximal shape (no further config of any type fits
in the GPUs left), the same set as ``enumerate_deployments(homogeneous=False)``,
counted first by dynamic programming so an oversized space fails with its size.

    >>> import numpy as np
    >>> from oserve_rl.cluster import enumerate_replica_configs
    >>> from oserve_rl.sched.profiles import ThroughputTable, TypeProfile
    >>> types = [TypeProfile(0, 300, 100), TypeProfile(1, 2500, 300)]
    >>> table = ThroughputTable("llama-2-70b", enumerate_replica_configs("llama-2-70b", "h100x16"), types)
    >>> res = flow_guided_search("llama-2-70b", "h100x16", np.array([20.0, 3.0]), table)
    >>> res.objective >= res.start_objective
    True
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from oserve_rl.catalog import ClusterSpec, ModelSpec, get_cluster, get_model
from oserve_rl.cluster import Deployment, ReplicaConfig, cluster_nodes, parse_deployment, place_replicas
from oserve_rl.errors import ConfigError, DoesNotFitError
from oserve_rl.perf import EngineConfig
from oserve_rl.sched.dispatch import SATURATED, DispatchResult, LoadScale, load_scale_lp, solve_dispatch
from oserve_rl.sched.profiles import ThroughputTable

_RTOL = 1e-7  # alphas closer than this (relative) are ties
DEFAULT_MAX_SHAPES = 50_000


@dataclass(frozen=True)
class SearchResult:
    """The chosen deployment with its load scale and routing, and what finding it cost.

    ``dispatch`` (the LPs' routing over ``deployment``'s replicas, in its order) is solved on first access:
    OServe searches at every decision and reads only the deployment and its load scale.
    """

    deployment: Deployment
    objective: float  # alpha of the load-scale LP
    iterations: int  # search iterations (brute force: shapes enumerated)
    evaluations: int  # LPs solved (cache misses)
    wall_s: float
    start: Deployment | None = None
    start_objective: float = math.nan
    switches: int = 0  # replicas started + stopped relative to ``start``
    unservable_types: tuple[int, ...] = ()
    # (table, servable rates) the dispatch is solved with; not the whole search space, whose caches it would keep
    _dispatch_inputs: tuple[ThroughputTable, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def dispatch(self) -> DispatchResult:
        table, lam = self._dispatch_inputs
        return solve_dispatch(table.for_deployment(self.deployment), lam)


@dataclass(frozen=True)
class Candidate:
    deployment: Deployment
    objective: float
    dispatch: DispatchResult


# --------------------------------------------------------------------------- the shape space


class _Space:
    """Configs that fit the cluster, GPU budgets, the demand, and a per-shape LP cache."""

    def __init__(self, model: str, cluster: ClusterSpec, lam: np.ndarray, table: ThroughputTable):
        if table.model != model:
            raise ConfigError(f"search: the throughput table is for {table.model}, not {model}")
        lam = np.asarray(lam, dtype=np.float64)
        if lam.shape != (table.num_types,) or not np.all(np.isfinite(lam)) or np.any(lam < 0):
            raise ConfigError(
                f"search: lam must hold {table.num_types} finite rates >= 0 (one per type of the table), got {lam!r}"
            )
        have = cluster.gpus_by_type()
        max_node: dict[str, int] = {}
        for node in cluster_nodes(cluster):
            max_node[node.gpu.name] = max(max_node.get(node.gpu.name, 0), len(node.gpu_ids))
        keep = [i for i, c in enumerate(table.configs)
                if c.gpu in have and c.num_gpus <= have[c.gpu] and c.tp <= max_node[c.gpu]]
        if not keep:
            raise ConfigError(
                f"search: no config of the throughput table fits cluster {cluster.name!r} "
                f"(table: {', '.join(c.label() for c in table.configs)}; cluster: {have})"
            )
        self.model, self.cluster, self.table = model, cluster, table
        self.configs: list[ReplicaConfig] = [table.configs[i] for i in keep]
        self.n = table.n[keep]
        self.gpus = np.array([c.num_gpus for c in self.configs])
        self.gpu_types = sorted({c.gpu for c in self.configs})
        self.type_of = np.array([self.gpu_types.index(c.gpu) for c in self.configs])
        self.have = np.array([have[t] for t in self.gpu_types])
        servable = (self.n > 0).any(axis=0)
        self.unservable = tuple(int(j) for j in np.flatnonzero((lam > 0) & ~servable))
        self.lam = np.where(servable, lam, 0.0)
        self.dominated = self._dominated()
        self._scores: dict[tuple[int, ...], LoadScale] = {}
        self._placeable: dict[tuple[int, ...], bool] = {}
        self._fillings: dict[tuple[int, int], np.ndarray] = {}
        self.evaluations = 0

    # -- scores
    def score(self, counts: np.ndarray) -> LoadScale:
        key = tuple(int(c) for c in counts)
        hit = self._scores.get(key)
        if hit is None:
            rows = np.flatnonzero(counts)
            if rows.size == 0:
                alpha = math.inf if not self.lam.any() else 0.0
                hit = LoadScale(alpha, np.zeros((0, len(self.lam))), np.zeros(0), np.zeros(len(self.lam)))
            else:
                hit = load_scale_lp(self.n[rows], self.lam, counts[rows].astype(np.float64))
            self.evaluations += 1
            self._scores[key] = hit
        return hit

    def alpha(self, counts: np.ndarray) -> float:
        return self.score(counts).alpha

    def used(self, counts: np.ndarray) -> np.ndarray:
        """GPUs used per GPU type."""
        return np.bincount(self.type_of, weights=counts * self.gpus, minlength=len(self.gpu_types)).astype(int)

    def placeable(self, counts: np.ndarray) -> bool:
        key = tuple(int(c) for c in counts)
        ok = self._placeable.get(key)
        if ok is None:
            ok = bool(np.all(self.used(counts) <= self.have)) and _fits(self.cluster, tuple(self.config_list(counts)))
            self._placeable[key] = ok
        return ok

    # -- conversions
    def config_list(self, counts: np.ndarray) -> list[ReplicaConfig]:
        """Replicas largest first (GPUs, TP, GPU type, PP), identical configs adjacent."""
        order = sorted(np.flatnonzero(counts), key=lambda i: (-self.gpus[i], -self.configs[i].tp,
                                                               self.configs[i].gpu, -self.configs[i].pp))
        return [self.configs[i] for i in order for _ in range(int(counts[i]))]

    def counts_of(self, dep: Deployment) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.configs)}
        counts = np.zeros(len(self.configs), dtype=np.int64)
        for cfg in dep.configs:
            if cfg not in index:
                raise ConfigError(
                    f"search: start replica {cfg.label()} is not among the configs of the throughput table that fit "
                    f"cluster {self.cluster.name!r} ({', '.join(c.label() for c in self.configs)})"
                )
            counts[index[cfg]] += 1
        return counts

    def deployment(self, counts: np.ndarray, prefer: Deployment | None = None) -> Deployment:
        placed = place_replicas(self.config_list(counts), self.cluster, prefer=prefer)
        return Deployment(self.model, self.cluster, tuple(placed))

    def dispatch(self, dep: Deployment) -> DispatchResult:
        return solve_dispatch(self.table.for_deployment(dep), self.lam)

    # -- dominance and fillings
    def _dominated(self) -> np.ndarray:
        demanded = self.lam > 0
        n = self.n[:, demanded] if demanded.any() else self.n
        out = np.zeros(len(self.configs), dtype=bool)
        for a, b in itertools.permutations(range(len(self.configs)), 2):
            if self.type_of[a] != self.type_of[b] or out[b]:
                continue
            m = self.gpus[a] // self.gpus[b]
            if m >= 1 and np.all(m * n[b] >= n[a] * (1 - 1e-12)):
                strict = m * self.gpus[b] < self.gpus[a] or np.any(m * n[b] > n[a] * (1 + 1e-12)) or b < a
                out[a] |= bool(strict)
        return out

    def fillings(self, gpu_type: int, pool: int) -> np.ndarray:
        """Count vectors of undominated configs of one GPU type that fill ``pool`` GPUs maximally."""
        key = (gpu_type, pool)
        hit = self._fillings.get(key)
        if hit is None:
            cands = [i for i in np.flatnonzero(self.type_of == gpu_type) if not self.dominated[i]]
            hit = _maximal_counts(cands, self.gpus, pool, len(self.configs))
            self._fillings[key] = hit
        return hit


def _maximal_counts(cands: Sequence[int], gpus: np.ndarray, pool: int, size: int) -> np.ndarray:
    """Every count vector over ``cands`` using at most ``pool`` GPUs with no room left for any of them."""
    cands = sorted(cands, key=lambda i: -gpus[i])
    smallest = min((int(gpus[i]) for i in cands), default=pool + 1)
    out: list[np.ndarray] = []
    counts = np.zeros(size, dtype=np.int64)

    def rec(pos: int, left: int) -> None:
        if pos == len(cands):
            if left < smallest:
                out.append(counts.copy())
            return
        i = cands[pos]
        for c in range(left // int(gpus[i]), -1, -1):
            counts[i] = c
            rec(pos + 1, left - c * int(gpus[i]))
        counts[i] = 0

    rec(0, pool)
    return np.array(out, dtype=np.int64).reshape(-1, size)


def _count_maximal(sizes: Sequence[int], pool: int) -> int:
    """How many count vectors over configs of these GPU sizes fill ``pool`` maximally (coin-change DP)."""
    if not sizes:
        return 1
    ways = np.zeros(pool + 1, dtype=object)
    ways[0] = 1
    for g in sizes:
        for s in range(g, pool + 1):
            ways[s] += ways[s - g]
    return int(sum(ways[max(0, pool - min(sizes) + 1):]))


# --------------------------------------------------------------------------- ranking


@lru_cache(maxsize=65536)
def _fits(cluster: ClusterSpec, configs: tuple[ReplicaConfig, ...]) -> bool:
    """Whether ``place_replicas`` places ``configs`` (in this order) on ``cluster``. Placement is deterministic,
    so this is shared by every search: OServe searches at every decision, mostly among the same shapes."""
    try:
        place_replicas(list(configs), cluster)
    except DoesNotFitError:
        return False
    return True


def _rank_key(space: _Space, counts: np.ndarray, start: np.ndarray | None) -> tuple[float, int, int]:
    switches = int(np.abs(counts - start).sum()) if start is not None else 0
    return space.alpha(counts), -switches, -int((counts * space.gpus).sum())


def _better(a: tuple[float, int, int], b: tuple[float, int, int]) -> bool:
    if math.isinf(a[0]) and math.isinf(b[0]):
        return a[1:] > b[1:]
    tol = _RTOL * max(abs(a[0]), abs(b[0]), 1e-12)
    if a[0] > b[0] + tol:
        return True
    if a[0] < b[0] - tol:
        return False
    return a[1:] > b[1:]


def _prepare(model: ModelSpec | str, cluster: ClusterSpec | str, lam: np.ndarray, table: ThroughputTable) -> _Space:
    return _Space(get_model(model).name, get_cluster(cluster), lam, table)


def _homogeneous_counts(space: _Space) -> list[np.ndarray]:
    out = []
    for i in range(len(space.configs)):
        counts = np.zeros(len(space.configs), dtype=np.int64)
        counts[i] = space.have[space.type_of[i]] // space.gpus[i]
        if counts[i] and space.placeable(counts):
            out.append(counts)
    return out


def homogeneous_candidates(
    model: ModelSpec | str,
    cluster: ClusterSpec | str,
    lam: np.ndarray,
    table: ThroughputTable,
    engine: EngineConfig | None = None,
) -> list[Candidate]:
    """One deployment per config of the table (as many replicas as fit), best load scale first.

    Ties: fewer GPUs first, then table order. ``engine`` is unused (the table's engine set ``n``);
    it is accepted for a signature uniform with the searches.
    """
    space = _prepare(model, cluster, lam, table)
    shapes = _homogeneous_counts(space)
    if not shapes:
        raise ConfigError(f"homogeneous_candidates: no config of the table can be placed on {space.cluster.name!r}")
    shapes.sort(key=lambda c: (-space.alpha(c), int((c * space.gpus).sum())))
    out = []
    for counts in shapes:
        dep = space.deployment(counts)
        out.append(Candidate(dep, space.alpha(counts), space.dispatch(dep)))
    return out


# --------------------------------------------------------------------------- flow-guided search


def _pick(rng: np.random.Generator, items: np.ndarray, weights: np.ndarray) -> int:
    return int(items[rng.choice(len(items), p=_normalise(weights))])


def _propose(space: _Space, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Candidate shapes of one move: a receiver, enough donors to grow it one size, idle GPUs; refilled every way."""
    present = np.flatnonzero(counts)
    idle = space.have - space.used(counts)
    if present.size == 0:
        t = int(np.argmax(idle))
        return space.fillings(t, int(idle[t]))
    ls = space.score(counts)
    busy = np.divide(ls.x, space.n[present], out=np.zeros_like(ls.x), where=space.n[present] > 0)
    util = busy.sum(axis=1) / counts[present]
    value_per_gpu = np.maximum((ls.type_price[None, :] * space.n[present]).max(axis=1), 0) / space.gpus[present]
    spare = util < SATURATED
    # Donor weights: spare share for redundant replicas; if all are saturated, cheapest capacity per GPU first.
    if spare.any():
        donor_weight = np.where(spare, 1.0 - util + 1e-3, 0.0)
    else:
        donor_weight = 1.0 / (1.0 + np.argsort(np.argsort(value_per_gpu)))
    base = counts.copy()
    if (~spare).any():
        receiver = _pick(rng, present[~spare], value_per_gpu[~spare] + 1e-12)
        t = int(space.type_of[receiver])
        base[receiver] -= 1
        pool = int(space.gpus[receiver])
        larger = space.gpus[(space.type_of == t) & (space.gpus > pool)]
        need = int(larger.min()) - pool if larger.size else 1  # GPUs to grow the receiver one size
    else:  # nothing saturated (e.g. alpha = 0): rebuild around one donor
        t = int(space.type_of[_pick(rng, present, donor_weight)])
        pool, need = 0, 1
    freed = int(idle[t])
    # Donors one replica at a time (without replacement) until the receiver can grow.
    left = base[present] * (space.type_of[present] == t)
    while freed < need and left.any():
        w = donor_weight * (left > 0)
        d = rng.choice(present.size, p=_normalise(w if w.sum() > 0 else (left > 0).astype(np.float64)))
        left[d] -= 1
        base[present[d]] -= 1
        freed += int(space.gpus[present[d]])
    return base[None, :] + space.fillings(t, pool + freed)


def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    return w / w.sum() if w.sum() > 0 else (w > -1) / len(w)


def flow_guided_search(
    model: ModelSpec | str,
    cluster: ClusterSpec | str,
    lam: np.ndarray,
    table: ThroughputTable,
    start: Deployment | str | None = None,
    patience: int = 20,
    engine: EngineConfig | None = None,
    seed: int = 0,
    max_iterations: int = 1000,
) -> SearchResult:
    """OServe's heuristic (module doc). ``start``: a Deployment or spec string; default the best homogeneous one.

    ``engine`` parses ``start`` when it is a spec string (default: the table's engine).
    """
    t0 = time.perf_counter()
    if int(patience) != patience or patience < 1:
        raise ConfigError(f"flow_guided_search: patience must be an integer >= 1, got {patience!r}")
    space = _prepare(model, cluster, lam, table)
    start_dep: Deployment | None = None
    if start is None:
        shapes = _homogeneous_counts(space)
        if not shapes:
            raise ConfigError(f"flow_guided_search: no config of the table can be placed on {space.cluster.name!r}")
        cur = max(shapes, key=lambda c: (space.alpha(c), -int((c * space.gpus).sum())))  # first max on ties
        start_counts = cur.copy()
    else:
        if isinstance(start, str):
            start = parse_deployment(start, space.cluster, space.model, engine=engine or table.engine)
        if start.cluster != space.cluster or start.model != space.model:
            raise ConfigError(f"flow_guided_search: start {start} is not {space.model} on {space.cluster.name}")
        start_dep = start
        start_counts = space.counts_of(start)
        cur = start_counts.copy()
    start_alpha = space.alpha(start_counts)
    rng = np.random.default_rng(seed)
    iterations = stale = 0
    while space.lam.any() and stale < patience and iterations < max_iterations:
        iterations += 1
        cands = _propose(space, cur, rng)
        best, best_key = None, _rank_key(space, cur, start_counts)
        # Weak-duality bound from the current shape's type prices: solve the promising candidates only.
        price = space.score(cur).type_price
        value = np.maximum((price[None, :] * space.n).max(axis=1), 0.0)
        bound = cands @ value
        for i in np.argsort(-bound, kind="stable"):
            if bound[i] < best_key[0] * (1 - 1e-9) - 1e-12:
                break
            if not space.placeable(cands[i]):
                continue
            key = _rank_key(space, cands[i], start_counts)
            if _better(key, best_key):
                best, best_key = cands[i], key
        if best is None:
            stale += 1
        else:
            cur, stale = best, 0
    dep = space.deployment(cur, prefer=start_dep)
    return SearchResult(
        deployment=dep, objective=space.alpha(cur), iterations=iterations,
        evaluations=space.evaluations, wall_s=time.perf_counter() - t0, _dispatch_inputs=(space.table, space.lam),
        start=start_dep if start_dep is not None else space.deployment(start_counts), start_objective=start_alpha,
        switches=int(np.abs(cur - start_counts).sum()), unservable_types=space.unservable,
    )


# --------------------------------------------------------------------------- brute force


def count_shapes(model: ModelSpec | str, cluster: ClusterSpec | str, table: ThroughputTable) -> int:
    """Number of maximal shapes brute force would enumerate (product over GPU types)."""
    space = _prepare(model, cluster, np.zeros(table.num_types), table)
    return _count_all(space)


def _count_all(space: _Space) -> int:
    total = 1
    for t in range(len(space.gpu_types)):
        sizes = [int(g) for g, ty in zip(space.gpus, space.type_of) if ty == t]
        total *= _count_maximal(sizes, int(space.have[t]))
    return total


def brute_force_search(
    model: ModelSpec | str,
    cluster: ClusterSpec | str,
    lam: np.ndarray,
    table: ThroughputTable,
    engine: EngineConfig | None = None,
    max_shapes: int = DEFAULT_MAX_SHAPES,
) -> SearchResult:
    """Best maximal shape by load scale (ties: fewer GPUs, then enumeration order); every shape solved.

    Raises ConfigError, naming the count, if there are more than ``max_shapes`` shapes.
    ``engine`` is unused (the table's engine set ``n``).
    """
    t0 = time.perf_counter()
    space = _prepare(model, cluster, lam, table)
    total = _count_all(space)
    if total > max_shapes:
        raise ConfigError(
            f"brute_force_search: {total} maximal shapes of {space.model} on {space.cluster.name!r} "
            f"({len(space.configs)} configs) exceed max_shapes={max_shapes}; raise max_shapes or use flow_guided_search"
        )
    per_type = [_maximal_counts(list(np.flatnonzero(space.type_of == t)), space.gpus, int(space.have[t]),
                                len(space.configs)) for t in range(len(space.gpu_types))]
    best, best_key, shapes = None, None, 0
    for parts in itertools.product(*per_type):
        counts = np.sum(parts, axis=0)
        shapes += 1
        if not counts.any() or not space.placeable(counts):
            continue
        key = _rank_key(space, counts, None)
        if best_key is None or _better(key, best_key):
            best, best_key = counts, key
    if best is None:
        raise ConfigError(
            f"brute_force_search: no shape of the table's configs can be placed on {space.cluster.name!r}"
        )
    dep = space.deployment(best)
    return SearchResult(
        deployment=dep, objective=space.alpha(best), iterations=shapes,
        evaluations=space.evaluations, wall_s=time.perf_counter() - t0, unservable_types=space.unservable,
        _dispatch_inputs=(space.table, space.lam),
    )


__all__ = [
    "DEFAULT_MAX_SHAPES", "Candidate", "SearchResult", "brute_force_search", "count_shapes", "flow_guided_search",
    "homogeneous_candidates",
]
