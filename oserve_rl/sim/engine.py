"""One replica's vLLM-v1-like scheduler on the calibrated performance model.

Rules (one engine iteration; see docs/engine.md for the full write-up):

1. Token budget ``max_num_batched_tokens``. RUNNING requests go first, in
   admission order: a decoding request takes 1 token, a request still in
   (chunked) prefill takes ``min(remaining, budget)``. Each needs KV blocks
   for every token it will have computed by the end of the iteration; if the
   pool cannot supply them, the most recently admitted running request is
   preempted (recompute: its blocks are freed, its computed tokens reset, it
   goes to the FRONT of the waiting queue) until the allocation fits, or the
   request itself was the one preempted.
2. If nobody was preempted, WAITING requests are admitted FCFS while budget,
   ``max_num_seqs`` and KV blocks allow; the first that does not fit stops
   admission (no skipping). A fresh or preempted request first reuses the
   longest run of cached full prompt blocks (never the whole prompt), then
   schedules ``min(rest, budget)`` tokens (all of them if chunked prefill is
   off, else it waits).
3. The iteration lasts ``perf.iteration_s_agg`` of the batch. At its end every
   request whose computed tokens reach its token count samples a token: the
   first one is the TTFT; a request finishes when it has ``output_tokens``.

Two modes, same rules. ``exact`` runs one Python step per iteration (the
reference). ``fast`` jumps over runs of pure-decode iterations with a fixed
batch in closed form (``perf.decode_step_coeffs``): up to the next completion,
the next external event time, or the last iteration whose KV allocations
surely succeed, whichever is first. Everything else runs as an exact step.
"""

from __future__ import annotations

import math
from collections import deque
from heapq import heappop, heappush
from typing import Any, Literal

from oserve_rl.errors import ConfigError, DoesNotFitError
from oserve_rl.sim.kv_cache import BlockPool, sub_block_keys
from oserve_rl.sim.requests import STATUS_COMPLETED, STATUS_PENDING, RequestRecorder

__all__ = ["ReplicaEngine", "EngineMode"]

EngineMode = Literal["fast", "exact"]
_INF = math.inf
# Fast mode forms a decode group (see _join) once this many requests run: below it, touching each
# request per iteration costs less than the group's bookkeeping. Results do not depend on it.
GROUP_MIN_BATCH = 16


def _default_engine_config() -> Any:
    from oserve_rl.perf import EngineConfig

    return EngineConfig()


class _Req:
    """In-flight state of one request on this replica (one object per request, not per iteration)."""

    __slots__ = ("rid", "prompt", "out", "n_out", "computed", "n_blocks", "held", "keys", "n_reg", "kv_pre",
                 "decoding", "cbase", "nbase")

    def __init__(self, rid: int, prompt: int, out: int, n_out: int, keys: list | None, kv_pre: int):
        self.rid = rid
        self.prompt = prompt  # input tokens
        self.out = out  # output tokens wanted
        self.n_out = n_out  # output tokens sampled so far
        self.computed = 0  # tokens whose KV is computed
        self.n_blocks = 0  # KV blocks held
        self.held: list = []  # prefix-cache keys of held cached blocks
        self.keys = keys  # chained keys of hashable prompt blocks, or None
        self.n_reg = 0  # prompt blocks already looked at for registration
        self.kv_pre = kv_pre  # tokens arriving with KV (migration); consumed at admission
        self.decoding = False  # computed == tokens - 1 and a token was sampled: next step is a decode
        # In the decode group (fast mode): computed = cbase + G, n_out = nbase + G (see ReplicaEngine._join)
        self.cbase = 0
        self.nbase = 0


