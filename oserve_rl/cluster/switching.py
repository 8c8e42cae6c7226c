"""What it costs to switch from one deployment to another, as a plan the simulator executes.

``plan_switch(old, new)`` sorts replicas into three sets:

- *kept*: same config on the same GPUs; they serve on, untouched.
- *leaving*: old replicas not kept. They get no new requests at once and leave
  by ``drain`` (finish their requests in place) or ``migrate`` (requests with
  at least ``migrate_min_kv_tokens`` in KV move to another replica over the
  links, see ``SwitchPlan.kv_transfer_s``; shorter ones drain, as OServe does).
- *starting*: new replicas not kept. Each gets ``load_s``: parameter transfer
  plus engine initialisation, counted from the moment it may start loading.

A starting replica that needs a GPU still held by a leaving replica may start
loading only once that replica is gone: ``blocked_by[new_idx]`` names those old
replicas. The simulator reports when each is gone and asks
``ready_at_s(new_idx, switch_start_s, old_gone_at_s)``; ``ready_s`` is the
same delay assuming the blockers vanish at once (exact for unblocked replicas).

Parameter sources, ``costs.mode``:

- ``reshard`` (OServe, default): every new GPU needs its weight shard: layers
  ``[s/pp, (s+1)/pp)`` x tensor slice ``[t/tp, (t+1)/tp)`` of the model
  (stage s, TP rank t). Each old replica of the same model holds the whole
  model, so any one of them covers a shard exactly, in pieces from its GPUs;
  a piece already on the target GPU costs nothing. New GPUs are served in
  order; each picks the old replica that finishes its pieces soonest given
  the bytes its source GPUs already send (least-loaded, which prefers
  NVLink neighbours since their links are faster). Old GPUs keep their weights
  resident until the switch completes (OServe frees a source only after the
  pulls), so a draining replica is still a source.
  Time of a piece = bytes its source sends over that link class in the whole
  switch / (link GB/s x link_efficiency) (links shared by concurrent transfers
  from one source, counted by that source's load), and a GPU also waits for
  its own inbound bytes per link class; a replica's transfer time is the max
  over its GPUs. NVLink (node ``intra_node_gbps``) inside a node, the cluster's
  ``inter_node_gbps`` across. Then ``reshard_init_s``. Replicas with no
  source (first deployment, other model) fall back to reload.
- ``reload``: every new GPU reads its shard from its node's local disk
  (``disk_gbps`` per node, shared by all GPUs of the node loading in this
  switch; the page cache serves repeated reads of the checkpoint, so a node
  reads at most one model's bytes), then ``engine_init_s``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oserve_rl.catalog import _fmt_validation, _read_yaml, configs_dir, get_model
from oserve_rl.cluster.deployment import Deployment, PlacedReplica, cluster_nodes, gpu_node_index
from oserve_rl.errors import ConfigError

if TYPE_CHECKING:
    from oserve_rl.catalog import ClusterSpec

LeaveMode = Literal["drain", "migrate"]


class SwitchCosts(BaseModel):
    """Switch-cost parameters; defaults from the switching-cost table in research/perf-model.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["reshard", "reload"] = "reshard"
    # Router weights / worker set change (table: ~0.05 s).
    router_update_s: float = Field(0.05, ge=0)
    # Engine start after an in-memory re-shard: OServe keeps worker processes alive,
    # so this is a wake-up, not a restart (vLLM sleep-mode wake 0.1-6 s; OServe's
    # whole switch < 10 s for 70B).
    reshard_init_s: float = Field(5.0, ge=0)
    # Warm vLLM restart with compile cache (table: 15-60 s), paid after a disk reload.
    engine_init_s: float = Field(20.0, ge=0)
    # Local disk read per node: 70B (138 GB) / 2.15 GB/s = 64 s, + 20 s init = the table's ~84 s.
    disk_gbps: float = Field(2.15, gt=0)
    # Achieved fraction of the nominal link bandwidth for weight and KV copies.
    link_efficiency: float = Field(0.8, gt=0, le=1)
    migrate_enabled: bool = True
    # With migrate on, a request with at least this many tokens in KV moves; shorter ones drain.
    migrate_min_kv_tokens: int = Field(1024, ge=0)
    # Typical time for a leaving replica to drain; only estimate_switch_downtime_s uses it
    # (the simulator knows the real drain end).
    drain_estimate_s: float = Field(15.0, ge=0)


def default_switch_costs_path() -> Path:
    return configs_dir() / "switching" / "default.yaml"


