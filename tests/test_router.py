"""Routers: order, least-work choice, weighted proportions, skipping replicas that do not accept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from oserve_rl.errors import ConfigError, UnknownNameError
from oserve_rl.sim.router import (
    LeastOutstandingWorkRouter,
    ReplicaView,
    RoundRobinRouter,
    WeightedTypeRouter,
    make_router,
)


@dataclass
class View:
    outstanding_tokens: int = 0
    num_waiting: int = 0
    num_running: int = 0
    accepting: bool = True

    def outstanding_tokens_at(self, t_s: float) -> int:
        return self.outstanding_tokens


def views(n, **kw):
    return [View(**kw) for _ in range(n)]


def test_view_satisfies_protocol():
    assert isinstance(View(), ReplicaView)


def test_round_robin_order_and_skipping():
    r = RoundRobinRouter()
    reps = views(3)
    assert [r.choose(i, 0, 10, reps) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    reps[2].accepting = False
    assert [r.choose(i, 0, 10, reps) for i in range(4)] == [1, 0, 1, 0]
    r.reset()
    assert r.choose(0, 0, 10, reps) == 0
    # the replica set shrinks after a switch: the cursor wraps instead of failing
    assert r.choose(0, 0, 10, views(1)) == 0


def test_least_work_and_ties():
    r = LeastOutstandingWorkRouter()
    reps = [View(500), View(100), View(100), View(0, accepting=False)]
    assert r.choose(0, 0, 10, reps) == 1  # tie 1 vs 2 -> lower index; 3 has least work but is draining
    reps[1].outstanding_tokens = 101
    assert r.choose(1, 0, 10, reps) == 2


@pytest.mark.parametrize("router", [RoundRobinRouter(), LeastOutstandingWorkRouter(), WeightedTypeRouter([[1.0, 1.0]])])
def test_none_when_nobody_accepts(router):
    reps = views(2, accepting=False)
    assert router.choose(0, 0, 10, reps) is None


def test_weighted_proportions_per_type():
    rates = np.array([[3.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 2.0]])
    r = WeightedTypeRouter(rates)
    reps = views(4)
    rng = np.random.default_rng(0)
    types = rng.integers(0, 2, size=4000)
    counts = np.zeros_like(rates)
    for i, t in enumerate(types):
        counts[t, r.choose(i, int(t), 100, reps)] += 1
    for t in range(2):
        share = counts[t] / counts[t].sum()
        np.testing.assert_allclose(share, rates[t] / rates[t].sum(), atol=0.01)
    assert counts[0, 2] == counts[0, 3] == counts[1, 0] == 0  # zero weight: never chosen


def test_weighted_is_smooth_and_deterministic():
    r = WeightedTypeRouter([[2.0, 1.0]])
    reps = views(2)
    seq = [r.choose(i, 0, 1, reps) for i in range(6)]
    assert seq == [0, 1, 0, 0, 1, 0]  # smooth WRR: no run of three to replica 0
    r2 = WeightedTypeRouter([[2.0, 1.0]])
    assert [r2.choose(i, 0, 1, reps) for i in range(6)] == seq


def test_weighted_skips_draining_and_falls_back():
    r = WeightedTypeRouter([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    reps = [View(50), View(10, accepting=False), View(5)]
    assert {r.choose(i, 0, 1, reps) for i in range(10)} == {0}  # replica 1 draining: its share goes to 0
    assert r.choose(0, 1, 1, reps) == 2  # all-zero row -> least outstanding work
    reps[0].accepting = False
    assert r.choose(0, 0, 1, reps) == 2  # weighted replicas all gone -> least work among accepting


def test_weighted_rejects_bad_input():
    with pytest.raises(ConfigError, match="2-D"):
        WeightedTypeRouter([1.0, 2.0])
    with pytest.raises(ConfigError, match=r"rates\[0, 1\] = -1\.0"):
        WeightedTypeRouter([[1.0, -1.0]])
    with pytest.raises(ConfigError, match=r"rates\[0, 0\] = nan"):
        WeightedTypeRouter([[np.nan, 1.0]])
    r = WeightedTypeRouter([[1.0, 1.0]])
    with pytest.raises(ConfigError, match="2 replica columns but 3 replicas"):
        r.choose(0, 0, 1, views(3))
    with pytest.raises(ConfigError, match=r"request 7 has type 1; rates cover types 0\.\.0"):
        r.choose(7, 1, 1, views(2))
    r.set_rates([[1.0, 1.0, 1.0]])
    assert r.choose(0, 0, 1, views(3)) == 0


def test_make_router_factory():
    assert isinstance(make_router("round_robin"), RoundRobinRouter)
    assert isinstance(make_router("Least-Work"), LeastOutstandingWorkRouter)
    w = make_router("weighted", rates=[[1.0]])
    assert isinstance(w, WeightedTypeRouter)
    with pytest.raises(UnknownNameError, match=r"unknown router 'least_wrok'.*did you mean 'least_work'"):
        make_router("least_wrok")
    with pytest.raises(ConfigError, match=r"'weighted' takes exactly one argument, rates"):
        make_router("weighted")
    with pytest.raises(ConfigError, match=r"'round_robin' takes no arguments; got \['rates'\]"):
        make_router("round_robin", rates=[[1.0]])


@dataclass
class EstView(View):
    rate_tok_s: float = 0.0
    kv_capacity_blocks: int = 100
    kv_used_blocks: int = 0
    queued_tokens: int = 0
    block_size: int = 16

    def estimated_outstanding_tokens(self, t_s: float) -> float:
        return max(0.0, self.outstanding_tokens - self.rate_tok_s * t_s)


def test_weighted_least_work_keeps_types_on_their_replicas_and_balances_by_weight():
    r = make_router("weighted_least_work", rates=[[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]], estimate_load=False)
    reps = [EstView(outstanding_tokens=900), EstView(outstanding_tokens=300), EstView(outstanding_tokens=500)]
    assert r.choose(0, 0, 10, reps) == 0            # type 0 may only use replica 0, however loaded
    assert r.choose(1, 1, 10, reps) == 2            # 500 / 2 < 300 / 1: the replica meant for twice the rate
    reps[2].accepting = False
    assert r.choose(2, 1, 10, reps) == 1


def test_weighted_least_work_with_estimates_reads_the_extrapolated_load():
    r = make_router("weighted_least_work", rates=[[1.0, 1.0]], estimate_load=True)
    reps = [EstView(outstanding_tokens=1000, rate_tok_s=100.0), EstView(outstanding_tokens=600)]
    r.now_s = 0.0
    assert r.choose(0, 0, 10, reps) == 1
    r.now_s = 5.0                                   # replica 0 has worked off 500 tokens since
    assert r.choose(1, 0, 10, reps) == 0
    with pytest.raises(ConfigError, match="estimate_load"):
        make_router("weighted_least_work", rates=[[1.0]], bogus=True)


def test_llumnix_router_prefers_freeness():
    r = make_router("llumnix")
    reps = [EstView(kv_used_blocks=90, num_running=3), EstView(kv_used_blocks=10, num_running=3, queued_tokens=640),
            EstView(kv_used_blocks=50, num_running=0)]
    # free tokens per running+1: (160)/4=40, (1440-640)/4=200, (800)/1=800
    assert r.choose(0, 0, 10, reps) == 2
    reps[2].accepting = False
    assert r.choose(1, 0, 10, reps) == 1