class ReplicaEngine:
    """A single vLLM-like replica (continuous batching, chunked prefill, paged KV, prefix cache).

    The engine has a clock: the time its next iteration may start. ``advance_to(t)``
    runs every iteration that starts before ``t``; a request added at ``t`` joins
    the first iteration starting at or after ``t``. Per-request inputs are read
    from, and outcomes written to, the shared ``recorder``.
    """

    def __init__(
        self,
        perf: Any,
        engine_cfg: Any = None,
        mode: EngineMode = "fast",
        recorder: RequestRecorder | None = None,
        replica_id: int = 0,
    ):
        if mode not in ("fast", "exact"):
            raise ConfigError(f"ReplicaEngine: mode must be 'fast' or 'exact', got {mode!r}")
        if recorder is None:
            raise ConfigError("ReplicaEngine: a RequestRecorder is required (requests are read from it by id)")
        cfg = engine_cfg if engine_cfg is not None else _default_engine_config()
        bs = int(cfg.block_size)
        if bs <= 0 or cfg.max_num_batched_tokens <= 0 or cfg.max_num_seqs <= 0:
            raise ConfigError(
                f"engine config: block_size, max_num_batched_tokens and max_num_seqs must be > 0 "
                f"(got {cfg.block_size}, {cfg.max_num_batched_tokens}, {cfg.max_num_seqs})"
            )
        self.perf = perf
        self.cfg = cfg
        self.mode: EngineMode = mode
        self.fast = mode == "fast"
        self.rec = recorder
        self.replica_id = int(replica_id)
        self.block_size = bs
        self.kv_capacity_blocks = int(perf.kv_capacity_tokens(cfg)) // bs
        if self.kv_capacity_blocks <= 0:
            raise DoesNotFitError(f"replica {replica_id}: KV cache has no room for one {bs}-token block")
        model_len = getattr(perf.model, "max_context", None) if getattr(perf, "model", None) is not None else None
        self.max_model_len = int(cfg.max_model_len or model_len or 1 << 62)
        self.token_budget = int(cfg.max_num_batched_tokens)
        self.max_num_seqs = int(cfg.max_num_seqs)
        self.chunked = bool(cfg.enable_chunked_prefill)
        self.prefix_caching = bool(cfg.enable_prefix_caching)
        self.pool = BlockPool(self.kv_capacity_blocks)
        self.running: list[_Req] = []
        self.waiting: deque[_Req] = deque()
        self.accepting = True
        self._reqs: dict[int, _Req] = {}
        self._clock = 0.0
        self._rate_tok_s = 0.0  # tokens per second of the last iteration(s) run: for load estimates between events
        self._outstanding = 0
        self._cost = perf.cost  # IterationCost: iteration_s_agg without a Python call when compiled
        self._coeffs: dict[int, tuple[float, float]] = {}
        self._admitted = 0
        # Decode group (fast mode only): running[:_gm] are decoding requests whose computed / n_out /
        # n_blocks are not written each iteration but derived from the group's tick counter _G, so an
        # iteration costs O(1) for them instead of O(batch). See _join / _materialize and docs/engine.md.
        self._gm = 0
        self._G = 0
        self._g_csum = 0  # sum of cbase over the group: total context = _g_csum + _gm * _G
        self._g_hist: dict[int, int] = {}  # cbase % block_size -> members: who needs a new block at which tick
        self._g_heap: list[tuple[int, int]] = []  # (tick at which the member has all its outputs, rid)
        # Counters (diagnostics, and proof in tests that the fast path is taken).
        self.num_iterations = 0
        self.num_exact_steps = 0
        self.num_fast_jumps = 0
        self.num_group_steps = 0  # exact steps run with the decode group ticking in O(1)
        self.num_preemptions = 0

    # ------------------------------------------------------------ properties
    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def kv_used_blocks(self) -> int:
        return self.pool.used_blocks

    @property
    def outstanding_tokens(self) -> int:
        """Tokens still to compute (prefill, recompute and decode) for every request here."""
        return self._outstanding

    def outstanding_tokens_at(self, t_s: float) -> int:
        """``outstanding_tokens`` once every iteration that starts before ``t_s`` has run: what a
        least-work router compares at an arrival at ``t_s``.

        In fast mode, while the batch stays a fixed set of decodes up to ``t_s`` (no completion, admission
        or KV shortage before it), that is a closed form and the engine is left where it is: it covers the
        stretch later in one jump instead of stopping at every arrival routed elsewhere. Otherwise the
        engine is advanced to ``t_s``. Either way the number is exact.
        """
        if self._clock >= t_s or not (self.running or self.waiting):
            return self._outstanding
        if self.fast:
            k = self._decode_steps_before(t_s)
            if k >= 0:
                return self._outstanding - len(self.running) * k
        self.advance_to(t_s)
        return self._outstanding

    def estimated_outstanding_tokens(self, t_s: float) -> float:
        """``outstanding_tokens`` at ``t_s`` without simulating up to it (O(1)).

        Extrapolates the token rate of the last iteration(s) run; exact at the
        engine's clock, an estimate after it. Routers that would otherwise
        bring every replica up to each arrival use it (``estimate_load``).
        """
        out = self._outstanding
        if not out or t_s <= self._clock:
            return out
        return max(0.0, out - self._rate_tok_s * (t_s - self._clock))

    @property
    def queued_tokens(self) -> int:
        """Prompt tokens of the requests waiting for admission (Llumnix's queued demand)."""
        return sum(r.prompt for r in self.waiting)

    @property
    def busy_until_s(self) -> float:
        """End of the last iteration run: the earliest start of the next one."""
        return self._clock

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def in_flight(self) -> list[int]:
        """Ids of running then waiting requests."""
        return [r.rid for r in self.running] + [r.rid for r in self.waiting]

    def next_event_s(self) -> float:
        """Start time of the next iteration (inf when idle).

        Nothing changes inside the engine before this time. ``advance_to`` with
        any later time is cheap in fast mode: prefer calling it at the times of
        external events (arrivals, switches) over stepping event by event.
        """
        return self._clock if (self.running or self.waiting) else _INF

    # ---------------------------------------------------------------- input
    def add_request(self, rid: int, now_s: float, kv_tokens: int = 0) -> bool:
        """Queue request ``rid`` (read from the recorder) at ``now_s``.

        Returns False if it was rejected (reason recorded). A request that comes
        back from another replica resumes with the outputs it already has
        (``recorder.generated_tokens``) and recomputes them, unless ``kv_tokens``
        of its KV arrive with it.
        """
        if not self.accepting:
            raise RuntimeError(f"replica {self.replica_id} is draining and does not accept requests")
        if self.running or self.waiting:
            if self._clock < now_s:
                self.advance_to(now_s)
        if not (self.running or self.waiting) and self._clock < now_s:
            self._clock = now_s
        rec = self.rec
        prompt = rec.input_list[rid]
        out = rec.output_list[rid]
        rec.replica[rid] = self.replica_id
        bs = self.block_size
        if prompt + out > self.max_model_len:
            rec.reject(rid, "exceeds_max_model_len", now_s)
            return False
        peak = prompt + out - 1  # tokens in KV during the last decode step
        if (peak + bs - 1) // bs > self.kv_capacity_blocks:
            rec.reject(rid, "exceeds_kv_capacity", now_s)
            return False
        if not self.chunked and peak > self.token_budget:
            rec.reject(rid, "exceeds_max_num_batched_tokens", now_s)
            return False
        n_out = int(rec.generated_tokens[rid])
        keys = None
        if self.prefix_caching and rec.prefix_hashes is not None:
            h = rec.prefix_hashes[rid]
            if h is not None and len(h):
                keys = sub_block_keys(h.tolist() if hasattr(h, "tolist") else list(h), prompt,
                                      rec.prefix_block_tokens, bs) or None
        kv_pre = min(int(kv_tokens), prompt + n_out - 1) if kv_tokens else 0
        r = _Req(rid, prompt, out, n_out, keys, kv_pre)
        self._reqs[rid] = r
        self.waiting.append(r)
        self._outstanding += peak - kv_pre
        return True

    # --------------------------------------------------------------- driving
    def advance_to(self, t_s: float) -> None:
        """Run every iteration that starts before ``t_s`` (``inf``: until idle)."""
        fast = self.fast
        while self._clock < t_s and (self.running or self.waiting):
            if fast and self._fast_jump(t_s):
                continue
            self._exact_step()

    def drain_all(self) -> list[int]:
        """Stop accepting new requests; in-flight ones finish here. Returns their ids."""
        self.accepting = False
        return self.in_flight()

    def pop_running(self) -> list[tuple[int, int]]:
        """Remove every running and waiting request, freeing its KV.

        Returns ``(request_id, kv_tokens)`` pairs (tokens of KV each held) so the
        caller can migrate them (``add_request(rid, t, kv_tokens=...)``) or
        re-queue them (``add_request(rid, t)``: recompute).
        """
        self._materialize()
        out = []
        gen = self.rec.generated_tokens
        for r in list(self.running) + list(self.waiting):
            out.append((r.rid, r.computed))
            gen[r.rid] = r.n_out
            self.pool.release(r.held, r.n_blocks)
            del self._reqs[r.rid]
        self.running = []
        self.waiting.clear()
        self._outstanding = 0
        return out

    # ------------------------------------------------------------ internals
    def _coeff(self, b: int) -> tuple[float, float]:
        c = self._coeffs.get(b)
        if c is None:
            base, per = self.perf.decode_step_coeffs(b)
            c = self._coeffs[b] = (float(base), float(per))
        return c

    def _preempt(self, r: _Req) -> None:
        self.pool.release(r.held, r.n_blocks)
        r.held = []
        r.n_blocks = 0
        r.n_reg = 0
        self._outstanding += r.computed
        r.computed = 0
        r.decoding = False
        self.waiting.appendleft(r)
        self.rec.preemptions[r.rid] += 1
        self.num_preemptions += 1

    def _admission_plan(self, r: _Req, budget: int) -> tuple[int, int, int, int] | None:
        """(start_tokens, new_tokens, new_blocks, hit_blocks) to admit ``r`` now, or None if it does not fit."""
        bs = self.block_size
        num_tokens = r.prompt + r.n_out
        hits = evictable = 0
        if r.kv_pre:
            start = r.kv_pre
        elif r.keys is not None:
            hits, evictable = self.pool.lookup(r.keys, (num_tokens - 1) // bs)
            start = hits * bs
        else:
            start = 0
        n = num_tokens - start
        if n > budget:
            if not self.chunked:
                return None
            n = budget
        need = (start + n + bs - 1) // bs - hits
        pool = self.pool
        if need > pool.free_anon + len(pool.free_cached) - evictable:
            return None
        return start, n, need, hits

    def _exact_step(self) -> None:
        """Schedule and run one engine iteration (the reference semantics).

        In fast mode a decode group, if any, first gets the O(1) path (``_group_step``: same results);
        this body, the reference, runs with every request's fields explicit.
        """
        if self._gm:
            if self._group_step():
                return
            self._materialize()
        T = self._clock
        sched: list[_Req] = []
        sched_n: list[int] = []

        # 1. running requests, in admission order
        budget, num_tokens, pairs, d_seqs, d_ctx, preempted = self._schedule_running(
            0, self.token_budget, 0, 0.0, 0, 0, sched, sched_n)

        # 2. waiting requests, FCFS, only if nobody was preempted this iteration
        if not preempted:
            budget, num_tokens, pairs, d_seqs, d_ctx = self._admit_waiting(T, budget, num_tokens, pairs, d_seqs,
                                                                           d_ctx, sched, sched_n)

        if not sched:
            raise RuntimeError(
                f"replica {self.replica_id}: iteration at t={T} scheduled nothing "
                f"({len(self.running)} running, {len(self.waiting)} waiting, {self.pool.num_free} free blocks)"
            )

        # 3. run it
        T_end = T + self._cost.iteration_s_agg(num_tokens, len(sched), pairs, d_seqs, d_ctx)
        self._rate_tok_s = num_tokens / (T_end - T) if T_end > T else self._rate_tok_s
        self._clock = T_end
        self._outstanding -= num_tokens
        self.num_iterations += 1
        self.num_exact_steps += 1
        finished = self._advance_scheduled(T_end, sched, sched_n)
        if finished:
            self._finish_done(T_end)
        if self.fast and len(self.running) >= GROUP_MIN_BATCH:
            self._join()

    def _advance_scheduled(self, T_end: float, sched: list[_Req], sched_n: list[int]) -> bool:
        """Apply a finished iteration to the requests it scheduled: a chunk that reaches the end of the
        known tokens samples one output token (the first one sets TTFT). True if one has all its outputs."""
        finished = False
        rec = self.rec
        for r, n in zip(sched, sched_n):
            c = r.computed + n
            r.computed = c
            if c == r.prompt + r.n_out:
                r.n_out += 1
                r.decoding = True
                if r.n_out == 1:
                    rec.first_token_s[r.rid] = T_end
                if r.n_out >= r.out:
                    finished = True
        return finished

    def _schedule_running(self, i: int, budget: int, num_tokens: int, pairs: float, d_seqs: int, d_ctx: int,
                          sched: list[_Req], sched_n: list[int]) -> tuple[int, int, float, int, int, bool]:
        """Rule 1: running requests from index ``i``, in admission order, while the token budget lasts.

        Each takes its next chunk (one token when decoding, up to the budget when prefilling). A chunk that
        needs KV blocks the pool does not have preempts from the back of ``running`` (recompute), possibly
        the request itself, which then ends the loop. Returns the updated (budget, num_tokens, pairs, d_seqs,
        d_ctx) of the iteration being built and whether anything was preempted.
        """
        running = self.running
        pool = self.pool
        free_cached = pool.free_cached
        bs = self.block_size
        preempted = False
        while i < len(running) and budget > 0:
            r = running[i]
            c = r.computed
            n = r.prompt + r.n_out - c
            if n > budget:
                n = budget
            need = (c + n + bs - 1) // bs - r.n_blocks
            if need > 0:
                ok = True
                while need > pool.free_anon + len(free_cached):
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is r:
                        ok = False
                        break
                if not ok:
                    break
                pool.allocate(need)
                r.n_blocks += need
            if r.keys is not None and r.n_reg < len(r.keys):
                self._register_prefix(r, c + n)
            if r.decoding:
                d_seqs += 1
                d_ctx += c
            else:
                pairs += n * (c + (n + 1) * 0.5)
            sched.append(r)
            sched_n.append(n)
            num_tokens += n
            budget -= n
            i += 1
        return budget, num_tokens, pairs, d_seqs, d_ctx, preempted

    def _register_prefix(self, r: _Req, tokens: int) -> None:
        """Publish the full blocks of ``r``'s prompt prefix among its first ``tokens`` in the prefix cache."""
        end = min(len(r.keys), tokens // self.block_size)
        if end > r.n_reg:
            self.pool.register(r.keys, r.n_reg, end, r.held)
            r.n_reg = end

    def _admit_waiting(self, T: float, budget: int, num_tokens: int, pairs: float, d_seqs: int, d_ctx: int,
                       sched: list[_Req], sched_n: list[int]) -> tuple[int, int, float, int, int]:
        """Rule 2: admit waiting requests FCFS while budget, max_num_seqs and KV blocks allow.

        Step 2 of ``_exact_step`` and of ``_group_step``. Appends the admitted to ``running``, ``sched``
        and ``sched_n``; returns the updated (budget, num_tokens, pairs, d_seqs, d_ctx) of the iteration
        being built.
        """
        waiting = self.waiting
        running = self.running
        rec = self.rec
        pool = self.pool
        prefix = self.prefix_caching
        fss = rec.first_scheduled_s
        max_seqs = self.max_num_seqs
        while waiting and budget > 0 and len(running) < max_seqs:
            r = waiting[0]
            plan = self._admission_plan(r, budget)
            if plan is None:
                break
            start, n, need, hits = plan
            waiting.popleft()
            if hits:
                pool.acquire(r.keys, hits, r.held)
                rec.cached_tokens[r.rid] += start
                r.n_reg = hits
            pool.allocate(need)
            r.n_blocks = hits + need
            r.computed = start
            if r.kv_pre:
                r.kv_pre = 0  # already off outstanding_tokens since add_request
            else:
                self._outstanding -= start
            r.decoding = start == r.prompt + r.n_out - 1 and r.n_out > 0
            if prefix and r.keys is not None:
                self._register_prefix(r, start + n)
            if fss[r.rid] != fss[r.rid]:  # NaN: first admission
                fss[r.rid] = T
            running.append(r)
            if r.decoding:
                d_seqs += 1
                d_ctx += start
            else:
                pairs += n * (start + (n + 1) * 0.5)
            sched.append(r)
            sched_n.append(n)
            num_tokens += n
            budget -= n
        return budget, num_tokens, pairs, d_seqs, d_ctx

    # ------------------------------------------------------------ decode group (fast mode)
    # Decoding requests at the head of ``running`` form a group whose per-request fields are derived
    # from one tick counter _G: computed = cbase + G, n_out = nbase + G, n_blocks = ceil(computed / bs).
    # One decode token each per iteration is then G += 1; the blocks the tick needs are the members
    # whose computed is a multiple of bs (a histogram over cbase % bs); the next completion is the heap
    # minimum. Only joining, finishing and _materialize (before anything that reads or changes a
    # member's fields: preemption, pop_running, the general step) touch members one by one.

    def _join(self) -> None:
        """Add the decoding requests that follow the group in ``running`` to it (in order)."""
        running = self.running
        gm = self._gm
        n = len(running)
        G = self._G
        bs = self.block_size
        hist = self._g_hist
        heap = self._g_heap
        csum = self._g_csum
        while gm < n:
            r = running[gm]
            c = r.computed
            # Members must be plain decodes: next token = 1 token, blocks exactly cover computed, and no
            # prompt block left to register (all hold for a decoding request; checked, not assumed).
            if (not r.decoding or c != r.prompt + r.n_out - 1 or r.n_blocks != (c + bs - 1) // bs
                    or (r.keys is not None and r.n_reg < len(r.keys))):
                break
            cb = c - G
            r.cbase = cb
            r.nbase = nb = r.n_out - G
            key = cb % bs
            hist[key] = hist.get(key, 0) + 1
            csum += cb
            heappush(heap, (r.out - nb, r.rid))
            gm += 1
        self._gm = gm
        self._g_csum = csum

    def _materialize(self) -> None:
        """Write the group members' fields back and dissolve the group."""
        gm = self._gm
        if not gm:
            return
        G = self._G
        bs = self.block_size
        running = self.running
        for i in range(gm):
            r = running[i]
            c = r.cbase + G
            r.computed = c
            r.n_out = r.nbase + G
            r.n_blocks = (c + bs - 1) // bs
        self._gm = 0
        self._g_csum = 0
        self._g_hist = {}
        self._g_heap = []

    def _group_blocks(self, k: int) -> int:
        """Blocks the group allocates over its next ``k`` ticks: sum of ceil((c + k) / bs) - ceil(c / bs)."""
        bs = self.block_size
        G = self._G
        total = 0
        for key, h in self._g_hist.items():
            d = -(key + G) % bs  # first tick (from now) at which these members' computed is a multiple of bs
            if d < k:
                total += h * ((k - 1 - d) // bs + 1)
        return total

    def _group_step(self) -> bool:
        """``_general_step`` with the group ticking in O(1); False (nothing changed) if the general step is
        needed: the budget does not cover one token per member, or some allocation would preempt."""
        running = self.running
        gm = self._gm
        budget = self.token_budget
        if budget < gm:
            return False
        bs = self.block_size
        pool = self.pool
        G = self._G
        g_need = self._g_hist.get(-G % bs, 0)
        free = pool.free_anon + len(pool.free_cached) - g_need
        if free < 0:
            return False
        nrun = len(running)
        # The requests after the group (prefill chunks): make sure, without changing anything, that
        # their allocations fit too (the general step would preempt otherwise).
        b = budget - gm
        i = gm
        while i < nrun and b > 0:
            r = running[i]
            c = r.computed
            n = r.prompt + r.n_out - c
            if n > b:
                n = b
            need = (c + n + bs - 1) // bs - r.n_blocks
            if need > 0:
                free -= need
                if free < 0:
                    return False
            b -= n
            i += 1

        # 1. running: the group (in one piece: it precedes the rest, so allocations happen in the same order)
        T = self._clock
        if g_need:
            pool.allocate(g_need)
        budget -= gm
        num_tokens = gm
        d_seqs = gm
        d_ctx = self._g_csum + gm * G
        pairs = 0.0
        sched: list[_Req] = []
        sched_n: list[int] = []
        # The rest of running (checked above: their allocations fit, so nothing is preempted).
        budget, num_tokens, pairs, d_seqs, d_ctx, _ = self._schedule_running(
            gm, budget, num_tokens, pairs, d_seqs, d_ctx, sched, sched_n)

        # 2. waiting (nobody was preempted)
        if self.waiting:
            budget, num_tokens, pairs, d_seqs, d_ctx = self._admit_waiting(T, budget, num_tokens, pairs, d_seqs,
                                                                           d_ctx, sched, sched_n)

        # 3. run it
        T_end = T + self._cost.iteration_s_agg(num_tokens, gm + len(sched), pairs, d_seqs, d_ctx)
        self._rate_tok_s = num_tokens / (T_end - T) if T_end > T else self._rate_tok_s
        self._clock = T_end
        self._outstanding -= num_tokens
        self.num_iterations += 1
        self.num_exact_steps += 1
        self.num_group_steps += 1
        G += 1
        self._G = G
        finished = self._advance_scheduled(T_end, sched, sched_n) or self._g_heap[0][0] <= G
        if finished:
            self._finish_done(T_end)
        if len(self.running) > self._gm:
            self._join()
        return True

    def _finish_done(self, T_end: float) -> None:
        rec = self.rec
        pool = self.pool
        keep = []
        running = self.running
        gm = self._gm
        if gm:
            G = self._G
            bs = self.block_size
            hist = self._g_hist
            csum = self._g_csum
            for i in range(gm):
                r = running[i]
                n_out = r.nbase + G
                if n_out >= r.out:
                    rid = r.rid
                    cb = r.cbase
                    rec.finish_s[rid] = T_end
                    rec.status[rid] = STATUS_COMPLETED
                    rec.generated_tokens[rid] = n_out
                    pool.release(r.held, (cb + G + bs - 1) // bs)
                    del self._reqs[rid]
                    key = cb % bs
                    h = hist[key] - 1
                    if h:
                        hist[key] = h
                    else:
                        del hist[key]
                    csum -= cb
                else:
                    keep.append(r)
            self._g_csum = csum
            heap = self._g_heap
            while heap and heap[0][0] <= G:
                heappop(heap)
            self._gm = len(keep)
            rest = running[gm:]
        else:
            rest = running
        for r in rest:
            if r.n_out >= r.out:
                rid = r.rid
                rec.finish_s[rid] = T_end
                rec.status[rid] = STATUS_COMPLETED
                rec.generated_tokens[rid] = r.n_out
                pool.release(r.held, r.n_blocks)
                del self._reqs[rid]
            else:
                keep.append(r)
        self.running = keep

    def _fast_jump(self, t_s: float) -> bool:
        """Jump k >= 2 pure-decode iterations at once if the batch is fixed; False if not possible."""
        running = self.running
        gm = self._gm
        if gm:
            if gm == len(running):
                return self._group_jump(t_s)
            for i in range(gm, len(running)):
                if not running[i].decoding:
                    return False  # as below: a request in prefill means no jump
            self._materialize()
        nd = len(running)
        if nd == 0 or nd > self.token_budget:
            return False
        cap = self._decode_cap(nd)
        if cap < 0:
            return False
        k_done = 1 << 62
        ctx = 0
        for r in running:
            if not r.decoding:
                return False
            rem = r.out - r.n_out
            if rem < k_done:
                k_done = rem
            ctx += r.computed
        if k_done < 2:
            return False
        base, per = self._coeff(nd)
        T = self._clock
        k = k_done
        if t_s < _INF:
            k = min(k, _steps_starting_before(T, t_s, base, per, nd, ctx))
            if k < 2:
                return False
        bs = self.block_size
        # ceil((c + k) / bs) - ceil(c / bs) <= ceil(k / bs): if even that bound fits,
        # every allocation of the jump succeeds and they are counted while updating.
        if nd * ((k + bs - 1) // bs) > cap:
            alloc = 0
            for r in running:
                alloc += (r.computed + k + bs - 1) // bs - r.n_blocks
            if alloc > cap:
                # largest k whose allocations all succeed (the cache is nearly full)
                lo, hi = 0, k  # alloc(lo) <= cap < alloc(hi)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    s = 0
                    for r in running:
                        s += (r.computed + mid + bs - 1) // bs - r.n_blocks
                    if s <= cap:
                        lo = mid
                    else:
                        hi = mid
                k = lo
                if k < 2:
                    return False
        alloc = 0
        for r in running:
            c = r.computed + k
            r.computed = c
            r.n_out += k
            nb = (c + bs - 1) // bs
            alloc += nb - r.n_blocks
            r.n_blocks = nb
        self._commit_jump(k, k_done, nd, ctx, base, per, alloc)
        return True

    def _commit_jump(self, k: int, k_done: int, nd: int, ctx: int, base: float, per: float, alloc: int) -> None:
        """Book ``k`` decode steps of ``nd`` sequences (total context ``ctx`` at the start) whose fields are
        already advanced: ``alloc`` new KV blocks, the clock by the closed-form sum of the step times."""
        if alloc:
            self.pool.allocate(alloc)
        T = self._clock
        T_end = T + k * base + per * (k * ctx + nd * k * (k - 1) * 0.5)
        self._rate_tok_s = nd * k / (T_end - T) if T_end > T else self._rate_tok_s
        self._clock = T_end
        self._outstanding -= nd * k
        self.num_iterations += k
        self.num_fast_jumps += 1
        if k == k_done:
            self._finish_done(T_end)

    def _decode_cap(self, nd: int) -> int:
        """KV blocks that iterations of ``nd`` decodes and nothing else may allocate, or -1 if the head
        of the queue would be admitted by the next iteration (so it is not a pure decode)."""
        pool = self.pool
        if self.waiting:
            budget_left = self.token_budget - nd
            if nd < self.max_num_seqs and budget_left > 0:
                if self._admission_plan(self.waiting[0], budget_left) is not None:
                    return -1
                # The head is blocked on KV blocks. It stays blocked while free
                # blocks only shrink and its prefix hits stay cached, so forbid
                # evictions meanwhile.
                return pool.free_anon
        return pool.free_anon + len(pool.free_cached)

    def _decode_steps_before(self, t_s: float) -> int:
        """Decode iterations that start before ``t_s`` if the batch stays fixed until then, else -1.

        The conditions are ``_fast_jump``'s (no admission, no completion before the last of them, every KV
        block they need free) without changing anything; -1 sends the caller to ``advance_to``.
        """
        running = self.running
        nd = len(running)
        gm = self._gm
        if nd == 0 or nd > self.token_budget or 0 < gm < nd:
            return -1
        cap = self._decode_cap(nd)
        if cap < 0:
            return -1
        if gm:
            G = self._G
            k_done = self._g_heap[0][0] - G
            ctx = self._g_csum + nd * G
        else:
            k_done = 1 << 62
            ctx = 0
            for r in running:
                if not r.decoding:
                    return -1
                rem = r.out - r.n_out
                if rem < k_done:
                    k_done = rem
                ctx += r.computed
        base, per = self._coeff(nd)
        k = _steps_starting_before(self._clock, t_s, base, per, nd, ctx)
        if k > k_done:
            return -1
        bs = self.block_size
        if nd * ((k + bs - 1) // bs) > cap:
            if gm:
                alloc = self._group_blocks(k)
            else:
                alloc = sum((r.computed + k + bs - 1) // bs - r.n_blocks for r in running)
            if alloc > cap:
                return -1
        return k

    def _group_jump(self, t_s: float) -> bool:
        """``_fast_jump`` when every running request is in the decode group: O(1) but for the block count."""
        nd = self._gm
        if nd > self.token_budget:
            return False
        cap = self._decode_cap(nd)
        if cap < 0:
            return False
        G = self._G
        k_done = self._g_heap[0][0] - G
        if k_done < 2:
            return False
        ctx = self._g_csum + nd * G
        base, per = self._coeff(nd)
        T = self._clock
        k = k_done
        if t_s < _INF:
            k = min(k, _steps_starting_before(T, t_s, base, per, nd, ctx))
            if k < 2:
                return False
        bs = self.block_size
        alloc = -1
        if nd * ((k + bs - 1) // bs) > cap:
            alloc = self._group_blocks(k)
            if alloc > cap:
                lo, hi = 0, k
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if self._group_blocks(mid) <= cap:
                        lo = mid
                    else:
                        hi = mid
                k = lo
                if k < 2:
                    return False
                alloc = -1
        if alloc < 0:
            alloc = self._group_blocks(k)
        self._G = G + k
        self._commit_jump(k, k_done, nd, ctx, base, per, alloc)
        return True

    # ----------------------------------------------------------- invariants
    def check_invariants(self) -> None:
        """KV accounting adds up and never exceeds capacity (for tests)."""
        self._materialize()  # members' fields are derived while grouped; the checks read them
        pool = self.pool
        # shared prefix blocks are one physical block however many requests hold them
        held = sum(r.n_blocks - len(r.held) for r in self.running) + len(pool.ref)
        if pool.used_blocks != held:
            raise AssertionError(f"KV accounting: pool says {pool.used_blocks} used, requests hold {held}")
        if not 0 <= pool.used_blocks <= self.kv_capacity_blocks or pool.free_anon < 0:
            raise AssertionError(f"KV used {pool.used_blocks} outside [0, {self.kv_capacity_blocks}]")
        refs: dict = {}
        for r in self.running:
            for k in r.held:
                refs[k] = refs.get(k, 0) + 1
            if r.n_blocks * self.block_size < r.computed:
                raise AssertionError(f"request {r.rid}: {r.computed} tokens in {r.n_blocks} blocks")
        if refs != pool.ref:
            raise AssertionError("prefix-cache reference counts do not match the blocks requests hold")
        if any(r.n_blocks for r in self.waiting):
            raise AssertionError("a waiting request holds KV blocks")
        work = sum(r.prompt + r.out - 1 - r.computed for r in self.running)
        work += sum(r.prompt + r.out - 1 - r.kv_pre for r in self.waiting)
        if work != self._outstanding:
            raise AssertionError(f"outstanding_tokens {self._outstanding} != {work}")
        if self.rec is not None:
            for r in self.running:
                if self.rec.status[r.rid] != STATUS_PENDING:
                    raise AssertionError(f"request {r.rid} is running but has status {self.rec.status[r.rid]}")


def _steps_starting_before(T: float, t_s: float, base: float, per: float, nd: int, ctx: int) -> int:
    """How many decode steps of a fixed batch start before ``t_s`` (at least 1).

    ``nd`` sequences with total context ``ctx``, step time ``base + per * context``, each step adding
    ``nd`` tokens of context: step ``j`` starts at ``T + a j^2 + b j``; the root is corrected by at most
    a step either way against floating-point rounding.
    """
    a = 0.5 * per * nd
    b = base + per * ctx - a
    d = t_s - T
    j = math.ceil((-b + math.sqrt(b * b + 4.0 * a * d)) / (2.0 * a)) if a > 0.0 else math.ceil(d / b)
    j = max(j, 1)
    while j > 1 and T + (a * (j - 1) + b) * (j - 1) >= t_s:
        j -= 1
    while T + (a * j + b) * j < t_s:
        j += 1
    return j
