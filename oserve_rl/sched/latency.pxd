# Types for compiling latency.py with Cython (see oserve_rl/sim/engine.pxd for how the compiled build works):
# the p99 proxy's fixed point and quantile, which rank every dispatch OServe and the env consider.
import cython

from oserve_rl.perf.kernel cimport IterationCost

@cython.locals(prompt_rate=double, prompt_sq=double, decode_rate=double, ctx_sum=double, kv_sum=double, j=long,
               xj=double, e_in=double, ctx_per_seq=double, b_max=double, tpot=double, t_chunk=double, f=double,
               b_seqs=double, b=long, chunk=long, ctx=long, d=double, new=double, per_token=double)
cpdef tuple steady_state(IterationCost cost, list x, list inp, list out, long budget, long max_num_seqs,
                         double kv_capacity_tokens, long iterations)

@cython.locals(r=double, diff=double)
cpdef long _round(double v)

@cython.locals(n=long, total=double, tail=double, hi=double, lo=double, i=long, top=double, mid=double, over=double,
               room=double, z=double)
cpdef double mixture_quantile_s(list w, list tt, list tp, list mu, list sg, double q)
