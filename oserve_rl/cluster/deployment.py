"""Deployments as data: which replica configs run on which GPUs of a cluster.

A *deployment* serves one model with a set of replicas; each replica has its own
GPU type, tensor-parallel degree (TP) and pipeline-parallel degree (PP) and owns
``tp * pp`` GPUs of the cluster. GPUs are numbered globally 0..N-1, node by node
in the order of ``cluster.node_list()``.

Compact spec strings (case-insensitive, spaces ignored)::

    spec   := group ("+" group)*
    group  := [count "x"] "TP" tp ["PP" pp] ["@" gpu]
    e.g.      "4xTP2", "2xTP4+8xTP1", "1xTP4PP2", "2xTP4@h100+4xTP2@a100-80gb"

``count`` defaults to 1 and ``pp`` to 1; ``gpu`` is any catalog name or alias.
A group without ``@gpu`` goes to the cluster's only GPU type; on a cluster with
several types each of its replicas goes to the *fastest* type (highest BF16
TFLOPS, then HBM bandwidth, then name) that still has enough unassigned GPUs,
after the groups that name their type have taken theirs.

Placement is deterministic and independent of group order: replicas are placed
largest first (GPUs, then TP, then GPU name, then PP); a replica goes whole onto
the best-fit node (fewest free GPUs that still hold it, lowest index on ties);
if no node holds it whole, its PP stages are placed one by one, each stage (one
TP group) on the best-fit node, because PP stages may span nodes but a TP group
must stay inside one node (its all-reduce runs every layer over NVLink), unless
``allow_cross_node_tp=True``. Within a node a replica takes the lowest free GPU ids.
``PlacedReplica.gpu_ids`` is stage-major: stage ``s`` is ``gpu_ids[s*tp:(s+1)*tp]``.
"""

from __future__ import annotations

import itertools
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from oserve_rl.catalog import ClusterSpec, GPUSpec, ModelSpec, get_cluster, get_gpu, get_model
from oserve_rl.errors import ConfigError, DoesNotFitError, OServeError, UnknownNameError

if TYPE_CHECKING:  # the perf layer is imported lazily: placement and parsing need no perf model
    from oserve_rl.perf import EngineConfig, ReplicaPerf

TP_CHOICES: tuple[int, ...] = (1, 2, 4, 8)
PP_CHOICES: tuple[int, ...] = (1, 2, 4)

GRAMMAR = (
    'spec := group ("+" group)*; group := [count "x"] "TP" tp ["PP" pp] ["@" gpu], '
    'e.g. "4xTP2", "2xTP4+8xTP1", "1xTP4PP2", "2xTP4@h100+4xTP2@a100-80gb"'
)
_GROUP_RE = re.compile(r"^(?:(?P<count>\d+)x)?tp(?P<tp>\d+)(?:pp(?P<pp>\d+))?(?:@(?P<gpu>[a-z0-9][a-z0-9._/-]*))?$")


def _perf(model: str, gpu: str, tp: int, pp: int) -> "ReplicaPerf":
    from oserve_rl.perf import replica_perf

    return replica_perf(model=model, gpu=gpu, tp=tp, pp=pp)


def default_engine() -> "EngineConfig":
    from oserve_rl.perf import EngineConfig

    return EngineConfig()


def _gpu_speed_key(gpu: GPUSpec) -> tuple[float, float, str]:
    return (-gpu.bf16_tflops, -gpu.hbm_gbps, gpu.name)


# --------------------------------------------------------------------------- replica configs


