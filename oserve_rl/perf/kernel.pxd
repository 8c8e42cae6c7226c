# Types for compiling kernel.py with Cython (see oserve_rl/sim/engine.pxd for how the compiled build works).
import cython

cdef class IterationCost:
    cdef public object perf
    cdef public list linear_s, dec_base_s, dec_slope_s, pair_knots, pair_eff
    cdef public dict lm_head_s
    cdef public long n_linear, n_dec, n_knots, layers
    cdef public double pair_c0_s, q_flops_per_pair, attn_peak_flops, step_overhead_s, per_seq_overhead_s

    @cython.locals(lx=double, k=list, v=list, n=long, lo=long, hi=long, mid=long, i=long, w=double)
    cpdef double pair_efficiency(self, double pairs)
    cpdef double attn_prefill_s(self, double pairs)
    @cython.locals(v=object)
    cpdef double lm_head(self, long num_seqs)
    @cython.locals(lin=double, t=double, base=double, slope=double)
    cpdef double iteration_s_agg(self, long num_tokens, long num_seqs, double prefill_attn_pairs, long decode_seqs,
                                 long decode_context_tokens)
