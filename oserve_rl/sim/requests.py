"""Per-request inputs and outcomes as preallocated arrays indexed by request id.

One ``RequestRecorder`` is shared by every replica engine of a simulation: the
engines read a request's lengths and prefix hashes from it by id and write its
timestamps and counters into it. Nothing is allocated per engine iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from oserve_rl.errors import TraceError

if TYPE_CHECKING:
    from oserve_rl.workload.trace import Trace

__all__ = ["RequestRecorder", "STATUS_PENDING", "STATUS_COMPLETED", "STATUS_REJECTED", "STATUS_NAMES"]

STATUS_PENDING = 0  # not yet arrived, queued or in flight
STATUS_COMPLETED = 1
STATUS_REJECTED = 2
STATUS_NAMES = ("in_flight", "completed", "rejected")

# Reasons the engine itself gives; callers may add their own with reject().
ENGINE_REJECT_REASONS = (
    "exceeds_max_model_len",  # input + output > max_model_len
    "exceeds_kv_capacity",  # the request alone needs more KV blocks than the replica has
    "exceeds_max_num_batched_tokens",  # chunked prefill off and the prompt does not fit one iteration
)


class RequestRecorder:
    """Inputs (arrival, lengths, prefix hashes) and outcomes of N requests.

    Outcome arrays (NaN / -1 / 0 until set): ``replica``, ``first_scheduled_s``,
    ``first_token_s``, ``finish_s``, ``preemptions``, ``cached_tokens``,
    ``generated_tokens`` (so far; lets a request migrate), ``status``
    (``STATUS_*``) and ``reject_code`` (index into ``reject_reasons``, -1 if none).
    """

    def __init__(
        self,
        arrival_s: np.ndarray | Sequence[float],
        input_tokens: np.ndarray | Sequence[int],
        output_tokens: np.ndarray | Sequence[int],
        prefix_hashes: Sequence[np.ndarray | None] | None = None,
        prefix_block_tokens: int | None = None,
    ):
        self.arrival_s = np.array(arrival_s, dtype=np.float64)
        self.input_tokens = np.array(input_tokens, dtype=np.int64)
        self.output_tokens = np.array(output_tokens, dtype=np.int64)
        n = len(self.arrival_s)
        if self.arrival_s.ndim != 1 or self.input_tokens.shape != (n,) or self.output_tokens.shape != (n,):
            raise TraceError(
                "RequestRecorder: arrival_s, input_tokens and output_tokens must be 1-D and equally long "
                f"(got {self.arrival_s.shape}, {self.input_tokens.shape}, {self.output_tokens.shape})"
            )
        for name, arr in (("input_tokens", self.input_tokens), ("output_tokens", self.output_tokens)):
            if n and arr.min() < 1:
                i = int(np.argmin(arr))
                raise TraceError(f"RequestRecorder: request {i}: {name} must be >= 1, got {int(arr[i])}")
        if n and not np.all(np.isfinite(self.arrival_s)):
            i = int(np.argmin(np.isfinite(self.arrival_s)))
            raise TraceError(f"RequestRecorder: request {i}: arrival_s must be finite, got {self.arrival_s[i]}")
        if prefix_hashes is not None:
            if len(prefix_hashes) != n:
                raise TraceError(f"RequestRecorder: prefix_hashes has {len(prefix_hashes)} entries for {n} requests")
            if not prefix_block_tokens or prefix_block_tokens <= 0:
                raise TraceError(
                    f"RequestRecorder: prefix_hashes need a positive prefix_block_tokens, got {prefix_block_tokens!r}"
                )
        self.prefix_hashes = list(prefix_hashes) if prefix_hashes is not None else None
        self.prefix_block_tokens = int(prefix_block_tokens) if prefix_block_tokens else None
        self.n = n
        # Plain lists: engines read lengths on their hot path, where list indexing
        # is several times cheaper than numpy scalar access.
        self.input_list: list[int] = self.input_tokens.tolist()
        self.output_list: list[int] = self.output_tokens.tolist()
        self.replica = np.full(n, -1, dtype=np.int32)
        self.first_scheduled_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.cached_tokens = np.zeros(n, dtype=np.int64)
        self.generated_tokens = np.zeros(n, dtype=np.int64)
        self.status = np.zeros(n, dtype=np.int8)
        self.reject_code = np.full(n, -1, dtype=np.int16)
        self.reject_reasons: list[str] = list(ENGINE_REJECT_REASONS)
        self._reason_code = {r: i for i, r in enumerate(self.reject_reasons)}

    @classmethod
    def from_trace(cls, trace: Trace) -> RequestRecorder:
        """Recorder for every request of a ``oserve_rl.workload.Trace``."""
        return cls(trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.prefix_hashes,
                   trace.prefix_block_tokens)

    def __len__(self) -> int:
        return self.n

    # ------------------------------------------------------------- outcomes
    def reject(self, rid: int, reason: str, now_s: float | None = None) -> None:
        """Mark a request rejected for ``reason`` (a short snake_case string)."""
        code = self._reason_code.get(reason)
        if code is None:
            code = len(self.reject_reasons)
            self.reject_reasons.append(reason)
            self._reason_code[reason] = code
        self.status[rid] = STATUS_REJECTED
        self.reject_code[rid] = code
        if now_s is not None:
            self.finish_s[rid] = now_s

    def reject_reason(self, rid: int) -> str | None:
        code = int(self.reject_code[rid])
        return self.reject_reasons[code] if code >= 0 else None

    def reject_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.reject_code[self.status == STATUS_REJECTED], return_counts=True)
        return {self.reject_reasons[int(c)]: int(k) for c, k in zip(codes, counts)}

    # ------------------------------------------------------------ invariants
    def check_invariants(self) -> None:
        """Every request is completed, rejected with a reason, or still pending; times are ordered."""
        st = self.status
        if not np.isin(st, (STATUS_PENDING, STATUS_COMPLETED, STATUS_REJECTED)).all():
            raise AssertionError(f"unknown status codes {sorted(set(st.tolist()))}")
        rej = st == STATUS_REJECTED
        if (self.reject_code[rej] < 0).any():
            raise AssertionError("rejected request without a reason")
        if (self.reject_code[~rej] >= 0).any():
            raise AssertionError("reason recorded for a request that is not rejected")
        done = st == STATUS_COMPLETED
        a, s, f, e = self.arrival_s[done], self.first_scheduled_s[done], self.first_token_s[done], self.finish_s[done]
        if not (np.isfinite(s).all() and np.isfinite(f).all() and np.isfinite(e).all()):
            raise AssertionError("completed request with a missing timestamp")
        eps = 1e-9 * np.maximum(1.0, np.abs(e))
        if (s < a - eps).any() or (f < s - eps).any() or (e < f - eps).any():
            bad = int(np.flatnonzero((s < a - eps) | (f < s - eps) | (e < f - eps))[0])
            raise AssertionError(f"request timestamps out of order (completed request #{bad})")
        if (self.generated_tokens[done] != self.output_tokens[done]).any():
            raise AssertionError("completed request with fewer tokens than asked")

    # --------------------------------------------------------------- export
    def frame(self) -> pd.DataFrame:
        """One row per request with inputs, outcomes and derived latencies."""
        reason = np.array([""] + self.reject_reasons, dtype=object)[self.reject_code.astype(np.int64) + 1]
        out = self.output_tokens
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(out > 1, (self.finish_s - self.first_token_s) / (out - 1), np.nan)
        cols: dict[str, Any] = {
            "request_id": np.arange(self.n, dtype=np.int64),
            "arrival_s": self.arrival_s,
            "input_tokens": self.input_tokens,
            "output_tokens": out,
            "replica": self.replica,
            "status": np.array(STATUS_NAMES, dtype=object)[self.status],
            "reject_reason": reason,
            "first_scheduled_s": self.first_scheduled_s,
            "first_token_s": self.first_token_s,
            "finish_s": self.finish_s,
            "queue_s": self.first_scheduled_s - self.arrival_s,
            "ttft_s": self.first_token_s - self.arrival_s,
            "tpot_s": tpot,
            "e2e_s": self.finish_s - self.arrival_s,
            "preemptions": self.preemptions,
            "cached_tokens": self.cached_tokens,
            "generated_tokens": self.generated_tokens,
        }
        frame = pd.DataFrame(cols)
        frame.loc[self.status != STATUS_COMPLETED, ["e2e_s", "tpot_s"]] = np.nan
        return frame
