"""The scalar hot path of ``ReplicaPerf.iteration_s_agg``: the simulator calls it once per engine iteration.

``ReplicaPerf`` precomputes everything that depends only on counts (the linear
layers per token count, decode attention per batch size, the prefill
attention curve); what is left per call is a few table look-ups and one
piecewise-linear curve. ``IterationCost`` holds those tables in a form that
Cython compiles to C (``kernel.pxd``), so a compiled engine calls it without
going through Python. Without the compiled build it is the same code run as
Python. Counts beyond the tables fall back to ``ReplicaPerf``'s numpy path.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["IterationCost"]


class IterationCost:
    """``iteration_s_agg`` of one replica config (built by ``ReplicaPerf``; not meant to be built by hand)."""

    def __init__(self, perf: Any, linear_s: list, dec_base_s: list, dec_slope_s: list, pair_knots: list,
                 pair_eff: list, pair_c0_s: float, q_flops_per_pair: float, attn_peak_flops: float, layers: int,
                 step_overhead_s: float, per_seq_overhead_s: float):
        self.perf = perf  # for counts beyond the tables (rare: > 16,384 tokens or > 4,096 decodes)
        self.linear_s = [float(v) for v in linear_s]
        self.n_linear = len(self.linear_s)
        self.dec_base_s = [float(v) for v in dec_base_s]
        self.dec_slope_s = [float(v) for v in dec_slope_s]
        self.n_dec = len(self.dec_base_s)
        self.pair_knots = [float(v) for v in pair_knots]
        self.pair_eff = [float(v) for v in pair_eff]
        self.n_knots = len(self.pair_knots)
        self.pair_c0_s = float(pair_c0_s)
        self.q_flops_per_pair = float(q_flops_per_pair)
        self.attn_peak_flops = float(attn_peak_flops)
        self.layers = int(layers)
        self.step_overhead_s = float(step_overhead_s)
        self.per_seq_overhead_s = float(per_seq_overhead_s)
        self.lm_head_s: dict = {}  # num_seqs -> seconds, filled on first use

    def pair_efficiency(self, pairs: float) -> float:
        """The prefill attention efficiency curve: piecewise linear in log2(pairs)."""
        lx = math.log2(pairs) if pairs > 1.0 else 0.0
        k = self.pair_knots
        v = self.pair_eff
        n = self.n_knots
        if lx <= k[0]:
            return v[0]
        if lx >= k[n - 1]:
            return v[n - 1]
        lo = 0
        hi = n
        while lo < hi:  # bisect_right: first knot > lx
            mid = (lo + hi) // 2
            if lx < k[mid]:
                hi = mid
            else:
                lo = mid + 1
        i = lo - 1
        w = (lx - k[i]) / (k[i + 1] - k[i])
        return v[i] * (1 - w) + v[i + 1] * w

    def attn_prefill_s(self, pairs: float) -> float:
        """All layers' attention for prefill chunks totalling ``pairs`` causal pairs."""
        if pairs <= 0:
            return 0.0
        return self.layers * (self.pair_c0_s + self.q_flops_per_pair * pairs
                              / (self.attn_peak_flops * self.pair_efficiency(pairs)))

    def lm_head(self, num_seqs: int) -> float:
        v = self.lm_head_s.get(num_seqs)
        if v is None:
            v = self.lm_head_s[num_seqs] = self.perf.lm_head_scalar(num_seqs)
        return v

    def iteration_s_agg(self, num_tokens: int, num_seqs: int, prefill_attn_pairs: float, decode_seqs: int,
                        decode_context_tokens: int) -> float:
        if num_tokens <= 0:
            return 0.0
        if num_tokens < self.n_linear:
            lin = self.linear_s[num_tokens]
        else:
            lin = self.perf.linear_s(num_tokens)
        t = lin + self.lm_head(num_seqs)
        if prefill_attn_pairs > 0:
            t += self.attn_prefill_s(prefill_attn_pairs)
        if decode_seqs > 0:
            if decode_seqs < self.n_dec:
                t += self.dec_base_s[decode_seqs] + self.dec_slope_s[decode_seqs] * decode_context_tokens
            else:
                base, slope = self.perf.decode_attn_coeffs(decode_seqs)
                t += base + slope * decode_context_tokens
        return t + (self.step_overhead_s + self.per_seq_overhead_s * num_seqs)