@dataclass(frozen=True, order=True)
class ReplicaConfig:
    """One replica's shape: model, GPU type, TP x PP. Names are canonical catalog names."""

    model: str
    gpu: str
    tp: int
    pp: int = 1

    def __post_init__(self) -> None:
        for name in ("tp", "pp"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"replica {name} must be a positive integer, got {v!r}")
        # Canonical names keep configs equal (and hashable alike) whatever alias built them.
        object.__setattr__(self, "model", get_model(self.model).name)
        object.__setattr__(self, "gpu", get_gpu(self.gpu).name)

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp

    @property
    def gpu_spec(self) -> GPUSpec:
        return get_gpu(self.gpu)

    @property
    def model_spec(self) -> ModelSpec:
        return get_model(self.model)

    def perf(self) -> "ReplicaPerf":
        return _perf(self.model, self.gpu, self.tp, self.pp)

    def label(self, with_gpu: bool = True) -> str:
        """``TP4PP2@h100-sxm``-style label (the group syntax without a count)."""
        s = f"TP{self.tp}" + (f"PP{self.pp}" if self.pp != 1 else "")
        return f"{s}@{self.gpu}" if with_gpu else s

    def check(self, engine: "EngineConfig | None" = None) -> None:
        """Raise ConfigError/DoesNotFitError (naming this config) if the perf model rejects it."""
        m = self.model_spec
        if m.num_heads % self.tp:
            raise ConfigError(
                f"replica {self.label()}: TP {self.tp} does not divide the {m.num_heads} attention heads of {m.name} "
                f"(valid TP: {', '.join(str(t) for t in TP_CHOICES if not m.num_heads % t)})"
            )
        # vLLM shards KV heads when TP divides them and replicates them when they divide TP.
        if m.num_kv_heads % self.tp and self.tp % m.num_kv_heads:
            raise ConfigError(
                f"replica {self.label()}: TP {self.tp} neither divides nor is a multiple of the "
                f"{m.num_kv_heads} KV heads of {m.name}"
            )
        if self.pp > m.num_layers:
            raise ConfigError(f"replica {self.label()}: PP {self.pp} exceeds the {m.num_layers} layers of {m.name}")
        try:
            self.perf().check_fits(engine or default_engine())
        except UnknownNameError as e:
            raise ConfigError(f"replica {self.label()}: {e}") from None
        except OServeError as e:
            raise type(e)(f"replica {self.label()} of {self.model}: {e}") from None


@dataclass(frozen=True)
class PlacedReplica:
    """A replica config on concrete GPUs (global ids, stage-major: stage s = gpu_ids[s*tp:(s+1)*tp])."""

    config: ReplicaConfig
    gpu_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        ids = self.gpu_ids
        if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Iterable):
            raise ConfigError(f"replica {self.config.label()}: gpu_ids must be a list of GPU ids, got {ids!r}")
        ids = tuple(ids)
        for g in ids:
            if isinstance(g, bool) or not isinstance(g, numbers.Integral):
                raise ConfigError(
                    f"replica {self.config.label()}: gpu_ids must be whole-number GPU ids, got {g!r} in {list(ids)!r}"
                )
        object.__setattr__(self, "gpu_ids", tuple(int(g) for g in ids))
        if len(self.gpu_ids) != self.config.num_gpus:
            raise ConfigError(
                f"replica {self.config.label()} needs {self.config.num_gpus} GPUs, got {len(self.gpu_ids)}: {self.gpu_ids}"
            )
        if len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ConfigError(f"replica {self.config.label()} lists a GPU twice: {self.gpu_ids}")

    def stage_gpu_ids(self, stage: int) -> tuple[int, ...]:
        tp = self.config.tp
        return self.gpu_ids[stage * tp : (stage + 1) * tp]


@dataclass(frozen=True)
class ReplicaGroup:
    """``count`` replicas of one shape; ``gpu=None`` lets the cluster choose (see module doc)."""

    count: int
    tp: int
    pp: int = 1
    gpu: str | None = None

    def __post_init__(self) -> None:
        for name in ("count", "tp", "pp"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"group {self.label()}: {name} must be a positive integer, got {v!r}")

    def label(self) -> str:
        s = f"{self.count}xTP{self.tp}" + (f"PP{self.pp}" if self.pp != 1 else "")
        return f"{s}@{self.gpu}" if self.gpu else s


# --------------------------------------------------------------------------- cluster topology


