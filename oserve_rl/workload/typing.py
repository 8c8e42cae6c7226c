"""Request types: k-means clusters of (log input, log output) lengths.

Fit on one window of a trace, apply to others, so that "type 2" means the
same kind of request everywhere (e.g. for per-type routing or observations).
Type ids are ordered by centre input length, then output length, so they do
not depend on k-means' internal label order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from oserve_rl.errors import ConfigError
from oserve_rl.workload.trace import Trace


def _features(trace: Trace) -> np.ndarray:
    return np.column_stack([np.log(trace.input_tokens), np.log(trace.output_tokens)]).astype(np.float64)


@dataclass(frozen=True)
class RequestTyper:
    """Nearest-centre classifier in (log input tokens, log output tokens) space."""

    centers_log: np.ndarray  # (k, 2), sorted by input then output

    @classmethod
    def fit(cls, trace: Trace, k: int = 4, seed: int = 0) -> RequestTyper:
        """Seeded k-means (k-means++ start) on the trace's log lengths."""
        from scipy.cluster.vq import ClusterError, kmeans2  # scipy is slow to import; only fitting needs it

        if int(k) != k or k < 1:
            raise ConfigError(f"RequestTyper.fit: k must be an integer >= 1, got {k!r}")
        x = _features(trace)
        distinct = len(np.unique(x, axis=0))
        if distinct < k:
            raise ConfigError(
                f"RequestTyper.fit: trace {trace.name!r} has {distinct} distinct (input, output) pairs, "
                f"fewer than k={k}"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # empty-cluster warnings: handled below
            try:
                centers, _ = kmeans2(x, int(k), minit="++", seed=np.random.default_rng(seed), missing="raise")
            except ClusterError:
                # An empty cluster after k-means++ is rare; restart from distinct points instead.
                points = np.unique(x, axis=0)
                pick = np.random.default_rng(seed).choice(len(points), size=int(k), replace=False)
                centers, _ = kmeans2(x, points[pick], minit="matrix", missing="warn")
        order = np.lexsort((centers[:, 1], centers[:, 0]))
        return cls(np.ascontiguousarray(centers[order]))

    @property
    def k(self) -> int:
        return len(self.centers_log)

    @property
    def centers_tokens(self) -> np.ndarray:
        """(k, 2) centre (input, output) lengths in tokens (geometric means of each type)."""
        return np.exp(self.centers_log)

    def predict(self, trace: Trace) -> np.ndarray:
        """Type id (0 .. k-1) of every request."""
        x = _features(trace)
        d = ((x[:, None, :] - self.centers_log[None, :, :]) ** 2).sum(axis=2)
        return np.argmin(d, axis=1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "request_typer", "features": "log_input_log_output", "centers_log": self.centers_log.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestTyper:
        try:
            centers = np.asarray(data["centers_log"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ConfigError("RequestTyper.from_dict: expected {'centers_log': [[log_in, log_out], ...]}") from None
        if data.get("kind", "request_typer") != "request_typer" or centers.ndim != 2 or centers.shape[1] != 2 or not len(centers):
            raise ConfigError(f"RequestTyper.from_dict: centers_log must be a non-empty k x 2 list, got shape {centers.shape}")
        return cls(centers)
