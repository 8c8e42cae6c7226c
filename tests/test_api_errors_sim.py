"""Bad input to the simulator, arrival processes, traces and deployments: one clear project error, up front."""

from __future__ import annotations

import numpy as np
import pytest

from oserve_rl.catalog import get_cluster
from oserve_rl.cluster import Deployment, parse_deployment
from oserve_rl.cluster.deployment import ReplicaConfig, enumerate_deployments, place_replicas
from oserve_rl.errors import ConfigError, TraceError
from oserve_rl.sim.simulator import ClusterSimulator
from oserve_rl.workload import Trace, load_trace
from oserve_rl.workload.arrivals import Diurnal, Poisson, parse_arrival


@pytest.fixture(scope="module")
def dep():
    return parse_deployment("4xTP2", get_cluster("h100x8"), "llama-2-7b")


@pytest.fixture(scope="module")
def tr():
    return load_trace("azure-conv").head(300)


# 1. schedule_switch times
@pytest.mark.parametrize("at", [float("nan"), float("inf"), -1000, "abc", None, True])
def test_schedule_switch_rejects_bad_time(dep, tr, at):
    sim = ClusterSimulator(dep, tr)
    with pytest.raises(ConfigError, match="at_s"):
        sim.schedule_switch(at, "2xTP4")


def test_schedule_switch_rejects_time_before_now(dep, tr):
    sim = ClusterSimulator(dep, tr)
    sim.step_to(100)
    with pytest.raises(ConfigError, match="at_s = 50 is in the past"):
        sim.schedule_switch(50, "2xTP4")
    with pytest.raises(ConfigError, match="at_s"):
        sim.schedule_router(50, sim.router)
    sim.schedule_switch(100, "2xTP4")  # now is fine


def test_schedule_switch_rejects_bad_target(dep, tr):
    with pytest.raises(ConfigError, match="new must be a Deployment or a spec string"):
        ClusterSimulator(dep, tr).schedule_switch(10, 5)


# 2. arrival processes and load_trace n
def test_diurnal_phase_must_be_finite():
    with pytest.raises(ConfigError, match="phase_s"):
        parse_arrival("diurnal:1:0.5:100:nan")
    with pytest.raises(ConfigError, match="phase_s"):
        Diurnal(1, 0.5, 100, float("inf"))
    with pytest.raises(ConfigError, match="phase_s"):
        load_trace("sharegpt", arrival="diurnal:1:0.5:100:nan", n=5)
    with pytest.raises(ConfigError, match="amplitude"):
        Diurnal(1, "0.5", 100)


def test_poisson_qps_must_be_a_number():
    with pytest.raises(ConfigError, match="poisson qps"):
        Poisson("3")
    with pytest.raises(ConfigError, match="poisson qps"):
        Poisson(True)


def test_poisson_huge_expected_count_is_refused():
    with pytest.raises(ConfigError, match="expects 1e\\+20 arrivals"):
        Poisson(1e10).sample(np.random.default_rng(0), duration_s=1e10)
    with pytest.raises(ConfigError, match="arrivals"):
        Diurnal(1e10, 0.5, 100).sample(np.random.default_rng(0), duration_s=1e10)


@pytest.mark.parametrize("n", [2.5, "5", True, 1e3])
def test_load_trace_n_must_be_whole(n):
    with pytest.raises(ConfigError, match="n \\(requests\\) must be a whole number"):
        load_trace("sharegpt", arrival="poisson:1", n=n)


def test_sample_duration_must_be_a_number():
    with pytest.raises(ConfigError, match="duration_s"):
        Poisson(1).sample(np.random.default_rng(0), duration_s="10")


# 3. empty deployments
def test_empty_deployment_is_refused(dep):
    with pytest.raises(ConfigError, match="at least one replica"):
        Deployment.from_groups([], "h100x8", "llama-2-7b")
    with pytest.raises(ConfigError, match="at least one replica"):
        Deployment.from_dict({**dep.to_dict(), "replicas": []})
    with pytest.raises(ConfigError, match="at least one replica"):
        Deployment(dep.model, dep.cluster, ())


# 4. run(until_s) and SLOs checked before simulating
@pytest.mark.parametrize("until", [float("inf"), float("nan"), -5, "10"])
def test_run_until_checked_up_front(dep, tr, until):
    sim = ClusterSimulator(dep, tr)
    with pytest.raises(ConfigError, match="until_s"):
        sim.run(until_s=until)
    assert sim.arrived == 0  # nothing was simulated


@pytest.mark.parametrize("kw", [{"slo_ttft_s": -1}, {"slo_tpot_s": float("nan")}, {"slo_ttft_s": float("inf")},
                                {"slo_ttft_s": 0}, {"slo_tpot_s": "0.1"}])
