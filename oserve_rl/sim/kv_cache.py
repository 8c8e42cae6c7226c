"""Paged KV-cache block pool with automatic prefix caching (vLLM v1 semantics).

A replica's KV memory is ``capacity_blocks`` blocks of ``block_size`` tokens.
Blocks come in two kinds, and the pool only tracks what matters for each:

- *anonymous* blocks (no hash: generated tokens, partial blocks, prompts of
  requests without prefix hashes) are interchangeable, so the pool only
  counts the free ones (``free_anon``). This keeps the common case O(1) per
  allocation instead of O(blocks).
- *cached* blocks carry the chained hash of a FULL prompt block. In use they
  are ref-counted in ``ref`` (hash -> number of requests holding it). When
  the last holder frees one it keeps its hash and joins ``free_cached``, an
  LRU list (oldest first) from which it can be hit again or evicted.

Allocation takes anonymous free blocks first and evicts cached free blocks
LRU-first only when none are left. vLLM keeps both kinds in one free queue, so
it may evict a cached block while never-used blocks are still free; preferring
anonymous blocks only ever keeps more prefixes cached (documented deviation,
see docs/engine.md).

Prefix hashes come per ``prefix_block_tokens`` tokens (Mooncake: 512, where a
hash identifies the whole prefix up to the end of its block). Sub-block ``j``
(tokens ``[j*bs, (j+1)*bs)``) is identified by ``(h, j)`` where ``h`` is the
hash of the prefix block holding its last token: equal keys then mean equal
prefixes up to the end of the sub-block, i.e. the keys are chained too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["BlockPool", "sub_block_keys"]


def sub_block_keys(
    prefix_hashes: Sequence[int], prompt_tokens: int, prefix_block_tokens: int, block_size: int
) -> list[tuple[int, int]]:
    """Chained keys of the full ``block_size`` blocks of a prompt that the hashes cover.

    Only blocks that lie entirely inside the prompt and inside the hashed span
    get a key; the rest of the prompt (and every generated token) never hits.
    """
    covered = min(prompt_tokens, len(prefix_hashes) * prefix_block_tokens)
    n = covered // block_size
    if n <= 0:
        return []
    if prefix_block_tokens % block_size == 0:
        per = prefix_block_tokens // block_size
        return [(prefix_hashes[j // per], j) for j in range(n)]
    return [(prefix_hashes[((j + 1) * block_size - 1) // prefix_block_tokens], j) for j in range(n)]


class BlockPool:
    """Free/used block accounting and the prefix cache of one replica."""

    __slots__ = ("capacity_blocks", "free_anon", "free_cached", "ref", "evictions", "hit_blocks")

    def __init__(self, capacity_blocks: int):
        self.capacity_blocks = int(capacity_blocks)
        self.free_anon = self.capacity_blocks
        # hash key -> None, oldest (first to evict) first.
        self.free_cached: OrderedDict[tuple[int, int], None] = OrderedDict()
        # hash key -> number of running requests holding that block (> 0).
        self.ref: dict[tuple[int, int], int] = {}
        self.evictions = 0
        self.hit_blocks = 0

    # ----------------------------------------------------------- accounting
    @property
    def num_free(self) -> int:
        return self.free_anon + len(self.free_cached)

    @property
    def used_blocks(self) -> int:
        return self.capacity_blocks - self.free_anon - len(self.free_cached)

    @property
    def cached_blocks(self) -> int:
        """Blocks that hold a prefix hash (in use or free-but-reusable)."""
        return len(self.ref) + len(self.free_cached)

    # ------------------------------------------------------------ operations
    def lookup(self, keys: list[tuple[int, int]], max_blocks: int) -> tuple[int, int]:
        """Longest run of cached blocks at the start of ``keys[:max_blocks]``.

        Returns ``(hit_blocks, evictable)``: ``evictable`` of the hits sit in the
        free list, so taking them removes them from the free count.
        """
        ref, free = self.ref, self.free_cached
        hits = evictable = 0
        for j in range(min(max_blocks, len(keys))):
            k = keys[j]
            if k in ref:
                hits += 1
            elif k in free:
                hits += 1
                evictable += 1
            else:
                break
        return hits, evictable

    def acquire(self, keys: list[tuple[int, int]], n: int, held: list[tuple[int, int]]) -> None:
        """Take a reference on the first ``n`` keys (prefix hits), appending them to ``held``."""
        ref, free = self.ref, self.free_cached
        for j in range(n):
            k = keys[j]
            c = ref.get(k)
            if c is None:
                del free[k]
                ref[k] = 1
            else:
                ref[k] = c + 1
            held.append(k)
        self.hit_blocks += n

    def allocate(self, n: int) -> None:
        """Take ``n`` free blocks (caller checked ``n <= num_free``): anonymous first, then LRU eviction."""
        anon = self.free_anon
        if n <= anon:
            self.free_anon = anon - n
            return
        self.free_anon = 0
        rest = n - anon
        if rest > len(self.free_cached):
            raise RuntimeError(f"KV pool over-allocated: asked {n} blocks, {anon + len(self.free_cached)} free")
        pop = self.free_cached.popitem
        for _ in range(rest):
            pop(last=False)
        self.evictions += rest

    def register(self, keys: list[tuple[int, int]], start: int, end: int, held: list[tuple[int, int]]) -> None:
        """Give the request's freshly computed full blocks ``start..end-1`` their hashes.

        A key that is already cached (computed concurrently by another request,
        or left behind after its chain broke) is not registered twice: this
        request's copy stays anonymous, as a duplicate block would in vLLM.
        """
        ref, free = self.ref, self.free_cached
        for j in range(start, end):
            k = keys[j]
            if k in ref or k in free:
                continue
            ref[k] = 1
            held.append(k)

    def release(self, held: list[tuple[int, int]], n_blocks: int) -> None:
        """Free a request's ``n_blocks`` blocks, ``held`` of them cached.

        Tail blocks are freed first (as vLLM does), so a prompt's last blocks
        are evicted before its first ones and shared prefixes survive longest.
        """
        ref, free = self.ref, self.free_cached
        for k in reversed(held):
            c = ref[k] - 1
            if c:
                ref[k] = c
            else:
                del ref[k]
                free[k] = None
        self.free_anon += n_blocks - len(held)
