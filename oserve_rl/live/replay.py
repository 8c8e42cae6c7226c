"""Replay load against a live router: open-loop arrivals, bounded concurrency, streaming completions.

Each request is a streaming ``POST /v1/completions`` (``stream_options.include_usage``,
``ignore_eos`` so the output length is the requested one). A request is *ok*
when the stream ends with ``data: [DONE]``, carries at least one token and
does not finish with ``abort``. Connection errors, HTTP 5xx / 429, a stream cut
mid-way, an error chunk or an ``abort`` are retried (the whole request, after a
short backoff) up to ``max_attempts``, so a replica killed or drained mid-request
loses nothing as long as another one serves. TTFT and E2E are measured from
the first attempt's start, as a client would see them.

Requests come from a :class:`~oserve_rl.workload.Trace` (``requests_from_trace``:
prompts of about ``input_tokens`` words, clipped for tiny test models) or from an
endless Poisson stream (``poisson_requests``) that runs until stopped.

>>> from oserve_rl.workload import load_trace
>>> from oserve_rl.live.replay import requests_from_trace, run_replay
>>> trace = load_trace("azure-conv").slice(0, 60, rebase=True)             # doctest: +SKIP
>>> reqs = requests_from_trace(trace, rate_scale=0.5, max_prompt_tokens=64, max_output_tokens=16)  # doctest: +SKIP
>>> result = run_replay(reqs, "http://127.0.0.1:8100", model="tiny", concurrency=16)  # doctest: +SKIP
>>> result.summary()["failed"]                                            # doctest: +SKIP
0
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from oserve_rl.errors import ConfigError
from oserve_rl.live.backend import LiveClusterError

# Common English words: each is (about) one token for a byte-level BPE trained on English text.
_WORDS = (
    "the of and to in is for that with on as are this be by from at or an it not can which have all "
    "one time model request token data each more use new first two may other these then when some"
).split()


@dataclass(frozen=True)
class ReplayRequest:
    """One request to send ``send_at_s`` seconds after the replay starts."""

    request_id: int
    send_at_s: float
    prompt: str
    max_tokens: int
    request_type: int = 0


@dataclass
class RequestRecord:
    """What happened to one request. Times are seconds since the replay's start (``ReplayResult.t0``)."""

    request_id: int
    request_type: int
    scheduled_s: float
    start_s: float = math.nan
    first_token_s: float = math.nan
    end_s: float = math.nan
    ok: bool = False
    attempts: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    attempt_errors: list[str] = field(default_factory=list)

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.start_s

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class ReplayResult:
    """All records of one replay; ``t0`` is the ``time.monotonic()`` value of its start."""

    records: list[RequestRecord]
    t0: float
    url: str

    def summary(self) -> dict[str, float]:
        """Counts and latency percentiles (seconds) of the replay."""
        ok = [r for r in self.records if r.ok]
        ttft = np.array([r.ttft_s for r in ok]) if ok else np.array([np.nan])
        e2e = np.array([r.e2e_s for r in ok]) if ok else np.array([np.nan])
        ends = [r.end_s for r in self.records if not math.isnan(r.end_s)]
        span = (max(ends) - min(r.start_s for r in self.records)) if ends else math.nan
        return {
            "requests": len(self.records),
            "ok": len(ok),
            "failed": len(self.records) - len(ok),
            "retried": sum(r.attempts > 1 for r in self.records),
            "attempts": sum(r.attempts for r in self.records),
            "ttft_p50_s": float(np.nanpercentile(ttft, 50)),
            "ttft_p99_s": float(np.nanpercentile(ttft, 99)),
            "e2e_p50_s": float(np.nanpercentile(e2e, 50)),
            "e2e_p99_s": float(np.nanpercentile(e2e, 99)),
            "duration_s": float(span),
            "throughput_rps": float(len(ok) / span) if span and span > 0 else math.nan,
        }

    def failures(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.ok]

    def to_frame(self) -> Any:
        import pandas as pd

        rows = []
        for r in self.records:
            d = asdict(r)
            d["attempt_errors"] = "; ".join(r.attempt_errors)
            d["ttft_s"], d["e2e_s"] = r.ttft_s, r.e2e_s
            rows.append(d)
        return pd.DataFrame(rows)


# --------------------------------------------------------------------------- request sources
def make_prompt(n_tokens: int, rng: np.random.Generator) -> str:
    """About ``n_tokens`` tokens of filler words (exact counts depend on the tokenizer)."""
    return " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=max(1, int(n_tokens))))