def test_slo_checked_in_constructor(dep, tr, kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        ClusterSimulator(dep, tr, **kw)


def test_slo_none_still_allowed(dep, tr):
    ClusterSimulator(dep, tr, slo_ttft_s=None, slo_tpot_s=None)


# 5. Trace token counts and prefix hashes; deployment dict fields
A = np.array([0.0, 1.0])


def test_trace_tokens_must_be_whole():
    with pytest.raises(TraceError, match=r"input_tokens\[0\] is 1.7"):
        Trace(A, np.array([1.7, 5.2]), np.array([3, 4]), name="x", source="y")
    with pytest.raises(TraceError, match=r"output_tokens\[1\]"):
        Trace(A, [1, 2], [3, float("nan")], name="x", source="y")
    with pytest.raises(TraceError, match="output_tokens"):
        Trace(A, [1, 2], ["a", "b"], name="x", source="y")
    t = Trace(A, np.array([1.0, 5.0]), [3, 4], name="x", source="y")  # whole floats are fine
    assert t.input_tokens.tolist() == [1, 5]


def test_trace_prefix_fields_checked():
    with pytest.raises(TraceError, match=r"prefix_hashes\[0\]"):
        Trace(A, [1, 2], [3, 4], name="x", source="y", prefix_hashes=[[1.5], [2]], prefix_block_tokens=16)
    with pytest.raises(TraceError, match="prefix_block_tokens"):
        Trace(A, [1, 2], [3, 4], name="x", source="y", prefix_hashes=[[1], [2]], prefix_block_tokens=1.5)
    with pytest.raises(TraceError, match="negative hash"):
        Trace(A, [1, 2], [3, 4], name="x", source="y", prefix_hashes=[[-1], [2]], prefix_block_tokens=16)


@pytest.mark.parametrize("replicas", [None, 5, "abc"])
def test_deployment_dict_replicas_must_be_a_list(dep, replicas):
    with pytest.raises(ConfigError, match="replicas must be a list"):
        Deployment.from_dict({**dep.to_dict(), "replicas": replicas})


@pytest.mark.parametrize("ids", [[0.7, 1], ["a", 1], 5])
def test_deployment_dict_gpu_ids_must_be_whole(dep, ids):
    d = dep.to_dict()
    with pytest.raises(ConfigError, match=r"replicas\[0\].*gpu_ids"):
        Deployment.from_dict({**d, "replicas": [{**d["replicas"][0], "gpu_ids": ids}]})


# 6. Trace method arguments
@pytest.mark.parametrize("n", [2.5, float("nan"), "5", None, -1])
def test_head_bad_n(tr, n):
    with pytest.raises(ConfigError, match="head"):
        tr.head(n)


@pytest.mark.parametrize("args", [("0", "100"), (None, 100), (0, float("nan")), (float("-inf"), 10)])
def test_slice_bad_bounds(tr, args):
    with pytest.raises(ConfigError, match="slice"):
        tr.slice(*args)


@pytest.mark.parametrize("f", ["2", None, np.array([2, 3])])
def test_scale_rate_bad_factor(tr, f):
    with pytest.raises(ConfigError, match="scale_rate"):
        tr.scale_rate(f)
    with pytest.raises(ConfigError, match="scale_load"):
        tr.scale_load(f)


def test_with_arrivals_accepts_spec_and_refuses_other(tr):
    a = tr.with_arrivals("poisson:3")
    b = tr.with_arrivals(parse_arrival("poisson:3"))
    assert np.array_equal(a.arrival_s, b.arrival_s)
    with pytest.raises(ConfigError, match="with_arrivals: process"):
        tr.with_arrivals(5)


@pytest.mark.parametrize("w", [float("inf"), float("nan"), "600", 0])
def test_window_stats_bad_window(tr, w):
    with pytest.raises(ConfigError, match="window_s"):
        tr.window_stats(w)


# 7. placement and enumeration
def test_place_replicas_missing_gpu_type():
    with pytest.raises(ConfigError, match="has none \\(it has: 16 h100-sxm\\)"):
        place_replicas([ReplicaConfig("llama-2-70b", "a100-80gb", 4)], get_cluster("h100x16"))


def test_place_replicas_accepts_cluster_name():
    by_name = place_replicas([ReplicaConfig("llama-2-70b", "h100", 4)], "h100x16")
    by_spec = place_replicas([ReplicaConfig("llama-2-70b", "h100", 4)], get_cluster("h100x16"))
    assert by_name == by_spec


@pytest.mark.parametrize("kw", [{"limit": -5}, {"limit": 0}, {"limit": 2.5}, {"max_gpus": 2.5}, {"max_gpus": 0},
                                {"max_gpus": "4"}])
def test_enumerate_deployments_range_checked(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        enumerate_deployments("llama-2-70b", "a100x8", **kw)
