"""Run an exported policy: numpy + onnxruntime only (no torch, SB3, Ray or pickle).

``oserve_rl.export.onnx_export`` writes ``DIR/policy.json`` (+ ``DIR/policy.onnx``
for trained agents); this module is all a serving process needs to act with it:

    >>> from oserve_rl.export.runtime import load_exported
    >>> policy = load_exported("exports/quickstart")            # doctest: +SKIP
    >>> action = policy.act(obs)       # obs: Deploy-v0's dict of 1-D float32 arrays   # doctest: +SKIP
    >>> policy.action_meaning(action)                           # doctest: +SKIP
    'candidate_2: switch to the episode's candidate 2 ...'

A heuristic export (``kind == "heuristic"``) carries a registry name and its
parameters instead of a network: ``policy.make_heuristic()`` builds it (that
call imports the simulator stack; loading does not).

Checks, each one ``CheckpointError`` naming what is wrong: a ``policy.json``
of another format or env version, an ``policy.onnx`` that is not the one the
JSON describes (sha256), and observations with a missing key, a wrong shape
or non-finite values.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from oserve_rl.errors import CheckpointError, ConfigError

FORMAT = "oserve-rl-policy"
FORMAT_VERSION = 1
POLICY_FILE = "policy.json"
MASK_KEY = "action_mask"
ONNX_FILE = "policy.onnx"


def installed_env_version() -> int | None:
    """``ENV_VERSION`` of the installed ``oserve_rl.envs``, read from its source.

    Importing ``oserve_rl.envs`` would pull in gymnasium and pydantic; serving
    processes load policies with numpy and onnxruntime only, so the constant is
    read from ``envs/config.py`` with ``ast`` instead. ``None`` when that file
    is not installed.
    """
    try:
        spec = importlib.util.find_spec("oserve_rl.envs")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "config.py"
        if not path.is_file():
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ENV_VERSION"
                                                    for t in node.targets):
                value = ast.literal_eval(node.value)
                return int(value)
    return None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ExportedPolicy:
    """A loaded ``policy.json`` (+ ``policy.onnx``).

    Attributes: ``kind`` (``"onnx"`` or ``"heuristic"``), ``spec`` (the whole
    ``policy.json``), ``name``, ``params`` (a heuristic's parameters; ``{}``
    for networks), ``obs_keys`` and ``obs_shapes`` (what ``act`` expects),
    ``num_actions``.
    """

    def __init__(self, path: Path, spec: dict[str, Any], session: Any = None):
        self.path, self.spec, self._session = path, spec, session
        self.kind: str = spec["kind"]
        if self.kind == "heuristic":
            h = spec["heuristic"]
            self.name, self.params = str(h["name"]), dict(h.get("params", {}))
            self.obs_keys: tuple[str, ...] = ()
            self.obs_shapes: dict[str, tuple[int, ...]] = {}
            self.num_actions = None
            return
        self.name = f"{spec['policy']['algo']}:{spec['provenance'].get('checkpoint', path)}"
        self.params = {}
        entries = spec["observation"]["keys"]
        self.obs_keys = tuple(e["key"] for e in entries)
        self.obs_shapes = {e["key"]: tuple(int(s) for s in e["shape"]) for e in entries}
        self.num_actions = int(spec["actions"]["n"])

    def __repr__(self) -> str:
        return f"ExportedPolicy(kind={self.kind!r}, name={self.name!r}, path={str(self.path)!r})"

    # ---------------------------------------------------------------- acting
    def act(self, obs: Mapping[str, Any]) -> int:
        """The deterministic action for one observation (``Deploy-v0``'s dict of 1-D float32 arrays)."""
        self._need_network("act")
        feed = self._feed(obs, batch=None)
        return int(self._session.run(["action"], feed)[0][0])

    def act_batch(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Actions (int64 ``[B]``) for a batch: every entry shaped ``(B, *shape)``."""
        self._need_network("act_batch")
        return self._session.run(["action"], self._feed(obs, batch=self._batch_size(obs)))[0]

    def logits_batch(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The graph's ``logits`` output (float32 ``[B, num_actions]``, see ``spec["onnx"]["outputs"]``)."""
        self._need_network("logits_batch")
        return self._session.run(["logits"], self._feed(obs, batch=self._batch_size(obs)))[0]

    def action_meaning(self, action: int) -> str:
        """``"name: meaning"`` of an action index, from the action table."""
        self._need_network("action_meaning")
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            raise ConfigError(f"action_meaning: action must be an integer index 0..{self.num_actions - 1}, "
                              f"got {action!r}")
        table = self.spec["actions"]["table"]
        if not 0 <= int(action) < len(table):
            raise CheckpointError(f"action {action} outside 0..{len(table) - 1}")
        row = table[int(action)]
        return f"{row['name']}: {row['meaning']}"

    def make_heuristic(self):
        """The heuristic as an ``oserve_rl.policy.Policy`` (imports the simulator stack)."""
        if self.kind != "heuristic":
            raise CheckpointError(f"{self.path} holds a network ({self.spec['policy']['algo']}), not a heuristic")
        from oserve_rl.agents import make_policy

        return make_policy(self.name, **self.params)

    # ---------------------------------------------------------------- checks
    def _need_network(self, what: str) -> None:
        if self.kind == "heuristic":
            raise CheckpointError(
                f"{self.path} is the heuristic {self.name!r} (params {self.params}): it decides from the cluster "
                f"state, not from an observation, so it has no {what}(); build it with policy.make_heuristic() "
                f"and run it in the control loop")

    def _batch_size(self, obs: Any) -> int:
        for key in self.obs_keys if isinstance(obs, Mapping) else ():
            if key in obs and np.ndim(obs[key]) >= 1:
                return int(np.shape(obs[key])[0])
        return 0

    def _feed(self, obs: Mapping[str, Any], batch: int | None) -> dict[str, np.ndarray]:
        if not isinstance(obs, Mapping):
            raise CheckpointError(f"observation must be a dict keyed by {list(self.obs_keys)}, "
                                  f"got {type(obs).__name__}")
        feed: dict[str, np.ndarray] = {}
        for key in self.obs_keys:
            shape = self.obs_shapes[key]
            want = shape if batch is None else (batch, *shape)
            shown = f"({shape[0]},)" if batch is None and len(shape) == 1 else str(want)
            if key not in obs:
                raise CheckpointError(f"observation is missing {key!r}: expected a float32 array of shape {shown} "
                                      f"(policy {self.path})")
            try:
                x = np.asarray(obs[key], dtype=np.float32)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"observation {key!r}: not a float array ({e}); expected shape {shown}") from None
            if x.shape != want:
                raise CheckpointError(f"observation {key!r} has shape {x.shape}, expected {shown} "
                                      f"(policy {self.path}: exported for "
                                  f"{(self.spec.get('env') or {}).get('space_signature')})")
            if not np.isfinite(x).all():
                raise CheckpointError(f"observation {key!r} has non-finite values (NaN or inf): "
                                      "Deploy-v0 observations are always finite")
            if key == MASK_KEY and not ((x == 0) | (x == 1)).all():
                raise CheckpointError(f"observation {key!r} must hold only 0 (masked) and 1 (allowed), got "
                                      f"{sorted(set(x[(x != 0) & (x != 1)].tolist()))[:5]}")
            feed[key] = x[None] if batch is None else x
        return feed


def load_exported(path: str | Path, *, env_version: int | None = None, threads: int = 1) -> ExportedPolicy:
    """Load ``DIR/policy.json`` (``path``: the directory or the file) and, for networks, ``policy.onnx``.

    ``env_version``: the Deploy-v0 version the observations come from
    (default: the installed one, ``installed_env_version()``); another one in
    the JSON is a ``CheckpointError``. ``threads``: onnxruntime intra-op
    threads (one decision is a small MLP: more threads only add overhead).
    """
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ConfigError(f"load_exported: threads must be a whole number >= 1 (onnxruntime intra-op threads), "
                          f"got {threads!r}")
    if env_version is not None and (isinstance(env_version, (bool, np.bool_))
                                    or not isinstance(env_version, (int, np.integer))):
        raise ConfigError(f"load_exported: env_version must be a whole number (a Deploy-v0 version) or None, "
                          f"got {env_version!r}")
    p = Path(path)
    json_path = p / POLICY_FILE if p.is_dir() else p
    if not json_path.is_file():
        raise CheckpointError(f"no exported policy at {p}: expected {json_path} "
                              "(written by `python -m oserve_rl export CHECKPOINT --out DIR`)")
    try:
        spec = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: not a readable policy.json ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not an oserve-rl exported policy (format {spec.get('format') if isinstance(spec, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    fv = spec.get("format_version")
    if isinstance(fv, bool) or not isinstance(fv, int) or not 1 <= fv <= FORMAT_VERSION:
        raise CheckpointError(f"{json_path}: format_version {fv!r}; this oserve-rl reads versions 1..{FORMAT_VERSION} "
                              "(upgrade oserve-rl or re-export)")
    want = installed_env_version() if env_version is None else int(env_version)
    have = spec.get("env_version")
    if want is None:
        raise CheckpointError("cannot tell which Deploy-v0 version the observations come from (oserve_rl.envs is "
                              "not installed): pass load_exported(..., env_version=N)")
    if have != want:
        raise CheckpointError(f"{json_path} was exported for Deploy-v0 env_version {have!r}, the observations come "
                              f"from env_version {want}: the observation/action layout differs; re-train and "
                              "re-export for this version")
    kind = spec.get("kind")
    if kind == "heuristic":
        if not isinstance(spec.get("heuristic"), dict) or "name" not in spec["heuristic"]:
            raise CheckpointError(f"{json_path}: kind 'heuristic' without a heuristic.name")
        return ExportedPolicy(json_path.parent, spec)
    if kind != "onnx":
        raise CheckpointError(f"{json_path}: unknown kind {kind!r} (valid: 'onnx', 'heuristic')")
    _check_network_spec(json_path, spec)
    return ExportedPolicy(json_path.parent, spec, _session(json_path, spec, threads))


def _whole_number(v: Any, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_network_spec(json_path: Path, spec: dict[str, Any]) -> None:
    """The fields a network export is read by, each present and of the right type (a hand-edited or truncated
    policy.json otherwise fails with a bare KeyError or TypeError deep inside)."""
    def bad(field: str, what: str, got: Any = None) -> CheckpointError:
        shown = "missing" if got is _MISSING else f"got {got!r:.80}"
        return CheckpointError(f"{json_path}: {field} must be {what} ({shown}); re-export the policy")

    for block in ("onnx", "observation", "actions", "policy", "provenance"):
        if not isinstance(spec.get(block, _MISSING), dict):
            raise bad(block, "an object", spec.get(block, _MISSING))
    onnx = spec["onnx"]
    for field in ("file", "sha256"):
        if not isinstance(onnx.get(field, _MISSING), str) or not onnx.get(field):
            raise bad(f"onnx.{field}", "a non-empty string", onnx.get(field, _MISSING))
    if "algo" not in spec["policy"]:
        raise bad("policy.algo", "the training algorithm's name", _MISSING)
    keys = spec["observation"].get("keys", _MISSING)
    if not isinstance(keys, list) or not keys:
        raise bad("observation.keys", "a non-empty list of {key, shape} entries", keys)
    for i, e in enumerate(keys):
        if not isinstance(e, dict) or not isinstance(e.get("key"), str):
            raise bad(f"observation.keys[{i}]", "an object with a string 'key'", e)
        shape = e.get("shape", _MISSING)
        if not isinstance(shape, list) or not shape or not all(_whole_number(d) for d in shape):
            raise bad(f"observation.keys[{i}].shape ({e['key']!r})", "a non-empty list of whole numbers >= 1", shape)
    actions = spec["actions"]
    n = actions.get("n", _MISSING)
    if not _whole_number(n):
        raise bad("actions.n", "a whole number >= 1", n)
    table = actions.get("table", _MISSING)
    if (not isinstance(table, list) or len(table) != n
            or not all(isinstance(r, dict) and "name" in r and "meaning" in r for r in table)):
        raise bad("actions.table", f"a list of actions.n = {n} objects with 'name' and 'meaning'",
                  table if not isinstance(table, list) else f"{len(table)} entries")


_MISSING = type("_Missing", (), {"__repr__": lambda self: "missing"})()


def _dims(shape: Any) -> list[Any]:
    return list(shape) if isinstance(shape, (list, tuple)) else []


def _session(json_path: Path, spec: dict[str, Any], threads: int):
    import onnxruntime as ort

    onnx_path = json_path.parent / spec["onnx"]["file"]
    if not onnx_path.is_file():
        raise CheckpointError(f"{json_path} names {spec['onnx']['file']}, which is not in {json_path.parent}")
    digest = file_sha256(onnx_path)
    if digest != spec["onnx"].get("sha256"):
        raise CheckpointError(f"{onnx_path} is not the graph {json_path.name} describes (sha256 {digest[:12]}..., "
                              f"expected {str(spec['onnx'].get('sha256'))[:12]}...): re-export both together")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a damaged graph
        raise CheckpointError(f"onnxruntime cannot load {onnx_path}: {e}") from None
    names = {i.name for i in session.get_inputs()}
    want = {e["key"] for e in spec["observation"]["keys"]}
    if names != want:
        raise CheckpointError(f"{onnx_path} takes inputs {sorted(names)}, {json_path.name} lists {sorted(want)}")
    # Shapes: the graph's (batch, *shape) against the JSON's; a symbolic or unknown dimension is not checked.
    shapes = {e["key"]: list(e["shape"]) for e in spec["observation"]["keys"]}
    for i in session.get_inputs():
        graph = _dims(i.shape)[1:]
        if len(graph) != len(shapes[i.name]) or any(isinstance(g, int) and g != w for g, w in zip(graph, shapes[i.name])):
            raise CheckpointError(f"{json_path}: observation.keys {i.name!r} has shape {shapes[i.name]}, but "
                                  f"{onnx_path.name} takes {graph} (after the batch axis); re-export both together")
    outputs = {o.name: _dims(o.shape) for o in session.get_outputs()}
    if "action" not in outputs:
        raise CheckpointError(f"{onnx_path} has no 'action' output (outputs: {sorted(outputs)}); re-export the policy")
    n = spec["actions"]["n"]
    logits = outputs.get("logits", [])
    if len(logits) >= 2 and isinstance(logits[-1], int) and logits[-1] != n:
        raise CheckpointError(f"{json_path}: actions.n is {n}, but {onnx_path.name} outputs {logits[-1]} logits per "
                              "observation; re-export both together")
    return session


# ---------------------------------------------------------------- observations and timing
def sample_observations(policy: ExportedPolicy, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random observations (a batch dict) within the exported bounds, with random valid masks.

    Values mix three scales (sigma 1, 10, 1000, clipped to each key's
    bounds) so both typical and extreme inputs occur; the mask always allows
    keep (0) and oserve (1), as the env's does, and each candidate with
    probability 0.5.
    """
    policy._need_network("sample_observations")
    rng = np.random.default_rng(seed)
    scale = rng.choice([1.0, 10.0, 1000.0], size=n)
    out: dict[str, np.ndarray] = {}
    for entry in policy.spec["observation"]["keys"]:
        key, shape = entry["key"], tuple(entry["shape"])
        if key == "action_mask":
            mask = (rng.random((n, *shape)) < 0.5).astype(np.float32)
            mask[:, :2] = 1.0
            out[key] = mask
            continue
        x = rng.normal(size=(n, *shape)) * scale.reshape(-1, *([1] * len(shape)))
        out[key] = np.clip(x, entry.get("low", -1e3), entry.get("high", 1e3)).astype(np.float32)
    return out


def bench_exported(policy: ExportedPolicy | str | Path, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Milliseconds per decision in onnxruntime: ``act`` (checks included), the bare session, and batched.

    Returns ``{"act_ms", "session_ms", "batch_ms_per_decision", "decisions"}``
    (one observation per call for the first two; a batch of ``n`` for the last).
    """
    pol = policy if isinstance(policy, ExportedPolicy) else load_exported(policy)
    pol._need_network("bench")
    n = max(10, int(n))
    batch = sample_observations(pol, n, seed)
    singles = [{k: v[i] for k, v in batch.items()} for i in range(n)]
    for o in singles[:20]:  # warm-up: first runs allocate
        pol.act(o)
    t0 = time.perf_counter()
    for o in singles:
        pol.act(o)
    act_ms = (time.perf_counter() - t0) / n * 1e3
    feeds = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(n)]
    run = pol._session.run
    t0 = time.perf_counter()
    for f in feeds:
        run(["action"], f)
    session_ms = (time.perf_counter() - t0) / n * 1e3
    t0 = time.perf_counter()
    pol.act_batch(batch)
    batch_ms = (time.perf_counter() - t0) / n * 1e3
    return {"act_ms": act_ms, "session_ms": session_ms, "batch_ms_per_decision": batch_ms, "decisions": n}