def requests_from_trace(
    trace: Any,
    *,
    rate_scale: float = 1.0,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    types: np.ndarray | None = None,
    seed: int = 0,
) -> list[ReplayRequest]:
    """Requests for every request of ``trace``, sent at its arrival offsets / ``rate_scale``.

    ``rate_scale`` > 1 compresses time (more load), like ``Trace.scale_rate``.
    Lengths are clipped to ``max_prompt_tokens`` / ``max_output_tokens`` (tiny
    test models have a 512-token context). ``types`` (one int per request, e.g.
    ``RequestTyper.predict(trace)``) tags each request for per-type dispatch.
    """
    if not rate_scale > 0:
        raise ConfigError(f"requests_from_trace: rate_scale must be > 0, got {rate_scale}")
    n = len(trace)
    if types is not None and len(types) != n:
        raise ConfigError(f"requests_from_trace: {len(types)} types for {n} requests")
    rng = np.random.default_rng(seed)
    t0 = float(trace.arrival_s[0]) if n else 0.0
    out = []
    for i in range(n):
        inp = int(trace.input_tokens[i])
        outp = int(trace.output_tokens[i])
        if max_prompt_tokens is not None:
            inp = min(inp, max_prompt_tokens)
        if max_output_tokens is not None:
            outp = min(outp, max_output_tokens)
        out.append(ReplayRequest(
            request_id=i,
            send_at_s=(float(trace.arrival_s[i]) - t0) / rate_scale,
            prompt=make_prompt(inp, rng),
            max_tokens=max(1, outp),
            request_type=int(types[i]) if types is not None else 0,
        ))
    return out


def poisson_requests(
    rate_rps: float,
    *,
    prompt_tokens: tuple[int, int] = (4, 32),
    output_tokens: tuple[int, int] = (2, 12),
    n_types: int = 1,
    seed: int = 0,
) -> Iterator[ReplayRequest]:
    """An endless seeded Poisson stream of small requests (uniform lengths in the given inclusive ranges)."""
    if not rate_rps > 0:
        raise ConfigError(f"poisson_requests: rate_rps must be > 0, got {rate_rps}")
    rng = np.random.default_rng(seed)
    t = 0.0
    for i in itertools.count():
        t += float(rng.exponential(1.0 / rate_rps))
        yield ReplayRequest(
            request_id=i,
            send_at_s=t,
            prompt=make_prompt(int(rng.integers(prompt_tokens[0], prompt_tokens[1] + 1)), rng),
            max_tokens=int(rng.integers(output_tokens[0], output_tokens[1] + 1)),
            request_type=int(rng.integers(0, n_types)),
        )


# --------------------------------------------------------------------------- the replay
class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


