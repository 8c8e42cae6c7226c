"""Where live replicas run: the backend interface and a local-process backend.

A *backend* turns a :class:`ReplicaSpec` (TP, PP, which devices) into a running
vLLM OpenAI server and takes it away again. The switch logic
(:mod:`oserve_rl.live.plan`) only talks to the abstract :class:`Backend`, so a
Ray Serve or Kubernetes backend plugs in by implementing the same methods:

- ``start(spec)`` launches without blocking and returns a :class:`Replica`
  handle with the server's base URL; ``wait_ready(replica)`` blocks until it
  answers ``/health`` and ``/v1/models``.
- ``is_alive(replica)`` says whether its processes / pods still exist (cheap,
  no HTTP); ``stop(replica)`` ends it gracefully and escalates after a
  deadline; ``kill(replica)`` ends it at once (chaos tests).
- ``fits(specs)`` says whether these replicas can run at the same time, which
  decides make-before-break vs break-before-make.

:class:`ProcessBackend` runs each server as ``python -m
vllm.entrypoints.openai.api_server`` of the vLLM venv, in its own session (so
the whole process group can be signalled), logging to ``<run_dir>/<id>.log``.
On CPU it maps TP x PP ranks onto core bindings (``VLLM_CPU_OMP_THREADS_BIND``);
on GPU onto ``CUDA_VISIBLE_DEVICES``. Settings come from a YAML cluster config
(``configs/live/cpu-tiny.yaml``) validated by :class:`LiveClusterConfig`.

>>> from oserve_rl.live.backend import ProcessBackend, ReplicaSpec, load_live_config
>>> cfg = load_live_config("configs/live/cpu-tiny.yaml", model="/tmp/tiny")   # doctest: +SKIP
>>> with ProcessBackend(cfg, run_dir="runs/live") as backend:                 # doctest: +SKIP
...     r = backend.start(ReplicaSpec(tp=1))
...     backend.wait_ready(r)
...     print(r.url)
"""

from __future__ import annotations

import abc
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from oserve_rl.errors import ConfigError, OServeError


class LiveClusterError(OServeError):
    """A live server or router that cannot be reached, fails to start or does not stop; names the URL or log."""