@dataclass(frozen=True)
class NodeInfo:
    index: int
    gpu: GPUSpec
    gpu_ids: tuple[int, ...]
    intra_node_gbps: float


def cluster_nodes(cluster: ClusterSpec) -> list[NodeInfo]:
    """Nodes with their global GPU ids (numbered node by node)."""
    out, start = [], 0
    for i, (gpu, n, gbps) in enumerate(cluster.node_list()):
        out.append(NodeInfo(i, gpu, tuple(range(start, start + n)), float(gbps)))
        start += n
    return out


def gpu_node_index(cluster: ClusterSpec) -> list[int]:
    """``node_of[gpu_id]`` for every GPU of the cluster."""
    return [n.index for n in cluster_nodes(cluster) for _ in n.gpu_ids]


# --------------------------------------------------------------------------- the deployment


@dataclass(frozen=True)
class Deployment:
    """Replicas of one model placed on a cluster. Replica order is the order given (routers index it)."""

    model: str
    cluster: ClusterSpec
    replicas: tuple[PlacedReplica, ...]
    allow_cross_node_tp: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", get_model(self.model).name)
        object.__setattr__(self, "replicas", tuple(self.replicas))
        if not self.replicas:
            raise ConfigError(
                f"deployment of {self.model} on {getattr(self.cluster, 'name', self.cluster)!r} has no replicas; "
                "a deployment needs at least one replica (e.g. '1xTP1')"
            )

    # -- views
    def __len__(self) -> int:
        return len(self.replicas)

    @property
    def configs(self) -> tuple[ReplicaConfig, ...]:
        return tuple(r.config for r in self.replicas)

    @property
    def num_gpus(self) -> int:
        return sum(r.config.num_gpus for r in self.replicas)

    def gpus_used_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.replicas:
            out[r.config.gpu] = out.get(r.config.gpu, 0) + r.config.num_gpus
        return out

    def spec_string(self) -> str:
        """Compact spec; consecutive replicas of one config form a group.

        ``@gpu`` is written only on clusters with several GPU types, so
        ``parse_deployment(d.spec_string(), d.cluster, d.model) == d`` for every
        deployment with canonical placement (any deployment that was parsed or
        built with ``from_groups`` without ``prefer``).
        """
        with_gpu = len(self.cluster.gpus_by_type()) > 1
        parts = []
        for cfg, grp in itertools.groupby(self.configs):
            parts.append(f"{len(list(grp))}x{cfg.label(with_gpu)}")
        return "+".join(parts)

    def __str__(self) -> str:
        return f"{self.model} on {self.cluster.name}: {self.spec_string() or '(empty)'}"

    # -- construction
    @classmethod
    def from_groups(
        cls,
        groups: Iterable[ReplicaGroup | tuple[Any, ...]],
        cluster: ClusterSpec | str,
        model: ModelSpec | str,
        *,
        engine: "EngineConfig | None" = None,
        allow_cross_node_tp: bool = False,
        prefer: "Deployment | None" = None,
        check_memory: bool = True,
    ) -> "Deployment":
        """Build and place a deployment from ``(count, tp, pp, gpu)`` tuples or ReplicaGroups.

        ``prefer``: an existing deployment of the same model and cluster whose
        replicas keep their GPUs when the new deployment has the same config
        (matched in order), so a switch restarts as few replicas as possible.
        """
        cluster = get_cluster(cluster)
        model_name = get_model(model).name
        if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Iterable):
            raise ConfigError(f"deployment groups must be a list of (count, tp[, pp[, gpu]]) or ReplicaGroups, got {groups!r}")
        grps = [_as_group(g) for g in groups]
        if not grps:
            raise ConfigError(
                f"deployment of {model_name} on {cluster.name!r}: no replica groups given; "
                "a deployment needs at least one replica (e.g. '1xTP1')"
            )
        configs = _assign_gpu_types(grps, cluster, model_name, allow_cross_node_tp)
        engine = engine or (default_engine() if check_memory else None)
        seen: set[ReplicaConfig] = set()
        for cfg in configs:
            if cfg not in seen:
                seen.add(cfg)
                if check_memory:
                    cfg.check(engine)
        placed = place_replicas(configs, cluster, allow_cross_node_tp=allow_cross_node_tp, prefer=prefer)
        return cls(model_name, cluster, tuple(placed), allow_cross_node_tp)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "cluster": self.cluster.model_dump(mode="json"),
            "allow_cross_node_tp": self.allow_cross_node_tp,
            "replicas": [
                {"gpu": r.config.gpu, "tp": r.config.tp, "pp": r.config.pp, "gpu_ids": list(r.gpu_ids)}
                for r in self.replicas
            ],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, engine: "EngineConfig | None" = None, check_memory: bool = True
    ) -> "Deployment":
        """Inverse of ``to_dict``; validates GPU ids, types, TP-in-node and memory fit."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"deployment dict: expected a mapping, got {type(data).__name__}")
        unknown = set(data) - {"model", "cluster", "replicas", "allow_cross_node_tp"}
        missing = {"model", "cluster", "replicas"} - set(data)
        if unknown or missing:
            raise ConfigError(
                f"deployment dict: unknown keys {sorted(unknown)} / missing keys {sorted(missing)} "
                "(valid: model, cluster, replicas, allow_cross_node_tp)"
            )
        c = data["cluster"]
        if isinstance(c, Mapping):
            try:
                cluster = ClusterSpec(**c)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"deployment dict: cluster: {e}") from None
        else:
            cluster = get_cluster(c)
        model_name = get_model(data["model"]).name
        reps = data["replicas"]
        if isinstance(reps, (str, bytes, Mapping)) or not isinstance(reps, Iterable):
            raise ConfigError(f"deployment dict: replicas must be a list of replica dicts, got {reps!r}")
        reps = list(reps)
        if not reps:
            raise ConfigError("deployment dict: replicas is empty; a deployment needs at least one replica")
        placed = []
        for i, r in enumerate(reps):
            if not isinstance(r, Mapping) or set(r) != {"gpu", "tp", "pp", "gpu_ids"}:
                raise ConfigError(f"deployment dict: replicas[{i}] must have exactly keys gpu, tp, pp, gpu_ids; got {r!r}")
            try:
                cfg = ReplicaConfig(model_name, r["gpu"], r["tp"], r["pp"])
                placed.append(PlacedReplica(cfg, r["gpu_ids"]))
            except ConfigError as e:
                raise ConfigError(f"deployment dict: replicas[{i}]: {e}") from None
        dep = cls(model_name, cluster, tuple(placed), bool(data.get("allow_cross_node_tp", False)))
        validate_deployment(dep, engine=engine, check_memory=check_memory)
        return dep


def _as_group(g: ReplicaGroup | tuple[Any, ...] | Mapping[str, Any]) -> ReplicaGroup:
    if isinstance(g, ReplicaGroup):
        return g
    if isinstance(g, Mapping):
        try:
            return ReplicaGroup(**g)
        except TypeError as e:
            raise ConfigError(f"replica group {dict(g)!r}: {e} (keys: count, tp, pp, gpu)") from None
    if isinstance(g, tuple | list) and 2 <= len(g) <= 4:
        return ReplicaGroup(*g)
    raise ConfigError(f"replica group {g!r}: expected (count, tp[, pp[, gpu]]) or a ReplicaGroup")


def parse_groups(spec: str) -> list[ReplicaGroup]:
    """Parse a spec string into groups (no cluster needed). Raises ConfigError quoting the grammar."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"deployment spec {spec!r} is empty; grammar: {GRAMMAR}")
    out = []
    for raw in spec.split("+"):
        text = re.sub(r"\s+", "", raw).lower()
        m = _GROUP_RE.match(text)
        if not m:
            raise ConfigError(f"deployment spec {spec!r}: cannot parse group {raw.strip()!r}; grammar: {GRAMMAR}")
        count = int(m["count"]) if m["count"] else 1
        tp, pp = int(m["tp"]), int(m["pp"]) if m["pp"] else 1
        for name, v in (("count", count), ("TP", tp), ("PP", pp)):
            if v < 1:
                raise ConfigError(f"deployment spec {spec!r}: group {raw.strip()!r} has {name} {v}; it must be >= 1")
        out.append(ReplicaGroup(count, tp, pp, m["gpu"]))
    return out