def load_switch_costs(path: str | Path | None = None) -> SwitchCosts:
    """Read a flat YAML mapping of SwitchCosts fields; unknown keys and bad values are errors naming the file."""
    p = Path(path) if path is not None else default_switch_costs_path()
    data = _read_yaml(p)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of switch-cost fields, got {type(data).__name__}")
    try:
        return SwitchCosts(**data)
    except ValidationError as e:
        raise ConfigError(_fmt_validation(e, str(p), "switching") + f" (valid keys: {', '.join(SwitchCosts.model_fields)})") from None


@dataclass(frozen=True)
class Transfer:
    """Bytes for one new GPU's shard: from an old GPU (or disk, src_gpu None)."""

    new_replica: int
    dst_gpu: int
    src_gpu: int | None
    bytes: int
    link: Literal["local", "nvlink", "network", "disk"]


@dataclass(frozen=True)
class SwitchPlan:
    old: Deployment | None
    new: Deployment
    costs: SwitchCosts
    kept: Mapping[int, int]                     # new index -> old index (same config, same GPUs)
    leaving: tuple[int, ...]                     # old indices
    leave_mode: Mapping[int, LeaveMode]          # old index -> drain | migrate
    starting: tuple[int, ...]                    # new indices
    source: Mapping[int, Literal["reshard", "reload"]]  # new index -> where its weights come from
    load_s: Mapping[int, float]                  # new index -> transfer + init, from its load start
    blocked_by: Mapping[int, frozenset[int]]     # new index -> old replicas whose GPUs it needs (every new index)
    transfers: tuple[Transfer, ...]
    router_update_s: float

    @property
    def is_noop(self) -> bool:
        return self.old is not None and self.old == self.new

    @property
    def router_only(self) -> bool:
        """No replica starts or leaves; only the router changes (order or weights)."""
        return not self.starting and not self.leaving

    @property
    def ready_s(self) -> dict[int, float]:
        """Delay after the switch starts until each new replica accepts, if its blockers were gone at once."""
        return {i: (0.0 if i in self.kept else self.load_s[i]) for i in range(len(self.new))}

    def ready_at_s(self, new_idx: int, switch_start_s: float, old_gone_at_s: Mapping[int, float]) -> float:
        """When new replica ``new_idx`` accepts, given when its blocking old replicas were gone."""
        if new_idx in self.kept:
            return switch_start_s
        missing = self.blocked_by[new_idx] - set(old_gone_at_s)
        if missing:
            raise ConfigError(f"new replica {new_idx} waits for old replicas {sorted(missing)}; pass their gone times")
        start = max([switch_start_s, *(old_gone_at_s[o] for o in self.blocked_by[new_idx])])
        return start + self.load_s[new_idx]

    def kv_transfer_s(self, kv_tokens: int, src: PlacedReplica, dst: PlacedReplica) -> float:
        """Time to move ``kv_tokens`` of KV cache between two replicas (for ``migrate``)."""
        return kv_transfer_s(self.new.cluster, self.new.model, kv_tokens, src, dst, self.costs)

    def summary(self) -> str:
        parts = [f"keep {len(self.kept)}", f"leave {len(self.leaving)}", f"start {len(self.starting)}"]
        if self.starting:
            parts.append(f"max load {max(self.load_s[i] for i in self.starting):.1f} s")
            blocked = sum(1 for i in self.starting if self.blocked_by[i])
            parts.append(f"{blocked} wait for GPUs")
        return ", ".join(parts)


@lru_cache(maxsize=64)
def _link_gbps(cluster: "ClusterSpec") -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """(node of each GPU, intra-node Gb/s per node, inter-node Gb/s): fixed per cluster, and asked at every
    switch plan and every migrated request's KV transfer (an RL env with random actions switches each step)."""
    nodes = cluster_nodes(cluster)
    return tuple(gpu_node_index(cluster)), tuple(n.intra_node_gbps for n in nodes), float(cluster.inter_node_gbps)


