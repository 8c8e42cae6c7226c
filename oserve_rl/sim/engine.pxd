# Types for compiling engine.py with Cython (an "augmenting" .pxd: engine.py stays the one source of the
# rules and runs as plain Python where no compiled build is present). Integers are C longs: token, block
# and step counts stay far below 2**62; division and modulo keep Python's semantics (cdivision off).
import cython

from oserve_rl.perf.kernel cimport IterationCost
from oserve_rl.sim.kv_cache cimport BlockPool

cdef class _Req:
    cdef public long rid, prompt, out, n_out, computed, n_blocks, n_reg, kv_pre, cbase, nbase
    cdef public list held
    cdef public object keys
    cdef public bint decoding


cdef class ReplicaEngine:
    cdef public object perf, cfg, rec, waiting
    cdef public BlockPool pool
    cdef public IterationCost _cost
    cdef public str mode
    cdef public bint fast, chunked, prefix_caching, accepting
    cdef public long replica_id, block_size, kv_capacity_blocks, max_model_len, token_budget, max_num_seqs
    cdef public list running, _g_heap
    cdef public dict _reqs, _coeffs, _g_hist
    cdef public double _clock, _rate_tok_s
    cdef public long _outstanding, _admitted, _gm, _G, _g_csum
    cdef public long num_iterations, num_exact_steps, num_fast_jumps, num_group_steps, num_preemptions

    cpdef long outstanding_tokens_at(self, double t_s)
    cpdef bint add_request(self, long rid, double now_s, long kv_tokens=*)
    cpdef advance_to(self, double t_s)
    @cython.locals(c=tuple)
    cdef (double, double) _coeff(self, long b)
    cdef _preempt(self, _Req r)
    @cython.locals(bs=long, num_tokens=long, hits=long, evictable=long, start=long, n=long, need=long, pool=BlockPool)
    cdef tuple _admission_plan(self, _Req r, long budget)
    @cython.locals(T=double, T_end=double, budget=long, num_tokens=long, pairs=double, d_seqs=long, d_ctx=long,
                   preempted=bint, sched=list, sched_n=list, finished=bint)
    cpdef _exact_step(self)
    @cython.locals(finished=bint, r=_Req, n=long, c=long, i=long)
    cdef bint _advance_scheduled(self, double T_end, list sched, list sched_n)
    @cython.locals(running=list, pool=BlockPool, bs=long, preempted=bint, r=_Req, victim=_Req, c=long, n=long,
                   need=long, ok=bint)
    cdef (long, long, double, long, long, bint) _schedule_running(self, long i, long budget, long num_tokens,
                                                                  double pairs, long d_seqs, long d_ctx,
                                                                  list sched, list sched_n)
    @cython.locals(end=long)
    cdef _register_prefix(self, _Req r, long tokens)
    @cython.locals(running=list, pool=BlockPool, r=_Req, max_seqs=long, start=long, n=long, need=long, hits=long,
                   plan=tuple)
    cdef (long, long, double, long, long) _admit_waiting(self, double T, long budget, long num_tokens, double pairs,
                                                          long d_seqs, long d_ctx, list sched, list sched_n)
    @cython.locals(running=list, gm=long, n=long, G=long, bs=long, hist=dict, heap=list, csum=long, r=_Req, c=long,
                   cb=long, nb=long, key=long)
    cpdef _join(self)
    @cython.locals(gm=long, G=long, bs=long, running=list, i=long, r=_Req, c=long)
    cpdef _materialize(self)
    @cython.locals(bs=long, G=long, total=long, key=long, h=long, d=long)
    cdef long _group_blocks(self, long k)
    @cython.locals(running=list, pool=BlockPool, gm=long, budget=long, bs=long, G=long, g_need=long, free=long,
                   nrun=long, b=long,
                   i=long, r=_Req, c=long, n=long, need=long, T=double, num_tokens=long, d_seqs=long, d_ctx=long,
                   pairs=double, sched=list, sched_n=list, T_end=double, finished=bint)
    cdef bint _group_step(self)
    @cython.locals(keep=list, pool=BlockPool, running=list, gm=long, G=long, bs=long, hist=dict, csum=long, i=long,
                   r=_Req,
                   n_out=long, rid=long, cb=long, key=long, h=long, heap=list, rest=list)
    cdef _finish_done(self, double T_end)
    @cython.locals(running=list, gm=long, i=long, nd=long, cap=long, k_done=long, ctx=long, r=_Req, rem=long,
                   base=double, per=double, T=double, k=long, bs=long, alloc=long, lo=long, hi=long, mid=long,
                   s=long, c=long, nb=long)
    cdef bint _fast_jump(self, double t_s)
    @cython.locals(T=double, T_end=double)
    cdef _commit_jump(self, long k, long k_done, long nd, long ctx, double base, double per, long alloc)
    @cython.locals(budget_left=long, pool=BlockPool)
    cdef long _decode_cap(self, long nd)
    @cython.locals(running=list, nd=long, gm=long, cap=long, G=long, k_done=long, ctx=long, r=_Req, rem=long,
                   base=double, per=double, k=long, bs=long, alloc=long)
    cdef long _decode_steps_before(self, double t_s)
    @cython.locals(nd=long, cap=long, G=long, k_done=long, ctx=long, base=double, per=double, T=double, k=long,
                   bs=long, alloc=long, lo=long, hi=long, mid=long)
    cdef bint _group_jump(self, double t_s)


@cython.locals(a=double, b=double, d=double, j=long)
cdef long _steps_starting_before(double T, double t_s, double base, double per, long nd, long ctx)
