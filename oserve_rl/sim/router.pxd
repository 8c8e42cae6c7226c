# Types for compiling router.py with Cython (see engine.pxd for how the compiled build works): the loops that
# read every candidate replica's outstanding work at each arrival. Replicas stay Python objects (a router
# also routes to not-ready stand-ins and, in tests, to any ReplicaView).
import cython

@cython.locals(best=long, i=long, tokens=object, best_tokens=object)
cpdef object _least_work(object replicas, double now_s)

@cython.locals(best=long, best_score=double, k=long, score=double)
cpdef long _least_work_per_weight(object replicas, list subset, list inv_weight, double now_s, bint estimate)