def parse_deployment(
    spec: str,
    cluster: ClusterSpec | str,
    model: ModelSpec | str,
    *,
    engine: "EngineConfig | None" = None,
    allow_cross_node_tp: bool = False,
    prefer: Deployment | None = None,
    check_memory: bool = True,
) -> Deployment:
    """``parse_deployment("2xTP4+8xTP1", "h100x16", "llama-2-70b")`` -> placed, validated Deployment."""
    return Deployment.from_groups(
        parse_groups(spec), cluster, model, engine=engine, allow_cross_node_tp=allow_cross_node_tp,
        prefer=prefer, check_memory=check_memory,
    )


# --------------------------------------------------------------------------- GPU types and placement


def _assign_gpu_types(
    groups: Sequence[ReplicaGroup], cluster: ClusterSpec, model: str, cross_tp: bool = False
) -> list[ReplicaConfig]:
    """One ReplicaConfig per replica, in group order; checks GPU totals per type."""
    have = cluster.gpus_by_type()
    need: dict[str, int] = {}
    need_by_group: dict[str, list[str]] = {}
    resolved: list[str | None] = []
    for g in groups:
        if g.gpu is None:
            resolved.append(None)
            continue
        try:
            gpu = get_gpu(g.gpu).name
        except UnknownNameError as e:
            raise ConfigError(f"group {g.label()!r}: {e}") from None
        if gpu not in have:
            raise ConfigError(
                f"group {g.label()!r}: cluster {cluster.name!r} has no {gpu} GPUs (it has: "
                + ", ".join(f"{n} {t}" for t, n in have.items()) + ")"
            )
        resolved.append(gpu)
        need[gpu] = need.get(gpu, 0) + g.count * g.tp * g.pp
        need_by_group.setdefault(gpu, []).append(f"{g.label()!r} {g.count * g.tp * g.pp}")
    for gpu, n in need.items():
        if n > have[gpu]:
            raise DoesNotFitError(
                f"deployment needs {n} {gpu} GPUs ({', '.join(need_by_group[gpu])}) "
                f"but cluster {cluster.name!r} has {have[gpu]}"
            )
    free = {t: have[t] - need.get(t, 0) for t in have}
    by_speed = sorted(have, key=lambda t: _gpu_speed_key(get_gpu(t)))
    max_node = _max_node_size_by_type(cluster)
    configs: list[ReplicaConfig] = []
    for g, gpu in zip(groups, resolved):
        for _ in range(g.count):
            if gpu is not None:
                configs.append(ReplicaConfig(model, gpu, g.tp, g.pp))
                continue
            # A type whose nodes cannot hold the TP group is skipped: it could never place it.
            fits = [t for t in by_speed if free[t] >= g.tp * g.pp and (cross_tp or max_node[t] >= g.tp)]
            if not fits and not cross_tp and all(max_node[t] < g.tp for t in by_speed):
                raise DoesNotFitError(
                    f"group {g.label()!r}: a TP group of {g.tp} GPUs cannot be placed inside one node (largest node "
                    f"of cluster {cluster.name!r} has {max(max_node.values())} GPUs); use a smaller TP with PP, "
                    "or allow_cross_node_tp=True"
                )
            if not fits:
                left = ", ".join(f"{n} {t}" for t, n in free.items())
                raise DoesNotFitError(
                    f"group {g.label()!r}: no GPU type has {g.tp * g.pp} unassigned GPUs left for another replica "
                    f"(cluster {cluster.name!r} has {cluster.num_gpus} GPUs; unassigned: {left})"
                )
            free[fits[0]] -= g.tp * g.pp
            configs.append(ReplicaConfig(model, fits[0], g.tp, g.pp))
    return configs