# --------------------------------------------------------------------------- config
class LiveClusterConfig(BaseModel):
    """One live cluster: which model, which vLLM venv, which ports, which server flags.

    Relative paths (``model``, ``python``, ``router_bin``) resolve against the
    ``base_dir`` given to :func:`load_live_config` (default: the current directory).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["cpu", "gpu"] = "cpu"
    # Model directory (or hub name on a machine that can reach a hub).
    model: str
    served_model_name: str = "tiny"
    # Interpreter of the vLLM venv: library code runs in the main venv and only spawns / talks HTTP.
    python: str = ".venv-vllm/bin/python"
    router_bin: str = ".venv-vllm/bin/vllm-router"
    host: str = "127.0.0.1"
    # Inclusive [first, last] ports for replicas; ports in use are skipped.
    ports: tuple[int, int] = (8011, 8060)
    router_port: int = Field(8100, ge=1, le=65535)
    router_prometheus_port: int = Field(29100, ge=1, le=65535)
    router_policy: Literal[
        "random", "round_robin", "cache_aware", "kv_aware", "power_of_two", "consistent_hash", "sticky_least_loaded"
    ] = "round_robin"
    router_args: tuple[str, ...] = ()
    server_args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    # How many replicas may run at once (CPU: RAM ~2.3 GiB each and cores; GPU: also device sets).
    max_replicas: int = Field(3, ge=1)
    ready_timeout_s: float = Field(600.0, gt=0)
    drain_timeout_s: float = Field(120.0, gt=0)
    # SIGTERM -> SIGKILL of the process group after this long.
    stop_grace_s: float = Field(30.0, gt=0)
    # Health monitor: a replica failing this many consecutive checks, interval apart, is removed.
    health_interval_s: float = Field(0.5, gt=0)
    health_failures: int = Field(2, ge=1)
    health_timeout_s: float = Field(5.0, gt=0)

    @field_validator("ports")
    @classmethod
    def _ports_ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"must be [first, last] with 1 <= first <= last <= 65535, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _router_port_outside_range(self) -> LiveClusterConfig:
        lo, hi = self.ports
        for name in ("router_port", "router_prometheus_port"):
            if lo <= getattr(self, name) <= hi:
                raise ValueError(f"{name} {getattr(self, name)} lies inside the replica port range {list(self.ports)}")
        return self


def _fmt_validation(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key (valid: {', '.join(LiveClusterConfig.model_fields)})")
        else:
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            parts.append(f"{loc}: {e['msg']}{got}")
    return f"{source}: " + "; ".join(parts)


def load_live_config(
    path: str | Path, *, base_dir: str | Path | None = None, **overrides: Any
) -> LiveClusterConfig:
    """Read a live cluster YAML; ``overrides`` replace keys (e.g. ``model=tmpdir``) before validation.

    Relative ``model`` / ``python`` / ``router_bin`` paths are made absolute against
    ``base_dir`` (default: the current directory) when they exist there.
    """
    from oserve_rl.yamlio import read_yaml_mapping

    p = Path(path)
    data = read_yaml_mapping(p, "a mapping of live cluster fields")
    data.update(overrides)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    for key in ("model", "python", "router_bin"):
        v = data.get(key)
        if isinstance(v, str) and not os.path.isabs(v) and (base / v).exists():
            # abspath, not resolve(): a venv's python is a symlink that must not be followed.
            data[key] = os.path.abspath(base / v)
    try:
        return LiveClusterConfig(**data)
    except ValidationError as e:
        raise ConfigError(_fmt_validation(e, str(p))) from None


# --------------------------------------------------------------------------- specs and handles
@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica is: parallelism, devices and extra server flags. Equal specs are interchangeable.

    ``devices``: GPU ids (GPU backend, ``tp * pp`` of them) or CPU core ids (CPU
    backend, a multiple of ``tp * pp``; split into contiguous per-rank groups).
    Empty means "backend's choice" (CPU: vLLM's auto binding for one rank,
    cores 0..ranks-1 for more). ``label`` is a free tag (e.g. the policy's
    replica-config name); it is part of the identity.
    """

    tp: int = 1
    pp: int = 1
    devices: tuple[int, ...] = ()
    extra_args: tuple[str, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("tp", "pp"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"ReplicaSpec.{name} must be an integer >= 1, got {v!r}")
        object.__setattr__(self, "devices", tuple(int(d) for d in self.devices))
        object.__setattr__(self, "extra_args", tuple(str(a) for a in self.extra_args))
        if len(set(self.devices)) != len(self.devices):
            raise ConfigError(f"ReplicaSpec.devices has duplicates: {list(self.devices)}")

    @property
    def ranks(self) -> int:
        return self.tp * self.pp

    def short(self) -> str:
        dev = f"@{','.join(map(str, self.devices))}" if self.devices else ""
        tag = f"[{self.label}]" if self.label else ""
        return f"TP{self.tp}" + (f"PP{self.pp}" if self.pp > 1 else "") + dev + tag


@dataclass
class Replica:
    """A started replica: its spec, URL and, for process backends, the process group."""

    replica_id: str
    spec: ReplicaSpec
    url: str
    port: int
    pgid: int | None = None
    log_path: Path | None = None
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    stopped_at: float | None = None
    # Backend-private state (Popen, pod name, ...).
    handle: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class StopResult:
    """How a replica ended: ``signal`` is "SIGTERM" when it left within the grace period, else "SIGKILL"."""

    replica_id: str
    signal: str
    duration_s: float
    returncode: int | None


# --------------------------------------------------------------------------- HTTP helpers
def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """GET ``url`` -> (status, body); raises ``OSError`` (incl. URLError) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def server_ready(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``/health`` says 200 and ``/v1/models`` lists a model (the API is really serving)."""
    try:
        status, _ = http_get(f"{url}/health", timeout_s)
        if status != 200:
            return False
        status, body = http_get(f"{url}/v1/models", timeout_s)
        return status == 200 and bool(json.loads(body).get("data"))
    except (OSError, ValueError):
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still exists (zombies count until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_group(
    pgid: int,
    popen: subprocess.Popen | None,
    grace_s: float,
    gone_timeout_s: float = 30.0,
    *,
    term_group: bool = False,
) -> tuple[str, int | None]:
    """SIGTERM the leader (or the whole group), SIGKILL the group after ``grace_s``, wait until all are gone.

    The leader alone gets SIGTERM by default, as Kubernetes and Docker do with a
    container's PID 1: vLLM's API server then shuts its engine core and workers
    down in order (``term_group=True`` signals every member at once). Whatever
    is left at the deadline (or 5 s after the leader exits) gets SIGKILL. Seen
    here under CPU load: the engine core's teardown alone took 20-26 s, so a
    30 s grace is sometimes used up. Returns (signal that ended it, leader's
    return code). Orphaned members are reaped by init, which can take a moment,
    so this polls ``killpg(pgid, 0)``.
    """
    sent = "SIGTERM"
    try:
        if term_group or popen is None:
            os.killpg(pgid, signal.SIGTERM)
        else:
            popen.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    rc = None
    while time.monotonic() < deadline:
        if popen is not None:
            rc = popen.poll()
        leader_gone = popen is None or rc is not None
        if leader_gone and not group_alive(pgid):
            return sent, rc
        if leader_gone and popen is not None:
            # The leader exited; stragglers (TP workers) get a short extra grace, then the kill below.
            deadline = min(deadline, time.monotonic() + 5.0)
        time.sleep(0.1)
    sent = "SIGKILL"
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if popen is not None:
        try:
            rc = popen.wait(timeout=gone_timeout_s)
        except subprocess.TimeoutExpired:
            pass
    end = time.monotonic() + gone_timeout_s
    while group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.1)
    if group_alive(pgid):
        raise LiveClusterError(f"process group {pgid} still exists {gone_timeout_s:g} s after SIGKILL")
    return sent, rc


# --------------------------------------------------------------------------- the interface
class Backend(abc.ABC):
    """Runs replicas somewhere. Implement these methods for a new platform (Ray Serve, Kubernetes, ...).

    Contract: ``start`` must not block on readiness; ``wait_ready`` raises
    :class:`LiveClusterError` naming the replica URL (and a log tail, when there is
    one) on timeout or early exit; ``stop`` must leave nothing of the replica behind
    (all processes / pods) and be safe on an already-dead replica; ``replicas()``
    lists replicas started and not yet stopped, dead or alive.
    """

    #: Served model name the replicas answer to (``model`` field of requests).
    served_model_name: str = "tiny"

    @abc.abstractmethod
    def start(self, spec: ReplicaSpec) -> Replica:
        """Launch a replica for ``spec`` and return at once."""

    @abc.abstractmethod
    def wait_ready(self, replica: Replica, timeout_s: float | None = None) -> None:
        """Block until the replica serves (``/health`` 200 and ``/v1/models`` non-empty)."""

    @abc.abstractmethod
    def is_alive(self, replica: Replica) -> bool:
        """Whether the replica's processes / pods still exist (no HTTP)."""

    @abc.abstractmethod
    def stop(self, replica: Replica, grace_s: float | None = None) -> StopResult:
        """Graceful stop (SIGTERM or equivalent), forced after ``grace_s``; returns when all of it is gone."""

    @abc.abstractmethod
    def kill(self, replica: Replica) -> None:
        """End the replica at once, without cleanup (chaos); ``stop`` must still be callable afterwards."""

    @abc.abstractmethod
    def replicas(self) -> list[Replica]:
        """Replicas started and not stopped."""

    @abc.abstractmethod
    def fits(self, specs: Sequence[ReplicaSpec]) -> bool:
        """Whether all of ``specs`` can run at the same time on this backend's resources."""

    def close(self) -> None:
        """Stop every replica this backend started."""
        for r in list(self.replicas()):
            self.stop(r)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- local processes
def cpu_binding(spec: ReplicaSpec, available: Sequence[int]) -> str | None:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``spec``: rank groups joined by ``|`` (None: vLLM's auto binding).

    vLLM's auto binding works for one rank; TP/PP > 1 on CPU need a manual binding
    or vLLM fails with "Not enough allowed NUMA nodes".
    """
    ranks = spec.ranks
    cores = list(spec.devices)
    if not cores:
        if ranks == 1:
            return None
        if len(available) < ranks:
            raise ConfigError(
                f"replica {spec.short()}: {ranks} ranks need >= {ranks} CPU cores, only {len(available)} available"
            )
        cores = list(available)[:ranks]
    if len(cores) % ranks:
        raise ConfigError(
            f"replica {spec.short()}: {len(cores)} CPU cores cannot be split evenly over tp*pp = {ranks} ranks"
        )
    per = len(cores) // ranks
    return "|".join(",".join(str(c) for c in cores[i * per : (i + 1) * per]) for i in range(ranks))


# How to make the model folder the CPU configs name (docs/live.md, "Set-up").
TINY_MODEL_HINT = ("build the tiny test model with `.venv-vllm/bin/python oserve_rl/live/tiny_model.py "
                   "runs/live/tiny-llama` (docs/live.md), or pass --model DIR naming a Hugging Face model folder")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name: vLLM downloads these itself


def model_folder_problem(model: str, hub_ok: bool = True) -> str | None:
    """What is wrong with ``model`` as a local Hugging Face folder (None: nothing, or a hub id left to vLLM).

    With ``hub_ok``, a bare ``org/name`` that is not on disk is a hub id, unless ``org`` is a local folder
    (``runs`` in ``runs/live/x``): then it is a path to a folder that is missing.
    """
    folder = Path(os.path.abspath(model))  # relative paths resolve against the current directory, as vLLM's
    if (hub_ok and not folder.exists() and _HUB_ID.fullmatch(model)
            and not Path(model.split("/")[0]).is_dir()):
        return None
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    if not (folder / "config.json").is_file():
        return f"folder {folder} has no config.json, so it is not a Hugging Face model folder"
    return None


class ProcessBackend(Backend):
    """Each replica is a local ``vllm.entrypoints.openai.api_server`` process group.

    ``run_dir`` receives one log per replica (``<replica_id>.log``).
    """

    def __init__(self, config: LiveClusterConfig, run_dir: str | Path):
        self.config = config
        self.served_model_name = config.served_model_name
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._running: dict[str, Replica] = {}
        self._ids = itertools.count()
        self._ports_taken: set[int] = set()
        if not Path(config.python).exists():
            raise ConfigError(
                f"vLLM python {config.python!r} not found; run scripts/setup_live.sh "
                f"(or set 'python' in the live config)"
            )

    # -- helpers
    def _pick_port(self) -> int:
        lo, hi = self.config.ports
        for port in range(lo, hi + 1):
            if port not in self._ports_taken and port_free(self.config.host, port):
                self._ports_taken.add(port)
                return port
        raise LiveClusterError(f"no free port in {self.config.host}:{lo}-{hi} for a new replica")

    def command(self, spec: ReplicaSpec, port: int) -> list[str]:
        """The server command line for ``spec`` on ``port``."""
        cfg = self.config
        cmd = [
            cfg.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", cfg.model, "--served-model-name", cfg.served_model_name,
            "--host", cfg.host, "--port", str(port),
        ]
        if spec.tp > 1:
            cmd += ["--tensor-parallel-size", str(spec.tp)]
        if spec.pp > 1:
            cmd += ["--pipeline-parallel-size", str(spec.pp)]
        return cmd + list(cfg.server_args) + list(spec.extra_args)

    def environment(self, spec: ReplicaSpec) -> dict[str, str]:
        """Process environment for ``spec``: config ``env`` plus device binding."""
        env = dict(os.environ)
        env.update(self.config.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.config.device == "cpu":
            bind = cpu_binding(spec, sorted(os.sched_getaffinity(0)))
            if bind is not None:
                env["VLLM_CPU_OMP_THREADS_BIND"] = bind
                env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        else:
            if spec.devices:
                if len(spec.devices) != spec.ranks:
                    raise ConfigError(
                        f"replica {spec.short()}: GPU backend needs tp*pp = {spec.ranks} device ids, "
                        f"got {list(spec.devices)}"
                    )
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.devices))
        return env

    # -- Backend
    def start(self, spec: ReplicaSpec) -> Replica:
        env = self.environment(spec)  # validates the binding before anything is spawned
        problem = model_folder_problem(self.config.model)
        if problem is not None:  # otherwise the server dies in its own log with a transformers OSError
            raise ConfigError(f"live model {self.config.model!r}: {problem}; {TINY_MODEL_HINT}")
        with self._lock:
            port = self._pick_port()
            safe = "".join(c if c.isalnum() else "-" for c in spec.short()).strip("-")
            rid = f"r{next(self._ids)}-{safe}-p{port}"
        log_path = self.run_dir / f"{rid}.log"
        cmd = self.command(spec, port)
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            popen = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        replica = Replica(
            replica_id=rid, spec=spec, url=f"http://{self.config.host}:{port}", port=port,
            pgid=popen.pid, log_path=log_path, handle=popen,
        )
        with self._lock:
            self._running[rid] = replica
        return replica

    def wait_ready(self, replica: Replica, timeout_s: float | None = None) -> None:
        timeout_s = self.config.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        while True:
            if server_ready(replica.url):
                replica.ready_at = time.time()
                return
            popen: subprocess.Popen = replica.handle
            if popen is not None and popen.poll() is not None:
                raise LiveClusterError(
                    f"replica {replica.replica_id} at {replica.url} exited with code {popen.returncode} before "
                    f"becoming ready; log {replica.log_path}:\n{log_tail(replica.log_path)}"
                )
            if time.monotonic() > deadline:
                raise LiveClusterError(
                    f"replica {replica.replica_id} at {replica.url} not ready after {timeout_s:g} s; "
                    f"log {replica.log_path}:\n{log_tail(replica.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def is_alive(self, replica: Replica) -> bool:
        popen: subprocess.Popen = replica.handle
        return popen is not None and popen.poll() is None

    def stop(self, replica: Replica, grace_s: float | None = None) -> StopResult:
        grace_s = self.config.stop_grace_s if grace_s is None else grace_s
        t0 = time.monotonic()
        sig, rc = "SIGTERM", None
        if replica.pgid is not None:
            sig, rc = terminate_group(replica.pgid, replica.handle, grace_s)
        replica.stopped_at = time.time()
        with self._lock:
            self._running.pop(replica.replica_id, None)
            self._ports_taken.discard(replica.port)
        return StopResult(replica.replica_id, sig, time.monotonic() - t0, rc)

    def kill(self, replica: Replica) -> None:
        if replica.pgid is not None:
            try:
                os.killpg(replica.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def replicas(self) -> list[Replica]:
        with self._lock:
            return list(self._running.values())

    def fits(self, specs: Sequence[ReplicaSpec]) -> bool:
        if len(specs) > self.config.max_replicas:
            return False
        if self.config.device == "gpu":
            # GPUs are exclusive; CPU cores may be shared (slower, still correct).
            used = [d for s in specs for d in s.devices]
            return len(used) == len(set(used))
        return True
