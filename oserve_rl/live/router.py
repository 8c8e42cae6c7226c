"""The request router in front of the live replicas: vllm-router control + a thin weighted dispatcher.

- :class:`RouterClient` drives a running ``vllm-router`` (Rust, PyPI
  ``vllm-router``): ``add_worker`` / ``remove_worker`` / ``list_workers`` take
  effect in ~50 ms without dropping requests in flight.
- :class:`RouterProcess` launches one (own session, log file, readiness by
  polling, SIGTERM -> SIGKILL of its group on ``stop``).
- :class:`WeightedDispatcher` is our own small proxy for what vllm-router
  cannot express: per-request-type weights over workers (OServe's ``x_kj``,
  the share of type-k requests sent to replica j). It reads the type from the
  ``X-OServe-Type`` header (or a ``classify`` callback on the JSON body),
  draws a worker with probability proportional to its weight (seeded), streams
  the response through, and tries another worker when the chosen one refuses
  the connection. It implements the same add/remove/list calls, so the switch
  executor (:mod:`oserve_rl.live.plan`) works with either.

vllm-router quirks (0.1.17, seen here): ``add_worker`` of a URL that does not
answer blocks until the worker comes up (up to ``--worker-startup-timeout-secs``),
so add workers only once they are ready; with no workers it answers 503; it
retries a request on another worker when the connection is refused.

>>> from oserve_rl.live.router import RouterClient
>>> router = RouterClient("http://127.0.0.1:8100")                       # doctest: +SKIP
>>> router.add_worker("http://127.0.0.1:8011"); router.list_workers()   # doctest: +SKIP
['http://127.0.0.1:8011']
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from oserve_rl.errors import ConfigError
from oserve_rl.live.backend import LiveClusterConfig, LiveClusterError, log_tail, terminate_group

TYPE_HEADER = "X-OServe-Type"


class WorkerRouter(Protocol):
    """What the switch executor needs from a router (vllm-router or :class:`WeightedDispatcher`)."""

    url: str

    def add_worker(self, worker_url: str) -> None: ...
    def remove_worker(self, worker_url: str) -> None: ...
    def list_workers(self) -> list[str]: ...


# --------------------------------------------------------------------------- vllm-router control
class RouterClient:
    """Control client of a running vllm-router at ``url``. Errors name the URL."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, timeout_s: float | None = None) -> tuple[int, str]:
        target = self.url + path
        req = urllib.request.Request(target, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except OSError as e:
            raise LiveClusterError(f"router at {target} unreachable: {e}") from None

    def healthy(self) -> bool:
        """True when the router answers ``/list_workers`` (its ``/health`` says OK even with no workers)."""
        try:
            status, _ = self._call("GET", "/list_workers", timeout_s=2.0)
        except LiveClusterError:
            return False
        return status == 200

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if time.monotonic() > deadline:
                raise LiveClusterError(f"router at {self.url} not answering after {timeout_s:g} s")
            time.sleep(0.1)

    def list_workers(self) -> list[str]:
        status, body = self._call("GET", "/list_workers")
        if status != 200:
            raise LiveClusterError(f"router at {self.url}/list_workers: HTTP {status}: {body[:200]}")
        try:
            return list(json.loads(body)["urls"])
        except (ValueError, KeyError, TypeError):
            raise LiveClusterError(f"router at {self.url}/list_workers: unexpected reply {body[:200]!r}") from None

    def add_worker(self, worker_url: str) -> None:
        """Add a ready worker (vllm-router blocks on one that does not answer; see the module doc)."""
        q = urllib.parse.quote(worker_url, safe="")
        status, body = self._call("POST", f"/add_worker?url={q}")
        if status != 200:
            raise LiveClusterError(f"router at {self.url}: add_worker({worker_url}) -> HTTP {status}: {body[:200]}")

    def remove_worker(self, worker_url: str) -> None:
        """Stop routing new requests to ``worker_url``; requests already forwarded finish there."""
        q = urllib.parse.quote(worker_url, safe="")
        status, body = self._call("POST", f"/remove_worker?url={q}")
        if status != 200 and worker_url in self.list_workers():
            raise LiveClusterError(f"router at {self.url}: remove_worker({worker_url}) -> HTTP {status}: {body[:200]}")


class RouterProcess:
    """A vllm-router launched from the live config, in its own session, logging to ``<run_dir>/router.log``."""

    def __init__(self, config: LiveClusterConfig, run_dir: str | Path, worker_urls: Sequence[str] = ()):
        self.config = config
        self.run_dir = Path(run_dir)
        self.worker_urls = list(worker_urls)
        self.url = f"http://{config.host}:{config.router_port}"
        self.metrics_url = f"http://{config.host}:{config.router_prometheus_port}/metrics"
        self.log_path = self.run_dir / "router.log"
        self._popen: subprocess.Popen | None = None
        self.client = RouterClient(self.url)

    def command(self) -> list[str]:
        cfg = self.config
        cmd = [
            cfg.router_bin, "--host", cfg.host, "--port", str(cfg.router_port),
            "--policy", cfg.router_policy, "--prometheus-host", cfg.host,
            "--prometheus-port", str(cfg.router_prometheus_port),
        ]
        if self.worker_urls:
            cmd += ["--worker-urls", *self.worker_urls]
        return cmd + list(cfg.router_args)

    def start(self, timeout_s: float = 30.0) -> RouterClient:
        if not Path(self.config.router_bin).exists():
            raise ConfigError(
                f"vllm-router binary {self.config.router_bin!r} not found; run scripts/setup_live.sh "
                f"(or set 'router_bin' in the live config)"
            )
        if self.client.healthy():
            raise LiveClusterError(f"something already answers at {self.url}; stop it or change router_port")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            log.write(("$ " + " ".join(self.command()) + "\n").encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not self.client.healthy():
            if self._popen.poll() is not None:
                raise LiveClusterError(
                    f"router for {self.url} exited with code {self._popen.returncode}; log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise LiveClusterError(f"router at {self.url} not answering after {timeout_s:g} s; log {self.log_path}")
            time.sleep(0.1)
        return self.client

    @property
    def pgid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def stop(self, grace_s: float = 10.0) -> None:
        if self._popen is None:
            return
        terminate_group(self._popen.pid, self._popen, grace_s)
        self._popen = None

    def __enter__(self) -> RouterClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- weighted per-type dispatch
class WeightedDispatcher:
    """A thin HTTP proxy that sends each request type to workers in proportion to per-type weights.

    ``weights[type][worker_url]`` need not sum to 1 (normalised per type); a type
    without weights (or whose weighted workers are all removed) falls back to
    uniform over the current workers. ``classify(body) -> type`` is used when a
    request has no ``X-OServe-Type`` header (default: type 0). Runs its own
    event loop in a daemon thread: ``start()`` returns once it listens.

    >>> d = WeightedDispatcher(port=8200, seed=0)                                  # doctest: +SKIP
    >>> d.start(); d.add_worker("http://127.0.0.1:8011"); d.add_worker("http://127.0.0.1:8012")  # doctest: +SKIP
    >>> d.set_weights({0: {"http://127.0.0.1:8011": 1.0}, 1: {"http://127.0.0.1:8012": 1.0}})  # doctest: +SKIP
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8200,
        *,
        seed: int = 0,
        classify: Callable[[dict[str, Any]], int] | None = None,
        connect_attempts: int = 3,
    ):
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self._rng = random.Random(seed)
        self._classify = classify
        self._connect_attempts = connect_attempts
        self._workers: list[str] = []
        self._weights: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._session: Any = None
        # (type, worker url) -> POST requests forwarded there (retries after a refused connection excluded).
        self.dispatched: dict[tuple[int, str], int] = {}

    # -- control (thread-safe, synchronous)
    def add_worker(self, worker_url: str) -> None:
        with self._lock:
            if worker_url not in self._workers:
                self._workers.append(worker_url)

    def remove_worker(self, worker_url: str) -> None:
        with self._lock:
            if worker_url in self._workers:
                self._workers.remove(worker_url)

    def list_workers(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def set_weights(self, weights: Mapping[int, Mapping[str, float]]) -> None:
        """Replace all per-type weights; negative or non-finite weights are an error."""
        clean: dict[int, dict[str, float]] = {}
        for k, row in weights.items():
            for url, w in row.items():
                if not (w >= 0 and w != float("inf")):
                    raise ConfigError(
                        f"dispatcher weight for type {k}, worker {url} must be finite and >= 0, got {w!r}"
                    )
            clean[int(k)] = {str(u): float(w) for u, w in row.items() if w > 0}
        with self._lock:
            self._weights = clean

    def choose(self, request_type: int, exclude: Sequence[str] = ()) -> str | None:
        """Draw a worker for ``request_type`` (None when there is none left)."""
        with self._lock:
            live = [w for w in self._workers if w not in exclude]
            if not live:
                return None
            row = {u: w for u, w in self._weights.get(request_type, {}).items() if u in live}
            if not row:
                return self._rng.choice(live)
            urls = list(row)
            return self._rng.choices(urls, weights=[row[u] for u in urls])[0]

    # -- server
    def start(self, timeout_s: float = 10.0) -> str:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                errors.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"dispatcher:{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s) or errors:
            raise LiveClusterError(f"dispatcher at {self.url} failed to start: {errors[0] if errors else 'timeout'}")
        return self.url

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        app = web.Application()
        app.router.add_get("/list_workers", self._h_list)
        app.router.add_post("/add_worker", self._h_add)
        app.router.add_post("/remove_worker", self._h_remove)
        app.router.add_get("/health", self._h_health)
        app.router.add_route("*", "/v1/{tail:.*}", self._h_proxy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def _h_list(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"urls": self.list_workers()})

    async def _h_add(self, request: Any) -> Any:
        from aiohttp import web

        self.add_worker(request.query["url"])
        return web.Response(text=f"added {request.query['url']}")

    async def _h_remove(self, request: Any) -> Any:
        from aiohttp import web

        self.remove_worker(request.query["url"])
        return web.Response(text=f"removed {request.query['url']}")

    async def _h_health(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(text="ok")

    async def _h_proxy(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        body = await request.read()
        rtype = 0
        if TYPE_HEADER in request.headers:
            try:
                rtype = int(request.headers[TYPE_HEADER])
            except ValueError:
                return web.Response(status=400, text=f"{TYPE_HEADER} must be an integer")
        elif self._classify is not None and body:
            try:
                rtype = int(self._classify(json.loads(body)))
            except (ValueError, TypeError):
                rtype = 0
        tried: list[str] = []
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        for _ in range(self._connect_attempts):
            worker = self.choose(rtype, exclude=tried)
            if worker is None:
                break
            tried.append(worker)
            try:
                upstream = await self._session.request(
                    request.method, worker + request.path_qs, data=body, headers=headers
                )
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError):
                continue  # nothing sent yet: safe to try another worker
            if request.method == "POST":  # inference requests only, not e.g. GET /v1/models
                key = (rtype, worker)
                self.dispatched[key] = self.dispatched.get(key, 0) + 1
            resp = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")
            })
            await resp.prepare(request)
            client_gone = False
            try:
                # An upstream error here propagates: aiohttp then cuts the client's stream too,
                # so the client sees a failure (no [DONE]) and can retry.
                async for chunk in upstream.content.iter_any():
                    try:
                        await resp.write(chunk)
                    except ConnectionResetError:  # the client left (e.g. it stopped reading after [DONE])
                        client_gone = True
                        break
            finally:
                upstream.release()
            if not client_gone:
                try:
                    await resp.write_eof()
                except ConnectionResetError:
                    pass
            return resp
        return web.Response(status=503, text=f"no available worker for type {rtype} (tried {tried})")

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> WeightedDispatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def router_worker_health(metrics_url: str) -> dict[str, float]:
    """vllm-router's ``vllm_router_worker_health{worker}`` gauges (1 healthy) from its Prometheus port."""
    from oserve_rl.live.metrics import scrape_samples

    samples = scrape_samples(metrics_url).get("vllm_router_worker_health", {})
    return {dict(labels).get("worker", ""): v for labels, v in samples.items()}


__all__ = [
    "TYPE_HEADER", "RouterClient", "RouterProcess", "WeightedDispatcher", "WorkerRouter", "router_worker_health",
]