def _max_node_size_by_type(cluster: ClusterSpec) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in cluster_nodes(cluster):
        out[n.gpu.name] = max(out.get(n.gpu.name, 0), len(n.gpu_ids))
    return out


def _placement_key(cfg: ReplicaConfig) -> tuple[int, int, str, int]:
    return (-cfg.num_gpus, -cfg.tp, cfg.gpu, -cfg.pp)


def place_replicas(
    configs: Sequence[ReplicaConfig],
    cluster: ClusterSpec,
    *,
    allow_cross_node_tp: bool = False,
    prefer: Deployment | None = None,
) -> list[PlacedReplica]:
    """Place replicas (result in input order); see the module doc for the rule."""
    cluster = get_cluster(cluster)
    have = cluster.gpus_by_type()
    for i, cfg in enumerate(configs):
        if not isinstance(cfg, ReplicaConfig):
            raise ConfigError(f"place_replicas: configs[{i}] must be a ReplicaConfig, got {cfg!r}")
        if cfg.gpu not in have:
            raise ConfigError(
                f"place_replicas: replica {i} ({cfg.label()}) needs {cfg.gpu} GPUs but cluster {cluster.name!r} has none "
                "(it has: " + ", ".join(f"{n} {t}" for t, n in have.items()) + ")"
            )
    nodes = cluster_nodes(cluster)
    free: list[list[int]] = [list(n.gpu_ids) for n in nodes]
    out: list[PlacedReplica | None] = [None] * len(configs)
    if prefer is not None:
        if prefer.cluster != cluster:
            raise ConfigError(f"prefer: deployment is on cluster {prefer.cluster.name!r}, not {cluster.name!r}")
        node_of = gpu_node_index(cluster)
        used_old: set[int] = set()
        for i, cfg in enumerate(configs):
            for j, old in enumerate(prefer.replicas):
                if j not in used_old and old.config == cfg:
                    used_old.add(j)
                    out[i] = old
                    for g in old.gpu_ids:
                        free[node_of[g]].remove(g)
                    break
    order = sorted((i for i in range(len(configs)) if out[i] is None), key=lambda i: (_placement_key(configs[i]), i))
    for i in order:
        out[i] = PlacedReplica(configs[i], _place_one(configs[i], nodes, free, cluster, allow_cross_node_tp, i))
    return [r for r in out if r is not None]


