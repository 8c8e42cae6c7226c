"""``threshold_autoscaler``: a Dynamo-planner / AIBrix-style replica-count autoscaler.

One replica config (default: the smallest feasible one on the fastest GPU
type, as a serving team would pick for a 70B model on H100: TP2), and a
replica count driven by two signals read off the replicas every interval:
mean queue length per replica and mean KV-cache utilisation.

- scale up by ``step`` when queue/replica > ``queue_high`` or KV > ``kv_high``
  (cooldown ``up_cooldown_s`` since the last change);
- scale down by ``step`` when queue/replica < ``queue_low`` and KV < ``kv_low``
  (cooldown ``down_cooldown_s``: AIBrix's 300 s default);
- between ``min_replicas`` and as many as the cluster holds.

New replicas cold-start from disk (``switch_mode = "reload"``): that is how
these autoscalers add pods. Starts at ``initial_fraction`` of the maximum
(default all of it: on a fixed GPU pool, scaling down when idle is what saves).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from oserve_rl.checks import check_number
from oserve_rl.cluster import ReplicaConfig, enumerate_replica_configs
from oserve_rl.errors import ConfigError
from oserve_rl.policy import ClusterState, Decision, Policy, PolicyContext, place_near


class ThresholdAutoscaler(Policy):
    name = "threshold_autoscaler"
    switch_mode = "reload"

    def __init__(self, config: str | None = None, queue_high: float = 4.0, queue_low: float = 0.5,
                 kv_high: float = 0.85, kv_low: float = 0.4, up_cooldown_s: float = 60.0,
                 down_cooldown_s: float = 300.0, step: int = 1, min_replicas: int = 1, initial_fraction: float = 1.0):

        where = self.name
        if config is not None and not isinstance(config, str):
            raise ConfigError(f"{where}: config must be a replica config label string (or None for the "
                              f"default), got {config!r}")
        for pname, value in (("kv_low", kv_low), ("kv_high", kv_high)):
            check_number(where, pname, value, low=0, high=1)
        for pname, value in (("queue_low", queue_low), ("queue_high", queue_high), ("up_cooldown_s", up_cooldown_s),
                             ("down_cooldown_s", down_cooldown_s)):
            check_number(where, pname, value, low=0)
        check_number(where, "step", step, low=1, integer=True)
        check_number(where, "min_replicas", min_replicas, low=1, integer=True)
        check_number(where, "initial_fraction", initial_fraction, low=0, low_open=True, high=1)
        if not (0 <= kv_low < kv_high <= 1):
            raise ConfigError(f"threshold_autoscaler: need 0 <= kv_low < kv_high <= 1, got {kv_low}, {kv_high}")
        if not (0 <= queue_low < queue_high):
            raise ConfigError(f"threshold_autoscaler: need 0 <= queue_low < queue_high, got {queue_low}, {queue_high}")
        if step < 1 or min_replicas < 1 or not (0 < initial_fraction <= 1):
            raise ConfigError("threshold_autoscaler: step and min_replicas must be >= 1, initial_fraction in (0, 1]")
        self.config_label = config
        self.queue_high, self.queue_low, self.kv_high, self.kv_low = queue_high, queue_low, kv_high, kv_low
        self.up_cooldown_s, self.down_cooldown_s = up_cooldown_s, down_cooldown_s
        self.step, self.min_replicas, self.initial_fraction = int(step), int(min_replicas), initial_fraction

    def reset(self, ctx: PolicyContext) -> None:
        super().reset(ctx)
        cfgs = enumerate_replica_configs(ctx.model, ctx.cluster, ctx.engine)
        if not cfgs:
            raise ConfigError(f"threshold_autoscaler: no replica config of {ctx.model} fits {ctx.cluster.name}")
        if self.config_label:
            match = [c for c in cfgs if c.label(False).lower() == self.config_label.lower()
                     or c.label(True).lower() == self.config_label.lower()]
            if not match:
                raise ConfigError(f"threshold_autoscaler: config {self.config_label!r} is not feasible here; "
                                  f"valid: {sorted({c.label(True) for c in cfgs})}")
            self.cfg: ReplicaConfig = match[0]
        else:
            # fastest GPU type, fewest GPUs, tensor parallelism only (what a serving team deploys: TP2 for 70B on H100)
            self.cfg = min(cfgs, key=lambda c: (c.pp > 1, cfgs.index(c)))
        have = ctx.cluster.gpus_by_type()[self.cfg.gpu]
        self.max_replicas = max(self.min_replicas, have // self.cfg.num_gpus)
        self.count = max(self.min_replicas, round(self.max_replicas * self.initial_fraction))
        self.last_change_s = -1e18

    def _deployment(self, current):
        return place_near([self.cfg] * self.count, current, self.ctx.cluster, self.ctx.model)

    def decide(self, state: ClusterState) -> Decision:
        if state.deployment is None:
            return Decision(self._deployment(None))
        ready = [r for r in state.replicas if r.ready]
        if not ready or state.switch_in_progress:
            return Decision()
        queue = float(np.mean([r.num_waiting for r in ready]))
        kv = float(np.mean([r.kv_utilization for r in ready]))
        since = state.now_s - self.last_change_s
        new = self.count
        if (queue > self.queue_high or kv > self.kv_high) and since >= self.up_cooldown_s:
            new = min(self.max_replicas, self.count + self.step)
        elif queue < self.queue_low and kv < self.kv_low and since >= self.down_cooldown_s:
            new = max(self.min_replicas, self.count - self.step)
        if new == self.count:
            return Decision(info={"queue": queue, "kv": kv})
        self.count, self.last_change_s = new, state.now_s
        return Decision(self._deployment(state.deployment), info={"queue": queue, "kv": kv})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config_label, "queue_high": self.queue_high,
                "queue_low": self.queue_low, "kv_high": self.kv_high, "kv_low": self.kv_low,
                "up_cooldown_s": self.up_cooldown_s, "down_cooldown_s": self.down_cooldown_s}
