"""Request routers: pick the replica that gets each arriving request.

A router sees the replicas as ``ReplicaView``s (anything with
``outstanding_tokens``, ``num_waiting``, ``num_running`` and ``accepting``) in
deployment order and returns an index, or ``None`` when no replica accepts
(all draining or starting): the simulator then queues the request at the
router and retries later, so a request is never dropped.

    >>> r = make_router("least_work")
    >>> r.choose(req_id=0, req_type=0, input_tokens=100, replicas=views)

Every router is deterministic: same inputs in the same order, same choices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from oserve_rl.errors import ConfigError, UnknownNameError


@runtime_checkable
class ReplicaView(Protocol):
    outstanding_tokens: int
    num_waiting: int
    num_running: int
    accepting: bool


class Router(ABC):
    """Base class. ``reset()`` forgets per-run state (cursors, credits)."""

    name: str = "router"

    @abstractmethod
    def choose(self, req_id: int, req_type: int, input_tokens: int, replicas: Sequence[ReplicaView]) -> int | None:
        """Index of the replica for this request, or None if no replica accepts."""

    def reset(self) -> None:
        pass


def _least_work(replicas: Sequence[ReplicaView]) -> int | None:
    best, best_tokens = None, None
    for i, r in enumerate(replicas):
        if r.accepting and (best_tokens is None or r.outstanding_tokens < best_tokens):
            best, best_tokens = i, r.outstanding_tokens
    return best


class RoundRobinRouter(Router):
    """Cycles through replicas in index order, skipping those not accepting."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def reset(self) -> None:
        self._next = 0

    def choose(self, req_id: int, req_type: int, input_tokens: int, replicas: Sequence[ReplicaView]) -> int | None:
        n = len(replicas)
        for step in range(n):
            i = (self._next + step) % n
            if replicas[i].accepting:
                self._next = (i + 1) % n
                return i
        return None


class LeastOutstandingWorkRouter(Router):
    """Accepting replica with the fewest outstanding tokens; ties go to the lowest index."""

    name = "least_work"

    def choose(self, req_id: int, req_type: int, input_tokens: int, replicas: Sequence[ReplicaView]) -> int | None:
        return _least_work(replicas)


class WeightedTypeRouter(Router):
    """Sends request type j to replica k in proportion to ``rates[j, k]`` (e.g. OServe's max-flow x_kj).

    Smooth weighted round-robin per type (nginx's rule): each request of type
    j adds ``rates[j, k]`` to replica k's credit for every accepting k, picks
    the largest credit (lowest index on ties) and takes the row total off the
    winner. Over any window the counts stay within one request per replica of
    the exact proportions, with no randomness and no bursts to one replica.
    Replicas not accepting get no credit in that round, so their share goes
    to the others pro rata. A type whose row is all zero (or whose weighted
    replicas are all not accepting) falls back to least outstanding work.
    Call ``set_rates`` after a switch changes the replica set.
    """

    name = "weighted"

    def __init__(self, rates: np.ndarray | Sequence[Sequence[float]]) -> None:
        self.set_rates(rates)

    def set_rates(self, rates: np.ndarray | Sequence[Sequence[float]]) -> None:
        arr = np.asarray(rates, dtype=float)
        if arr.ndim != 2 or arr.size == 0:
            raise ConfigError(f"weighted router: rates must be a non-empty 2-D [type, replica] matrix, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            bad = np.argwhere(~np.isfinite(arr) | (arr < 0))[0]
            raise ConfigError(
                f"weighted router: rates[{bad[0]}, {bad[1]}] = {float(arr[tuple(bad)])}; rates must be finite and >= 0"
            )
        self.rates = arr
        # Plain lists: choose() runs once per request and numpy's per-call overhead dominates at this size.
        self._rows = [[float(x) for x in row] for row in arr]
        self._credit = [[0.0] * arr.shape[1] for _ in range(arr.shape[0])]

    def reset(self) -> None:
        self._credit = [[0.0] * self.rates.shape[1] for _ in range(self.rates.shape[0])]

    def choose(self, req_id: int, req_type: int, input_tokens: int, replicas: Sequence[ReplicaView]) -> int | None:
        n_types, n_rep = self.rates.shape
        if len(replicas) != n_rep:
            raise ConfigError(
                f"weighted router: rates matrix has {n_rep} replica columns but {len(replicas)} replicas were given; "
                "call set_rates with the new deployment's matrix after a switch"
            )
        if not 0 <= req_type < n_types:
            raise ConfigError(f"weighted router: request {req_id} has type {req_type}; rates cover types 0..{n_types - 1}")
        row, credit = self._rows[req_type], self._credit[req_type]
        total, best, best_credit = 0.0, -1, 0.0
        for k, w in enumerate(row):
            if w > 0 and replicas[k].accepting:
                total += w
                credit[k] += w
                if best < 0 or credit[k] > best_credit:
                    best, best_credit = k, credit[k]
        if best < 0:
            return _least_work(replicas)
        credit[best] -= total
        return best


_ROUTERS: dict[str, type[Router]] = {
    "round_robin": RoundRobinRouter,
    "least_work": LeastOutstandingWorkRouter,
    "weighted": WeightedTypeRouter,
}
_ALIASES = {"rr": "round_robin", "roundrobin": "round_robin", "least_outstanding": "least_work", "weighted_type": "weighted"}


def make_router(name: str, **kwargs: Any) -> Router:
    """``make_router("round_robin")``, ``make_router("least_work")``, ``make_router("weighted", rates=matrix)``."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _ROUTERS:
        raise UnknownNameError("router", name, _ROUTERS)
    cls = _ROUTERS[key]
    if key == "weighted":
        if set(kwargs) != {"rates"}:
            raise ConfigError(
                f"router 'weighted' takes exactly one argument, rates (a [type, replica] matrix); got {sorted(kwargs)}"
            )
    elif kwargs:
        raise ConfigError(f"router {key!r} takes no arguments; got {sorted(kwargs)}")
    return cls(**kwargs)


__all__ = [
    "LeastOutstandingWorkRouter", "ReplicaView", "RoundRobinRouter", "Router", "WeightedTypeRouter", "make_router",
]