def _best_fit(nodes: list[NodeInfo], free: list[list[int]], gpu: str, need: int) -> int | None:
    cands = [n.index for n in nodes if n.gpu.name == gpu and len(free[n.index]) >= need]
    return min(cands, key=lambda k: (len(free[k]), k)) if cands else None


def _take(free: list[list[int]], node: int, n: int) -> list[int]:
    free[node].sort()
    got, free[node][:] = free[node][:n], free[node][n:]
    return got


def _place_one(
    cfg: ReplicaConfig, nodes: list[NodeInfo], free: list[list[int]], cluster: ClusterSpec, cross_tp: bool, idx: int
) -> tuple[int, ...]:
    whole = _best_fit(nodes, free, cfg.gpu, cfg.num_gpus)
    if whole is not None:
        return tuple(_take(free, whole, cfg.num_gpus))
    snapshot = [list(f) for f in free]
    ids: list[int] = []
    for stage in range(cfg.pp):
        k = _best_fit(nodes, free, cfg.gpu, cfg.tp)
        if k is not None:
            ids += _take(free, k, cfg.tp)
            continue
        if cross_tp:
            # Fewest nodes for the group: drain the nodes with most free GPUs first.
            type_nodes = sorted((n.index for n in nodes if n.gpu.name == cfg.gpu), key=lambda j: (-len(free[j]), j))
            if sum(len(free[j]) for j in type_nodes) >= cfg.tp:
                want = cfg.tp
                for j in type_nodes:
                    take = min(want, len(free[j]))
                    ids += _take(free, j, take)
                    want -= take
                    if not want:
                        break
                continue
        free[:] = snapshot
        type_nodes = [n for n in nodes if n.gpu.name == cfg.gpu]
        largest = max(len(n.gpu_ids) for n in type_nodes)
        free_per_node = {n.index: len(snapshot[n.index]) for n in type_nodes}
        if cfg.tp > largest and not cross_tp:
            raise DoesNotFitError(
                f"replica {idx} ({cfg.label()}): a TP group of {cfg.tp} GPUs cannot be placed inside one node "
                f"(largest {cfg.gpu} node of cluster {cluster.name!r} has {largest} GPUs); use a smaller TP "
                "with PP, or allow_cross_node_tp=True"
            )
        raise DoesNotFitError(
            f"replica {idx} ({cfg.label()}): no {cfg.gpu} node has {cfg.tp} free GPUs for its TP group "
            f"(free GPUs per node {free_per_node} after placing larger replicas); the deployment fragments "
            f"cluster {cluster.name!r}"
        )
    return tuple(ids)