async def _attempt(session: Any, url: str, payload: dict[str, Any], headers: dict[str, str], rec: RequestRecord,
                   t0: float, timeout_s: float) -> None:
    """One streaming attempt; fills ``rec`` on success, raises _Retryable / _Fatal otherwise."""
    import aiohttp

    first_token_s = math.nan
    tokens_seen = 0
    usage_tokens = None
    prompt_tokens = 0
    finish = None
    done = False
    try:
        async with session.post(url, json=payload, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=5)) as resp:
            if resp.status >= 500 or resp.status == 429:
                raise _Retryable(f"HTTP {resp.status}: {(await resp.text())[:120]}")
            if resp.status != 200:
                raise _Fatal(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            async for raw in resp.content:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    # Keep reading to the end of the body (no break) so the connection is
                    # released cleanly and can be reused instead of being reset.
                    done = True
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise _Retryable(f"malformed stream chunk {data[:80]!r}") from None
                if "error" in chunk:
                    raise _Retryable(f"error chunk: {str(chunk['error'])[:120]}")
                for choice in chunk.get("choices") or ():
                    if choice.get("text"):
                        tokens_seen += 1
                        if math.isnan(first_token_s):
                            first_token_s = time.monotonic() - t0
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                usage = chunk.get("usage")
                if usage:
                    usage_tokens = usage.get("completion_tokens")
                    prompt_tokens = usage.get("prompt_tokens") or 0
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
        raise _Retryable(f"{type(e).__name__}: {str(e)[:120]}") from None
    if not done:
        raise _Retryable("stream ended without [DONE]")
    n_tokens = usage_tokens if usage_tokens is not None else tokens_seen
    if finish == "abort" or n_tokens == 0:
        # A draining vLLM answers 200 with 0 tokens and finish_reason "abort".
        raise _Retryable(f"aborted (finish_reason={finish!r}, tokens={n_tokens})")
    rec.first_token_s = first_token_s if not math.isnan(first_token_s) else time.monotonic() - t0
    rec.output_tokens = int(n_tokens)
    rec.prompt_tokens = int(prompt_tokens)
    rec.finish_reason = finish


async def replay_async(
    requests: Iterable[ReplayRequest],
    url: str,
    *,
    model: str,
    concurrency: int = 16,
    max_attempts: int = 8,
    backoff_s: float = 0.25,
    request_timeout_s: float = 300.0,
    stop: threading.Event | None = None,
    on_record: Callable[[RequestRecord], None] | None = None,
    type_header: str | None = None,
    extra_body: dict[str, Any] | None = None,
) -> ReplayResult:
    """Send ``requests`` to ``url`` (router base URL) at their ``send_at_s``; at most ``concurrency`` in flight.

    ``stop`` ends the issuing of new requests (in-flight ones finish); an endless
    source needs it. ``type_header`` (e.g. ``"X-OServe-Type"``) sends each
    request's type for per-type dispatch. Raises :class:`LiveClusterError` naming
    the URL when nothing answers there at the start.
    """
    import aiohttp

    if concurrency < 1 or max_attempts < 1:
        raise ConfigError(f"replay: concurrency and max_attempts must be >= 1, got {concurrency}, {max_attempts}")
    base = url.rstrip("/")
    endpoint = base + "/v1/completions"
    sem = asyncio.Semaphore(concurrency)
    records: list[RequestRecord] = []
    connector = aiohttp.TCPConnector(limit=concurrency * 2, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            async with session.get(base + "/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise LiveClusterError(f"replay target {base} unreachable: {e}") from None
        t0 = time.monotonic()

        async def one(req: ReplayRequest) -> None:
            rec = RequestRecord(req.request_id, req.request_type, req.send_at_s)
            records.append(rec)
            payload = {
                "model": model, "prompt": req.prompt, "max_tokens": req.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": True, "temperature": 0.0,
                **(extra_body or {}),
            }
            headers = {type_header: str(req.request_type)} if type_header else {}
            async with sem:
                rec.start_s = time.monotonic() - t0
                for attempt in range(max_attempts):
                    rec.attempts = attempt + 1
                    try:
                        await _attempt(session, endpoint, payload, headers, rec, t0, request_timeout_s)
                        rec.ok = True
                        break
                    except _Fatal as e:
                        rec.error = str(e)
                        rec.attempt_errors.append(str(e))
                        break
                    except _Retryable as e:
                        rec.error = str(e)
                        rec.attempt_errors.append(str(e))
                        await asyncio.sleep(min(backoff_s * 2**attempt, 4.0))
                rec.end_s = time.monotonic() - t0
                if rec.ok:
                    rec.error = None
            if on_record is not None:
                on_record(rec)

        tasks: list[asyncio.Task] = []
        for req in requests:
            if stop is not None and stop.is_set():
                break
            delay = req.send_at_s - (time.monotonic() - t0)
            while delay > 0:
                if stop is not None and stop.is_set():
                    break
                await asyncio.sleep(min(delay, 0.1))
                delay = req.send_at_s - (time.monotonic() - t0)
            if stop is not None and stop.is_set():
                break
            tasks.append(asyncio.create_task(one(req)))
        if tasks:
            await asyncio.gather(*tasks)
    records.sort(key=lambda r: r.request_id)
    return ReplayResult(records, t0, base)


def run_replay(requests: Iterable[ReplayRequest], url: str, **kwargs: Any) -> ReplayResult:
    """Blocking :func:`replay_async` (same arguments)."""
    return asyncio.run(replay_async(requests, url, **kwargs))


class ReplayThread:
    """A replay in a background thread, so the caller can switch or kill replicas meanwhile.

    >>> rt = ReplayThread(poisson_requests(4.0), "http://127.0.0.1:8100", model="tiny").start()  # doctest: +SKIP
    >>> ...  # switch deployments
    >>> result = rt.stop_and_join()                                                                # doctest: +SKIP
    """

    def __init__(self, requests: Iterable[ReplayRequest], url: str, **kwargs: Any):
        self._stop = threading.Event()
        self._requests, self._url, self._kwargs = requests, url, kwargs
        self._result: ReplayResult | None = None
        self._error: BaseException | None = None
        self._done_lock = threading.Lock()
        self.finished: list[RequestRecord] = []
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self.t0: float | None = None

    def _run(self) -> None:
        def record(rec: RequestRecord) -> None:
            with self._done_lock:
                self.finished.append(rec)

        try:
            self._result = run_replay(self._requests, self._url, stop=self._stop, on_record=record, **self._kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in join()
            self._error = e

    def start(self) -> ReplayThread:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def completed(self) -> int:
        with self._done_lock:
            return len(self.finished)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> ReplayResult:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise LiveClusterError(f"replay against {self._url} still running after {timeout_s} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def stop_and_join(self, timeout_s: float | None = 600.0) -> ReplayResult:
        self.stop()
        return self.join(timeout_s)


def recovery_time_s(result: ReplayResult, event_monotonic: float) -> float:
    """Seconds from an event (a ``time.monotonic()`` value, e.g. a kill) until its last disturbed request is served.

    Disturbed = still in flight at or started after the event, and needing a retry
    or failing. 0 when the event disturbed no request (the router rerouted
    everything on its own); NaN when a disturbed request never succeeded.
    """
    event_s = event_monotonic - result.t0
    disturbed = [
        r for r in result.records
        if (math.isnan(r.end_s) or r.end_s >= event_s) and (not r.ok or r.attempts > 1)
    ]
    if not disturbed:
        return 0.0
    if any(not r.ok for r in disturbed):
        return math.nan
    return max(0.0, max(r.end_s for r in disturbed) - event_s)