def kv_transfer_s(
    cluster: "ClusterSpec", model: str, kv_tokens: int, src: PlacedReplica, dst: PlacedReplica,
    costs: SwitchCosts | None = None,
) -> float:
    """KV bytes move GPU-to-GPU in parallel over min(#src, #dst) pairs; NVLink only if both share one node."""
    costs = costs or SwitchCosts()
    node_of, intra, inter = _link_gbps(cluster)
    nbytes = kv_tokens * get_model(model).kv_bytes_per_token
    nodes = {node_of[g] for g in (*src.gpu_ids, *dst.gpu_ids)}
    gbps = intra[next(iter(nodes))] if len(nodes) == 1 else inter
    pairs = min(len(src.gpu_ids), len(dst.gpu_ids))
    return nbytes / pairs / (gbps * 1e9 * costs.link_efficiency)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _shard_pieces(old: PlacedReplica, stage: int, pp: int, rank: int, tp: int) -> list[tuple[int, float]]:
    """(old GPU, fraction of the whole model) pieces of old replica covering new shard (stage/pp, rank/tp)."""
    ids = old.gpu_ids
    return [(ids[i], f) for i, f in _shard_overlaps(old.config.pp, old.config.tp, stage, pp, rank, tp)]


@lru_cache(maxsize=4096)
def _shard_overlaps(old_pp: int, old_tp: int, stage: int, pp: int, rank: int, tp: int) -> tuple[tuple[int, float], ...]:
    """``_shard_pieces`` by position in the old replica's GPUs: it depends on the shapes only, and a switch plan
    asks it for every new GPU against every old replica."""
    out = []
    for s in range(old_pp):
        lf = _overlap(stage / pp, (stage + 1) / pp, s / old_pp, (s + 1) / old_pp)
        if lf <= 0:
            continue
        for t in range(old_tp):
            sf = _overlap(rank / tp, (rank + 1) / tp, t / old_tp, (t + 1) / old_tp)
            if sf > 0:
                out.append((s * old_tp + t, lf * sf))
    return tuple(out)