def validate_deployment(
    dep: Deployment, *, engine: "EngineConfig | None" = None, check_memory: bool = True
) -> None:
    """Check a deployment built by hand: GPU ids exist and match types, no GPU shared, TP inside a node, fits memory."""
    nodes = cluster_nodes(dep.cluster)
    node_of = gpu_node_index(dep.cluster)
    gpu_type = [n.gpu.name for n in nodes for _ in n.gpu_ids]
    owner: dict[int, int] = {}
    for i, r in enumerate(dep.replicas):
        cfg = r.config
        if cfg.model != dep.model:
            raise ConfigError(f"replica {i} ({cfg.label()}) serves {cfg.model}, the deployment serves {dep.model}")
        for g in r.gpu_ids:
            if not 0 <= g < len(node_of):
                raise ConfigError(
                    f"replica {i} ({cfg.label()}): GPU id {g} is outside cluster {dep.cluster.name!r} "
                    f"(valid ids 0..{len(node_of) - 1})"
                )
            if gpu_type[g] != cfg.gpu:
                raise ConfigError(f"replica {i} ({cfg.label()}): GPU {g} is a {gpu_type[g]}, not a {cfg.gpu}")
            if g in owner:
                raise ConfigError(f"replica {i} ({cfg.label()}): GPU {g} is already used by replica {owner[g]}")
            owner[g] = i
        if not dep.allow_cross_node_tp:
            for s in range(cfg.pp):
                spans = sorted({node_of[g] for g in r.stage_gpu_ids(s)})
                if len(spans) > 1:
                    raise DoesNotFitError(
                        f"replica {i} ({cfg.label()}): stage {s}'s TP group {r.stage_gpu_ids(s)} spans nodes {spans}; "
                        "a TP group must stay inside one node unless allow_cross_node_tp=True"
                    )
    if check_memory:
        engine = engine or default_engine()
        for cfg in set(dep.configs):
            cfg.check(engine)


# --------------------------------------------------------------------------- enumeration


def enumerate_replica_configs(
    model: ModelSpec | str,
    cluster: ClusterSpec | str,
    engine: "EngineConfig | None" = None,
    *,
    tp_choices: Sequence[int] = TP_CHOICES,
    pp_choices: Sequence[int] = PP_CHOICES,
) -> list[ReplicaConfig]:
    """Feasible (gpu, tp, pp) configs: TP inside the largest node, TP*PP within the type's GPUs, fits memory.

    Sorted fastest GPU type first, then by GPU count, TP, PP (ascending).
    """
    cluster, model_name = get_cluster(cluster), get_model(model).name
    engine = engine or default_engine()
    have, max_node = cluster.gpus_by_type(), _max_node_size_by_type(cluster)
    out = []
    for gpu in sorted(have, key=lambda t: _gpu_speed_key(get_gpu(t))):
        for tp, pp in sorted(itertools.product(tp_choices, pp_choices), key=lambda x: (x[0] * x[1], x[0])):
            if tp > max_node[gpu] or tp * pp > have[gpu]:
                continue
            cfg = ReplicaConfig(model_name, gpu, tp, pp)
            try:
                cfg.check(engine)
            except ConfigError:  # DoesNotFitError too: infeasible configs are simply not offered
                continue
            out.append(cfg)
    return out


