# Types for compiling kv_cache.py with Cython (see engine.pxd for how the compiled build works): the block
# accounting the engine touches at every allocation and release.
import cython

cdef class BlockPool:
    cdef public long capacity_blocks, free_anon, evictions, hit_blocks
    cdef public object free_cached  # OrderedDict: key -> None, oldest first
    cdef public dict ref

    @cython.locals(hits=long, evictable=long, j=long)
    cpdef tuple lookup(self, list keys, long max_blocks)
    @cython.locals(j=long)
    cpdef acquire(self, list keys, long n, list held)
    @cython.locals(anon=long, rest=long)
    cpdef allocate(self, long n)
    @cython.locals(j=long)
    cpdef register(self, list keys, long start, long end, list held)
    cpdef release(self, list held, long n_blocks)