def plan_switch(old: Deployment | None, new: Deployment, costs: SwitchCosts | None = None) -> SwitchPlan:
    """Plan the switch ``old -> new`` (``old=None``: first deployment, everything loads from disk)."""
    costs = costs or SwitchCosts()
    if old is not None and old.cluster != new.cluster:
        raise ConfigError(f"switch: old deployment is on cluster {old.cluster.name!r}, new one on {new.cluster.name!r}")
    old_reps = old.replicas if old is not None else ()
    by_place = {(r.config, r.gpu_ids): j for j, r in enumerate(old_reps)}
    kept = {i: by_place[(r.config, r.gpu_ids)] for i, r in enumerate(new.replicas) if (r.config, r.gpu_ids) in by_place}
    starting = tuple(i for i in range(len(new)) if i not in kept)
    kept_old = set(kept.values())
    leaving = tuple(j for j in range(len(old_reps)) if j not in kept_old)
    mode: LeaveMode = "migrate" if costs.migrate_enabled else "drain"
    leave_mode = {j: mode for j in leaving}

    gpu_owner = {g: j for j in leaving for g in old_reps[j].gpu_ids}
    blocked_by = {
        i: frozenset(gpu_owner[g] for g in new.replicas[i].gpu_ids if g in gpu_owner) if i in starting else frozenset()
        for i in range(len(new))
    }

    node_of, intra, inter = _link_gbps(new.cluster)
    eff = costs.link_efficiency

    def link(src: int, dst: int) -> tuple[str, float]:
        if src == dst:
            return "local", float("inf")
        if node_of[src] == node_of[dst]:
            return "nvlink", intra[node_of[src]] * 1e9 * eff
        return "network", inter * 1e9 * eff

    sources = [r for r in old_reps if r.config.model == new.model] if costs.mode == "reshard" else []
    sent: dict[tuple[int, str], float] = defaultdict(float)  # (source GPU, link class) -> bytes sent in this switch
    transfers: list[Transfer] = []
    source: dict[int, Literal["reshard", "reload"]] = {}
    reload_reps: list[int] = []
    # (source replica, new shard, model bytes) -> (old GPU, bytes) pieces: the same for every new replica of a
    # config, and a plan asks for every new GPU against every old replica (~250 per random RL env step).
    pieces_of: dict[tuple[int, int, int, int, int, int], list[tuple[int, int]]] = {}
    network_bps = inter * 1e9 * eff
    for i in starting:
        rep = new.replicas[i]
        cfg = rep.config
        if not sources:
            source[i] = "reload"
            reload_reps.append(i)
            continue
        source[i] = "reshard"
        shard_scale = cfg.perf().weight_bytes_per_gpu * cfg.num_gpus  # bytes of the whole model, as the perf model counts
        for s in range(cfg.pp):
            for t in range(cfg.tp):
                dst = rep.gpu_ids[s * cfg.tp + t]
                dst_node = node_of[dst]
                nvlink_bps = intra[dst_node] * 1e9 * eff
                best = None
                for k, o in enumerate(sources):
                    key = (k, s, cfg.pp, t, cfg.tp, shard_scale)
                    pieces = pieces_of.get(key)
                    if pieces is None:
                        pieces = pieces_of[key] = [(g, int(round(f * shard_scale)))
                                                   for g, f in _shard_pieces(o, s, cfg.pp, t, cfg.tp)]
                    # The slowest piece given what each source GPU already sends, and the slowest inbound link.
                    cost = nvlink_in = network_in = 0.0
                    for g, b in pieces:
                        if g == dst:
                            continue
                        if node_of[g] == dst_node:
                            cost = max(cost, (sent[(g, "nvlink")] + b) / nvlink_bps)
                            nvlink_in += b
                        else:
                            cost = max(cost, (sent[(g, "network")] + b) / network_bps)
                            network_in += b
                    cost = max(cost, nvlink_in / nvlink_bps, network_in / network_bps)
                    if best is None or cost < best[0]:
                        best = (cost, pieces)
                assert best is not None
                for g, b in best[1]:
                    kind, _ = link(g, dst)
                    if kind != "local":
                        sent[(g, kind)] += b
                    transfers.append(Transfer(i, dst, g, b, kind))  # type: ignore[arg-type]

    # Final times once every source's total load is known.
    load_s: dict[int, float] = {}
    per_dst: dict[int, list[Transfer]] = defaultdict(list)
    for tr in transfers:
        per_dst[tr.dst_gpu].append(tr)
    for i in starting:
        if source[i] != "reshard":
            continue
        worst = 0.0
        for dst in new.replicas[i].gpu_ids:
            inbound: dict[str, float] = defaultdict(float)
            for tr in per_dst[dst]:
                if tr.link == "local":
                    continue
                _, bps = link(tr.src_gpu, dst)  # type: ignore[arg-type]
                worst = max(worst, sent[(tr.src_gpu, tr.link)] / bps)  # type: ignore[index]
                inbound[tr.link] += tr.bytes
            for kind, b in inbound.items():
                worst = max(worst, b / (intra[node_of[dst]] * 1e9 * eff if kind == "nvlink" else inter * 1e9 * eff))
        load_s[i] = worst + costs.reshard_init_s

    disk_bytes: dict[int, float] = defaultdict(float)
    for i in reload_reps:
        cfg = new.replicas[i].config
        per_gpu = cfg.perf().weight_bytes_per_gpu
        for g in new.replicas[i].gpu_ids:
            disk_bytes[node_of[g]] += per_gpu
            transfers.append(Transfer(i, g, None, per_gpu, "disk"))
    # The node's page cache serves repeated reads of one checkpoint: each byte comes off disk once per node.
    model_bytes = max((new.replicas[i].config.perf().weight_bytes_per_gpu * new.replicas[i].config.num_gpus
                       for i in reload_reps), default=0)
    disk_bytes = defaultdict(float, {n: min(b, model_bytes) for n, b in disk_bytes.items()})
    for i in reload_reps:
        nodes = {node_of[g] for g in new.replicas[i].gpu_ids}
        load_s[i] = max(disk_bytes[n] for n in nodes) / (costs.disk_gbps * 1e9) + costs.engine_init_s

    return SwitchPlan(
        old=old, new=new, costs=costs, kept=kept, leaving=leaving, leave_mode=leave_mode, starting=starting,
        source=source, load_s=load_s, blocked_by=blocked_by, transfers=tuple(transfers),
        router_update_s=0.0 if (old is not None and old == new) else costs.router_update_s,
    )


def estimate_switch_downtime_s(old: Deployment | None, new: Deployment, costs: SwitchCosts | None = None) -> float:
    """Seconds from switch start until the whole new deployment serves.

    A replica waiting for GPUs of a leaving replica is assumed to wait
    ``drain_estimate_s`` (migrating replicas still drain their short requests).
    0 for no change, ``router_update_s`` when only the router changes.
    """
    costs = costs or SwitchCosts()
    plan = plan_switch(old, new, costs)
    if plan.is_noop:
        return 0.0
    if not plan.starting:
        return plan.router_update_s
    return max(
        plan.router_update_s,
        *((costs.drain_estimate_s if plan.blocked_by[i] else 0.0) + plan.load_s[i] for i in plan.starting),
    )


__all__ = [
    "SwitchCosts", "SwitchPlan", "Transfer", "default_switch_costs_path", "estimate_switch_downtime_s",
    "kv_transfer_s", "load_switch_costs", "plan_switch",
]