def enumerate_deployments(
    model: ModelSpec | str,
    cluster: ClusterSpec | str,
    max_gpus: int | None = None,
    homogeneous: bool = True,
    limit: int | None = 1000,
    *,
    engine: "EngineConfig | None" = None,
    configs: Sequence[ReplicaConfig] | None = None,
) -> list[Deployment]:
    """Candidate deployments, deterministic order, at most ``limit``.

    homogeneous=True: for each feasible config, as many replicas of it as fit in
    ``min(max_gpus, GPUs of its type)`` (one GPU type per deployment).
    homogeneous=False: every *maximal* multiset of feasible configs (no further
    feasible replica fits in the GPUs left, within ``max_gpus`` in total) that
    can be placed, by depth-first search over configs in
    ``enumerate_replica_configs`` order reversed (largest replicas first);
    homogeneous deployments are among them.
    """
    cluster, model_name = get_cluster(cluster), get_model(model).name
    cfgs = list(configs) if configs is not None else enumerate_replica_configs(model_name, cluster, engine)
    have = cluster.gpus_by_type()
    if max_gpus is not None and (isinstance(max_gpus, bool) or not isinstance(max_gpus, numbers.Integral)
                                 or max_gpus < 1):
        raise ConfigError(f"enumerate_deployments: max_gpus must be a whole number >= 1 or None, got {max_gpus!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise ConfigError(f"enumerate_deployments: limit must be a whole number >= 1 or None (no limit), got {limit!r}")
    budget = cluster.num_gpus if max_gpus is None else int(max_gpus)
    out: list[Deployment] = []

    def build(chosen: Sequence[ReplicaConfig]) -> Deployment | None:
        try:
            placed = place_replicas(chosen, cluster)
        except DoesNotFitError:
            return None
        return Deployment(model_name, cluster, tuple(placed))

    if homogeneous:
        for cfg in cfgs:
            n = min(budget, have[cfg.gpu]) // cfg.num_gpus
            if n and (d := build([cfg] * n)) is not None:
                out.append(d)
                if limit is not None and len(out) >= limit:
                    break
        return out

    order = sorted(cfgs, key=lambda c: (_gpu_speed_key(c.gpu_spec), _placement_key(c)))

    def dfs(start: int, chosen: list[ReplicaConfig], left_total: int, left: dict[str, int]) -> bool:
        for k in range(start, len(order)):
            c = order[k]
            if c.num_gpus <= left_total and c.num_gpus <= left[c.gpu]:
                left[c.gpu] -= c.num_gpus
                chosen.append(c)
                stop = dfs(k, chosen, left_total - c.num_gpus, left)
                chosen.pop()
                left[c.gpu] += c.num_gpus
                if stop:
                    return True
        # maximal: nothing at all fits any more (also configs earlier in the order)
        if chosen and not any(c.num_gpus <= min(left_total, left[c.gpu]) for c in order):
            if (d := build(chosen)) is not None:
                out.append(d)
                return limit is not None and len(out) >= limit
        return False

    dfs(0, [], budget, dict(have))
    return out


__all__ = [
    "GRAMMAR", "PP_CHOICES", "TP_CHOICES", "Deployment", "NodeInfo", "PlacedReplica", "ReplicaConfig", "ReplicaGroup",
    "cluster_nodes", "enumerate_deployments", "enumerate_replica_configs", "gpu_node_index", "parse_deployment",
    "parse_groups", "place_replicas", "validate_deployment",
]
