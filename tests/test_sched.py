"""OServe's algorithms: throughput profiles (against the real simulator), max-flow / load-scale dispatch,
flow-guided search vs brute force, and bad-input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oserve_rl.catalog import get_cluster
from oserve_rl.cluster import ReplicaConfig, enumerate_deployments, enumerate_replica_configs, validate_deployment
from oserve_rl.errors import ConfigError
from oserve_rl.perf import EngineConfig
from oserve_rl.sched import (
    ThroughputTable,
    TypeProfile,
    brute_force_search,
    count_shapes,
    dispatch_for_deployment,
    flow_guided_search,
    homogeneous_candidates,
    load_scale_lp,
    max_flow_csgraph,
    max_flow_lp,
    profiles_from_trace,
    replica_throughput_rps,
    simulated_throughput_rps,
    solve_dispatch,
    type_rates_rps,
)
from oserve_rl.sim.router import make_router
from oserve_rl.workload import RequestTyper, Trace

# Azure-conv-like types (means of the first 10 minutes, requests that fit Llama-2's context).
TYPES = [TypeProfile(0, 150, 184), TypeProfile(1, 381, 79), TypeProfile(2, 1083, 421), TypeProfile(3, 1630, 108)]
LAM = np.array([0.39, 1.03, 2.37, 0.64])


@pytest.fixture(scope="module")
def table16() -> ThroughputTable:
    return ThroughputTable("llama-2-70b", enumerate_replica_configs("llama-2-70b", "h100x16"), TYPES)


def _lam_at_load(table, cluster, mix, load):
    return mix * homogeneous_candidates(table.model, cluster, mix, table)[0].objective * load


# --------------------------------------------------------------------------- dispatch LPs


def test_specialised_replicas_get_their_type_and_alpha_is_exact():
    # Replica 0 is fast on short requests, replica 1 on long ones. Each alone saturates at exactly
    # alpha = 1 (10/10, 5/5) and lending either to the other type costs more than it frees.
    n = np.array([[10.0, 1.0], [1.0, 5.0]])
    d = solve_dispatch(n, np.array([10.0, 5.0]))
    assert d.alpha == pytest.approx(1.0)
    np.testing.assert_allclose(d.x, [[10.0, 0.0], [0.0, 5.0]], atol=1e-9)
    np.testing.assert_allclose(d.utilization, [1.0, 1.0])
    assert d.bottleneck.all() and not d.redundant.any()


def test_alpha_by_hand_one_replica_two_types():
    # busy share at scale a: 2a/6 + a/3 = 2a/3 <= 1  ->  a = 1.5; routed x is the demand itself.
    d = solve_dispatch(np.array([[6.0, 3.0]]), np.array([2.0, 1.0]))
    assert d.alpha == pytest.approx(1.5)
    np.testing.assert_allclose(d.x, [[2.0, 1.0]])
    assert d.utilization[0] == pytest.approx(2 / 3)
    assert d.demand_served == 1.0


def test_overload_falls_back_to_max_flow():
    d = solve_dispatch(np.array([[10.0, 2.0]]), np.array([20.0, 1.0]))
    # alpha: 20a/10 + a/2 = 2.5a <= 1; max-flow serves the cheap type only: 10 rps of type 0.
    assert d.alpha == pytest.approx(0.4)
    np.testing.assert_allclose(d.x, [[10.0, 0.0]], atol=1e-9)
    assert d.max_flow_rps == pytest.approx(10.0)
    assert d.demand_served == pytest.approx(10 / 21)


def test_zero_demand_infeasible_edges_and_identical_replicas():
    n = np.array([[10.0, 1.0], [10.0, 1.0], [0.0, 5.0]])
    d = solve_dispatch(n, np.array([8.0, 0.0]))  # type 1 not demanded; replica 2 cannot run type 0
    np.testing.assert_allclose(d.x[:, 1], 0.0)
    np.testing.assert_allclose(d.x[2], 0.0)
    assert d.x[0, 0] == pytest.approx(d.x[1, 0])  # identical replicas share evenly
    assert d.alpha == pytest.approx(20 / 8)
    assert d.redundant[2] and d.bottleneck[:2].all()
    nothing = solve_dispatch(n, np.zeros(2))
    assert math.isinf(nothing.alpha) and not nothing.x.any()


def test_unservable_demanded_type_gives_alpha_zero_and_max_flow_serves_the_rest():
    d = solve_dispatch(np.array([[10.0, 0.0]]), np.array([5.0, 1.0]))
    assert d.alpha == 0.0
    np.testing.assert_allclose(d.served_rps, [5.0, 0.0], atol=1e-9)


def test_capacity_rows_equal_replica_rows():
    rng = np.random.default_rng(3)
    n = rng.uniform(0.5, 20, (3, 4))
    lam = rng.uniform(1, 10, 4)
    grouped = load_scale_lp(n, lam, np.array([2.0, 1.0, 3.0]))
    expanded = solve_dispatch(np.repeat(n, [2, 1, 3], axis=0), lam)
    assert grouped.alpha == pytest.approx(expanded.alpha, rel=1e-9)


def test_type_prices_bound_every_shape_and_are_tight_on_their_own():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = rng.uniform(0, 30, (5, 4)) * (rng.random((5, 4)) > 0.3)
        lam = rng.uniform(0, 8, 4)
        cap = rng.integers(1, 4, 5).astype(float)
        ls = load_scale_lp(n, lam, cap)
        if not np.isfinite(ls.alpha):
            continue
        value = np.maximum((ls.type_price[None, :] * n).max(axis=1), 0)
        assert cap @ value == pytest.approx(ls.alpha, rel=1e-6, abs=1e-9)
        other = rng.integers(0, 4, 5).astype(float)
        if other.any():
            assert load_scale_lp(n, lam, other).alpha <= other @ value * (1 + 1e-6) + 1e-9


def test_max_flow_csgraph_agrees_with_linprog_and_bounds_it():
    rng = np.random.default_rng(1)
    for _ in range(30):
        k, j = rng.integers(1, 6), rng.integers(1, 5)
        lam = np.round(rng.uniform(0, 20, j), 3)
        support = rng.random((k, j)) > 0.3
        uniform = np.round(rng.uniform(1, 15, (k, 1)), 3) * support  # one rate per replica: the plain network is exact
        lp = max_flow_lp(uniform, lam).sum()
        assert max_flow_csgraph(uniform, lam) == pytest.approx(lp, abs=1e-3 * (k * j + j + k))
        general = np.round(rng.uniform(1, 15, (k, j)), 3) * support
        assert max_flow_csgraph(general, lam) >= max_flow_lp(general, lam).sum() - 1e-3 * (k * j + j + k)


def test_lps_through_highspy_match_scipy_linprog():
    """``_solve`` calls HiGHS directly with linprog's highs-ds options: the same optimum; with the HiGHS
    release scipy bundles (constraints.txt pins it) the same vertex and duals too."""
    import highspy
    from scipy.optimize import linprog

    from oserve_rl.sched.dispatch import _solve

    try:  # scipy's private build of HiGHS: only to know whether the vertex must match too
        from scipy.optimize._highspy import _core as scipy_highs
        same_release = tuple(int(v) for v in highspy.Highs().version().split(".")[:3]) == (
            scipy_highs.HIGHS_VERSION_MAJOR, scipy_highs.HIGHS_VERSION_MINOR, scipy_highs.HIGHS_VERSION_PATCH)
    except (ImportError, AttributeError):
        same_release = False
    rng = np.random.default_rng(2)
    for _ in range(40):
        k, j = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        a_ub = np.round(rng.uniform(0, 2, (k + j, k * j)), 2) * (rng.random((k + j, k * j)) > 0.4)
        b_ub = np.round(rng.uniform(0.5, 10, k + j), 3)
        c = -np.round(rng.uniform(0, 1, k * j), 2)
        ref = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=(0, None), method="highs-ds")
        if ref.status != 0:  # unbounded draws: the dispatch LPs never are
            continue
        got = _solve(c, a_ub, b_ub)
        assert c @ got.x == pytest.approx(ref.fun, rel=1e-9, abs=1e-12)
        assert (a_ub @ got.x <= b_ub + 1e-9).all() and (got.x >= -1e-12).all()
        if same_release:  # another release may stop at another optimal vertex (and dual) of a degenerate LP
            np.testing.assert_array_equal(got.x, ref.x)
            np.testing.assert_array_equal(got.ub_duals, ref.ineqlin.marginals)


def test_router_rates_feed_the_weighted_router(table16):
    res = flow_guided_search("llama-2-70b", "h100x16", LAM * 4, table16)
    rates = res.dispatch.router_rates()
    assert rates.shape == (4, len(res.deployment))
    make_router("weighted", rates=rates)
    again = dispatch_for_deployment(res.deployment, LAM * 4, table16)
    assert again.alpha == pytest.approx(res.objective, rel=1e-7)
    np.testing.assert_allclose(again.served_rps, LAM * 4, rtol=1e-6)


@pytest.mark.parametrize("n, lam, cap, match", [
    (np.array([1.0, 2.0]), np.array([1.0, 2.0]), None, "non-empty"),
    (np.zeros((0, 2)), np.array([1.0, 2.0]), None, "non-empty"),
    (np.ones((2, 2)), np.array([1.0]), None, "one rate per type"),
    (np.ones((2, 2)), np.array([1.0, -1.0]), None, "finite and >= 0"),
    (np.array([[1.0, np.nan], [1, 1]]), np.array([1.0, 1.0]), None, "finite and >= 0"),
    (np.ones((2, 2)), np.array([1.0, 1.0]), np.array([1.0]), "capacity"),
])
def test_dispatch_bad_input(n, lam, cap, match):
    with pytest.raises(ConfigError, match=match):
        solve_dispatch(n, lam, cap)


# --------------------------------------------------------------------------- throughput profiles


@pytest.mark.parametrize("model, tp, pp, inp, out", [
    ("llama-2-70b", 4, 1, 381, 79),
    ("llama-2-70b", 2, 2, 1083, 421),
    ("llama-2-70b", 8, 1, 150, 184),
    ("opt-66b", 4, 1, 321, 120),
    ("opt-66b", 2, 1, 1233, 111),  # KV-tight: ~6 sequences fit
])
def test_closed_form_throughput_matches_the_simulator(model, tp, pp, inp, out):
    """Documented tolerance 30 % (measured on these: -3 % .. +17 %; bench_sched.py --only profile)."""
    cfg = ReplicaConfig(model, "h100", tp, pp)
    sim = simulated_throughput_rps(cfg, inp, out, num_requests=1500)
    model_rps = replica_throughput_rps(cfg, inp, out)
    assert sim > 0 and abs(model_rps / sim - 1) <= 0.30, (model_rps, sim)


def test_throughput_edges_and_bounds():
    cfg = ReplicaConfig("opt-66b", "h100", 4)
    assert replica_throughput_rps(cfg, 2000, 100) == 0.0  # over OPT's 2,048-token context: rejected
    assert simulated_throughput_rps(cfg, 2000, 100, num_requests=20) == 0.0
    free = replica_throughput_rps(cfg, 300, 100)
    bounded = replica_throughput_rps(cfg, 300, 100, tpot_bound_s=0.03)
    assert 0 < bounded < free
    assert replica_throughput_rps(cfg, 300, 100, tpot_bound_s=1e-4) == 0.0
    faster = replica_throughput_rps(ReplicaConfig("opt-66b", "h100", 8), 300, 100)
    assert faster > free
    with pytest.raises(ConfigError, match="tpot_bound_s"):
        replica_throughput_rps(cfg, 300, 100, tpot_bound_s=-1)
    with pytest.raises(ConfigError, match=">= 1"):
        replica_throughput_rps(cfg, 0, 100)


def test_profiles_and_rates_from_a_trace():
    trace = Trace(np.arange(6.0), np.array([100, 300, 2000, 2200, 120, 2100]), np.array([50, 70, 400, 600, 30, 500]),
                  name="t", source="test")
    typer = RequestTyper.fit(trace, k=2)
    types = typer.predict(trace)
    profiles = profiles_from_trace(trace, types, 2)
    assert [p.num_requests for p in profiles] == [3, 3]
    assert profiles[0].input_tokens == pytest.approx(520 / 3) and profiles[1].output_tokens == pytest.approx(500)
    np.testing.assert_allclose(type_rates_rps(types, 2, 6.0), [0.5, 0.5])
    with pytest.raises(ConfigError, match="no request"):
        profiles_from_trace(trace, np.zeros(6, dtype=int), 2)
    filled = profiles_from_trace(trace, np.zeros(6, dtype=int), 2, typer)
    assert filled[1].num_requests == 0 and filled[1].input_tokens > 1000
    with pytest.raises(ConfigError, match="one entry per request"):
        profiles_from_trace(trace, np.zeros(5, dtype=int), 2)


def test_table_rows_and_errors(table16):
    assert table16.n.shape == (len(table16.configs), 4) and (table16.n > 0).all()
    tp4 = ReplicaConfig("llama-2-70b", "h100", 4)
    np.testing.assert_allclose(table16.row(tp4), [replica_throughput_rps(tp4, p.input_tokens, p.output_tokens)
                                                  for p in TYPES])
    with pytest.raises(ConfigError, match="not in the throughput table"):
        table16.index(ReplicaConfig("llama-2-70b", "a100", 4))
    with pytest.raises(ConfigError, match="method"):
        ThroughputTable("llama-2-70b", [tp4], TYPES, method="guess")
    with pytest.raises(ConfigError, match="type ids"):
        ThroughputTable("llama-2-70b", [tp4], TYPES[1:])
    with pytest.raises(ConfigError, match="not a ReplicaConfig of model"):
        ThroughputTable("llama-2-70b", [ReplicaConfig("opt-66b", "h100", 4)], TYPES)


# --------------------------------------------------------------------------- search


def _check_feasible(dep, cluster):
    validate_deployment(dep)
    have = get_cluster(cluster).gpus_by_type()
    assert all(used <= have[t] for t, used in dep.gpus_used_by_type().items())


@pytest.mark.parametrize("cluster, load, mixes", [("h100x8", 0.8, 3), ("h100x16", 1.1, 1)])
def test_flow_guided_is_feasible_improves_on_start_and_brute_force_bounds_it(cluster, load, mixes):
    table = ThroughputTable("llama-2-70b", enumerate_replica_configs("llama-2-70b", cluster), TYPES)
    rng = np.random.default_rng(7)
    for m in range(mixes):
        lam = _lam_at_load(table, cluster, rng.dirichlet(np.ones(4)) * LAM.sum(), load)
        fg = flow_guided_search("llama-2-70b", cluster, lam, table, seed=m)
        bf = brute_force_search("llama-2-70b", cluster, lam, table)
        for res in (fg, bf):
            _check_feasible(res.deployment, cluster)
            assert res.dispatch.alpha == pytest.approx(res.objective, rel=1e-7)
        assert fg.objective >= fg.start_objective * (1 - 1e-9)
        assert fg.start_objective == pytest.approx(1 / load)
        assert bf.objective >= fg.objective * (1 - 1e-9)


def test_search_from_a_given_start_is_deterministic_and_counts_switches(table16):
    lam = LAM * 5
    a = flow_guided_search("llama-2-70b", "h100x16", lam, table16, start="8xTP2", seed=4)
    b = flow_guided_search("llama-2-70b", "h100x16", lam, table16, start="8xTP2", seed=4)
    assert a.deployment == b.deployment and a.objective == b.objective and a.iterations == b.iterations
    assert a.start.spec_string() == "8xTP2" and a.objective >= a.start_objective
    assert a.switches == sum(abs(a.deployment.configs.count(c) - a.start.configs.count(c))
                             for c in set(a.deployment.configs) | set(a.start.configs))
    same = flow_guided_search("llama-2-70b", "h100x16", lam, table16, start=a.deployment, seed=1)
    assert same.switches == 0 and same.objective == pytest.approx(a.objective)  # a local optimum stays put


def test_search_escapes_a_uniform_split_that_needs_several_donors():
    # From 8xTP2, OPT-66B (a KV-starved TP2) must end as 2xTP8: growing a TP8 takes four TP2s at once.
    types = [TypeProfile(0, 218, 19), TypeProfile(1, 321, 120), TypeProfile(2, 1081, 420), TypeProfile(3, 1233, 111)]
    table = ThroughputTable("opt-66b", enumerate_replica_configs("opt-66b", "h100x16"), types)
    lam = np.array([2.05, 0.23, 12.05, 0.34])
    res = flow_guided_search("opt-66b", "h100x16", lam, table, start="8xTP2")
    best = brute_force_search("opt-66b", "h100x16", lam, table)
    assert best.deployment.spec_string() == "2xTP8"
    assert res.objective == pytest.approx(best.objective, rel=1e-9)


def test_brute_force_enumerates_the_same_shapes_as_the_cluster_module():
    table = ThroughputTable("llama-2-70b", enumerate_replica_configs("llama-2-70b", "h100x8"), TYPES)
    shapes = enumerate_deployments("llama-2-70b", "h100x8", homogeneous=False, limit=None)
    assert count_shapes("llama-2-70b", "h100x8", table) == len(shapes)
    assert brute_force_search("llama-2-70b", "h100x8", LAM, table).iterations == len(shapes)
    with pytest.raises(ConfigError, match=rf"{len(shapes)} maximal shapes .* max_shapes=5"):
        brute_force_search("llama-2-70b", "h100x8", LAM, table, max_shapes=5)


def test_homogeneous_candidates_sorted_and_homogeneous(table16):
    cands = homogeneous_candidates("llama-2-70b", "h100x16", LAM, table16)
    assert len(cands) == len(table16.configs)
    assert all(a.objective >= b.objective for a, b in zip(cands, cands[1:]))
    assert all(len(set(c.deployment.configs)) == 1 for c in cands)


def test_heterogeneous_mix_beats_every_homogeneous_deployment():
    # Short requests run best per GPU on TP2, long ones on TP4 (KV room): a mix of both should win.
    types = [TypeProfile(0, 150, 60), TypeProfile(1, 1500, 600)]
    table = ThroughputTable("llama-2-70b", enumerate_replica_configs("llama-2-70b", "h100x16"), types)
    lam = np.array([60.0, 2.0])
    res = flow_guided_search("llama-2-70b", "h100x16", lam, table)
    best_homogeneous = homogeneous_candidates("llama-2-70b", "h100x16", lam, table)[0].objective
    assert len(set(res.deployment.configs)) >= 2
    assert res.objective > best_homogeneous * 1.01


def test_unservable_types_are_left_out():
    types = [TypeProfile(0, 300, 100), TypeProfile(1, 3000, 500)]  # type 1 is over OPT-66B's 2,048 tokens
    table = ThroughputTable("opt-66b", enumerate_replica_configs("opt-66b", "h100x8"), types)
    res = flow_guided_search("opt-66b", "h100x8", np.array([5.0, 1.0]), table)
    assert res.unservable_types == (1,) and res.objective > 0
    np.testing.assert_allclose(res.dispatch.served_rps, [5.0, 0.0], rtol=1e-6)


def test_mixed_gpu_cluster_respects_per_type_budgets():
    cluster = "mixed-a100-h100-h200"
    table = ThroughputTable("llama-2-13b", enumerate_replica_configs("llama-2-13b", cluster),
                            [TypeProfile(0, 300, 100), TypeProfile(1, 2000, 300)])
    res = flow_guided_search("llama-2-13b", cluster, np.array([40.0, 4.0]), table)
    _check_feasible(res.deployment, cluster)
    assert res.objective >= res.start_objective


def test_search_bad_input(table16):
    with pytest.raises(ConfigError, match="lam must hold 4"):
        flow_guided_search("llama-2-70b", "h100x16", np.ones(3), table16)
    with pytest.raises(ConfigError, match="table is for llama-2-70b"):
        flow_guided_search("opt-66b", "h100x16", LAM, table16)
    with pytest.raises(ConfigError, match="patience"):
        flow_guided_search("llama-2-70b", "h100x16", LAM, table16, patience=0)
    with pytest.raises(ConfigError, match="not among the configs"):
        flow_guided_search("llama-2-70b", "h100x16", LAM, ThroughputTable(
            "llama-2-70b", [ReplicaConfig("llama-2-70b", "h100", 4)], TYPES), start="2xTP8")
    with pytest.raises(ConfigError, match="no config of the throughput table fits"):
        flow_guided_search("llama-2-70b", "h100x8", LAM, ThroughputTable(
            "llama-2-70b", [ReplicaConfig("llama-2-70b", "a100", 4)], TYPES, engine=EngineConfig()))


# --------------------------------------------------------------------------- tail-latency proxy (sched/latency.py)

# Azure-code-like types (Llama-2-70B, first 10 minutes): short chat, short prompts with tiny outputs,
# long prompts with long-tailed outputs, and 2,000-token prompts with 12-token outputs (half the requests).
CODE_LENGTHS = np.array([[45.0, 35.0], [262.0, 14.0], [1407.0, 92.0], [1960.0, 12.0]])
CODE_CENTRES_OUT = np.array([20.0, 12.0, 67.0, 11.0])
CODE_PEAK_RPS = np.array([2.65, 6.25, 7.82, 22.48])


def test_output_spread_recovers_a_lognormal_and_orders_types_by_tail():
    from oserve_rl.sched.latency import OutputSpread, tail_order

    rng = np.random.default_rng(0)
    out = rng.lognormal(mean=np.log(80.0), sigma=0.8, size=200_000)
    sp = OutputSpread.from_means([out.mean()], [np.exp(np.log(out).mean())])
    assert sp.sigma[0] == pytest.approx(0.8, rel=0.02)
    assert sp.quantile()[0] == pytest.approx(np.percentile(out, 99), rel=0.05)
    code = OutputSpread.from_means(CODE_LENGTHS[:, 1], CODE_CENTRES_OUT)
    assert tail_order(code).tolist()[:2] == [2, 0]  # the long-output types join the decode side first
    with pytest.raises(ConfigError, match="lengths must be finite and > 0"):
        OutputSpread.from_means([10.0, 0.0], [5.0, 5.0])


def test_prompts_on_a_replica_slow_its_decoding_and_saturation_is_infinite():
    from oserve_rl.sched.latency import replica_latency

    cfg, engine = ReplicaConfig("llama-2-70b", "h100", tp=4), EngineConfig(max_model_len=4096)
    inp, out = CODE_LENGTHS[:, 0], CODE_LENGTHS[:, 1]
    alone, _ = replica_latency(cfg, engine, np.array([0.0, 0.0, 1.0, 0.0]), inp, out)
    shared, _ = replica_latency(cfg, engine, np.array([0.0, 0.0, 1.0, 3.0]), inp, out)
    assert alone < shared  # 3 rps of 1,960-token prompts put chunked prefill into most iterations
    assert alone == pytest.approx(cfg.perf().decode_s(1, 1453), rel=0.2)  # light load: close to one decode step
    tpot, ttft = replica_latency(cfg, engine, np.array([0.0, 0.0, 0.0, 50.0]), inp, out)
    assert math.isinf(tpot) and np.isinf(ttft).all()
    assert replica_latency(cfg, engine, np.zeros(4), inp, out)[0] == 0.0


def test_p99_proxy_is_the_mixture_quantile():
    from oserve_rl.sched.latency import Z99, p99_e2e_s

    # One cell: p99 = TTFT + TPOT * (the output's p99).
    assert p99_e2e_s(np.ones(1), np.array([0.5]), np.array([0.02]), np.log([100.0]), np.array([0.5])) == \
        pytest.approx(0.5 + 0.02 * 100.0 * math.exp(Z99 * 0.5), rel=1e-3)
    # Two cells: 2 % of the requests take 10 s, the rest 1 s -> the p99 is the slow one's.
    p = p99_e2e_s(np.array([0.98, 0.02]), np.array([0.0, 0.0]), np.array([0.01, 0.1]), np.log([100.0, 100.0]),
                  np.array([1e-3, 1e-3]))
    assert p == pytest.approx(10.0, rel=1e-2)
    assert math.isinf(p99_e2e_s(np.ones(1), np.array([math.inf]), np.array([0.02]), np.zeros(1), np.ones(1)))


def test_mean_proxy_and_the_tie_rule_between_plans():
    from oserve_rl.agents.oserve import TAIL_TIE, Routing, _fastest
    from oserve_rl.sched.latency import mean_e2e_s

    # mean output of a log-normal = exp(mu + sigma^2 / 2); cells weighted by share
    assert mean_e2e_s(np.array([3.0, 1.0]), np.array([1.0, 0.0]), np.array([0.1, 0.2]), np.log([100.0, 50.0]),
                      np.zeros(2)) == pytest.approx((3 * 11.0 + 1 * 10.0) / 4)
    assert mean_e2e_s(np.ones(1), np.zeros(1), np.ones(1), np.zeros(1), np.array([1.0])) == pytest.approx(math.exp(0.5))

    def r(p99, mean):
        return Routing(1.0, p99, [], None, None, mean_s=mean)

    # the same tail (p99 within TAIL_TIE): the faster mean wins, whatever the order
    assert _fastest([r(10.0, 5.0), r(10.0 * (1 + TAIL_TIE / 2), 4.0)]) == 1
    # a better tail wins over a better mean
    assert _fastest([r(10.0, 5.0), r(10.0 * (1 + 3 * TAIL_TIE), 1.0)]) == 0
    # exact ties: the first
    assert _fastest([r(10.0, 5.0), r(10.0, 5.0)]) == 0


def test_partition_candidates_cover_every_split_once():
    from oserve_rl.sched.latency import partition_candidates

    cands = list(partition_candidates([3, 2], [2, 0, 1, 3], np.ones(4, dtype=bool)))
    # 3 type splits x (4 * 3 - 2) replica splits (neither side empty)
    assert len(cands) == 3 * 10
    assert len({(tuple(s.tolist()), sp) for s, sp in cands}) == len(cands)
    assert all(s[2] for s, _ in cands)  # the longest-tail type is always on side 0
    # A type split that leaves a side without demand is skipped.
    only = list(partition_candidates([4], [2, 0, 1, 3], np.array([1, 0, 1, 0], bool)))
    assert len(only) == 3 and all(s.tolist() == [False, False, True, False] for s, _ in only)


def test_partitioned_dispatch_beats_the_balanced_one_on_a_code_like_mix():
    """Keeping the 2,000-token prompts off the replicas that decode the long outputs cuts the predicted p99,
    at a load scale the headroom rule accepts (the mechanism behind OServe's Azure-code gains here)."""
    from oserve_rl.sched.latency import LatencyModel, OutputSpread

    engine = EngineConfig(max_model_len=4096)
    cfg = ReplicaConfig("llama-2-70b", "h100", tp=4)
    profiles = [TypeProfile(j, *map(float, CODE_LENGTHS[j])) for j in range(4)]
    table = ThroughputTable("llama-2-70b", [cfg], profiles, engine, tpot_bound_s=0.1)
    lat = LatencyModel(engine, CODE_LENGTHS, OutputSpread.from_means(CODE_LENGTHS[:, 1], CODE_CENTRES_OUT))
    n = table.n
    bal = solve_dispatch(n, CODE_PEAK_RPS, capacity=np.array([8.0]))
    p_bal = lat.p99_s([cfg], bal.x / 8.0, [8])
    side0 = np.array([True, False, True, False])
    rows_n = np.vstack([n * side0, n * ~side0])
    part = solve_dispatch(rows_n, CODE_PEAK_RPS, capacity=np.array([3.0, 5.0]))
    p_part = lat.p99_s([cfg, cfg], part.x / np.array([[3.0], [5.0]]), [3, 5])
    assert part.alpha >= 1.2 and bal.alpha > part.alpha
    assert p_part < 0.85 * p_bal


def test_latency_list_path_is_the_checked_one_bit_for_bit():
    """OServe's ranking scores dispatches through ``p99_and_mean_rows_s`` (lists, unchecked): the same p99 and
    mean as the checked ``p99_and_mean_s``, rows without traffic or replicas included."""
    from oserve_rl.sched.latency import LatencyModel, OutputSpread

    engine = EngineConfig(max_model_len=4096)
    cfgs = [ReplicaConfig("llama-2-70b", "h100", tp=4), ReplicaConfig("llama-2-70b", "h100", tp=8)]
    lat = LatencyModel(engine, CODE_LENGTHS, OutputSpread.from_means(CODE_LENGTHS[:, 1], CODE_CENTRES_OUT))
    rng = np.random.default_rng(3)
    for _ in range(60):
        rows = [cfgs[int(i)] for i in rng.integers(0, 2, 4)]
        x = rng.uniform(0.0, 3.0, (4, 4)) * (rng.random((4, 4)) > 0.4)
        counts = rng.integers(0, 4, 4).astype(float)
        assert lat.p99_and_mean_rows_s(rows, x.tolist(), counts.tolist()) == lat.p99_and_mean_s(rows, x, counts)


def test_disjoint_dispatch_is_the_lps_answer():
    from oserve_rl.sched import disjoint_dispatch

    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(200):
        k, j = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        owner = rng.integers(k, size=j)  # each type runs on exactly one row
        n = np.zeros((k, j))
        n[owner, np.arange(j)] = rng.uniform(0.5, 20.0, j)
        cap = rng.integers(1, 6, k).astype(float)
        lam = rng.uniform(0.0, 8.0, j) * (rng.random(j) > 0.2)
        fast = disjoint_dispatch(n, lam, cap)
        res = solve_dispatch(n, lam, capacity=cap)
        if fast is None:
            assert not (lam > 0).any()
            continue
        assert fast[0] == pytest.approx(res.alpha, rel=1e-7)
        if fast[1] is None:
            assert res.alpha < 1.0
            continue
        checked += 1
        np.testing.assert_allclose(fast[1], res.x, rtol=1e-7, atol=1e-9)
    assert checked > 30
    shared = np.array([[1.0, 2.0], [3.0, 4.0]])  # both rows run both types: the LP decides
    assert disjoint_dispatch(shared, np.array([1.0, 1.0])) is None


def test_load_scale_is_solve_dispatchs_alpha_bit_for_bit():
    from oserve_rl.sched import load_scale

    rng = np.random.default_rng(11)
    below = 0
    for _ in range(150):
        k, j = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        n = rng.uniform(0.5, 20.0, (k, j)) * (rng.random((k, j)) > 0.3)
        n[rng.integers(k)] = n[0]  # identical rows are merged by both
        lam = rng.uniform(0.0, 30.0, j) * (rng.random(j) > 0.2)
        cap = rng.integers(0, 4, k).astype(float)
        alpha = solve_dispatch(n, lam, capacity=cap).alpha
        assert load_scale(n, lam, cap) == alpha or (math.isnan(alpha) and math.isnan(load_scale(n, lam, cap)))
        below += alpha < 1.0
    assert below > 10  # the case where solve_dispatch also solves the max-flow LP


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.data())
def test_load_scale_bound_is_an_upper_bound_on_the_lp(k, j, data):
    from oserve_rl.sched import load_scale_bound

    rate = st.one_of(st.just(0.0), st.floats(0.01, 50.0))
    n = np.array(data.draw(st.lists(st.lists(rate, min_size=j, max_size=j), min_size=k, max_size=k)))
    lam = np.array(data.draw(st.lists(rate, min_size=j, max_size=j)))
    cap = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 5.0]), min_size=k, max_size=k)))
    bound = load_scale_bound(n.tolist(), lam.tolist(), cap.tolist())
    alpha = solve_dispatch(n, lam, capacity=cap).alpha
    if math.isinf(alpha):
        assert math.isinf(bound)
    else:
        assert bound >= alpha * (1 - 1e-9)
    if k == 1 and cap[0] > 0 and math.isfinite(alpha):  # one row: the bound is the LP's answer
        assert bound == pytest.approx(alpha, rel=1e-9)


def _bound_by_the_formula(n, lam, cap):
    """load_scale_bound's docstring, spelled out directly (the reference for its per-pattern memo)."""
    demanded = [j for j, v in enumerate(lam) if v > 0]
    if not demanded:
        return math.inf
    rows = [(row, c) for row, c in zip(n, cap) if c > 0]
    fastest = [max((row[j] for row, _ in rows), default=0.0) for j in demanded]
    if not min(fastest) > 0:
        return 0.0
    demand_s = sum(lam[j] / m for j, m in zip(demanded, fastest))
    return sum(c * max(row[j] / m for j, m in zip(demanded, fastest)) for row, c in rows) / demand_s


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.data())
def test_one_load_scale_bound_for_many_capacities_is_the_formula_bit_for_bit(k, j, data):
    from oserve_rl.sched import LoadScaleBound

    rate = st.one_of(st.just(0.0), st.floats(0.01, 50.0))
    n = data.draw(st.lists(st.lists(rate, min_size=j, max_size=j), min_size=k, max_size=k))
    lam = data.draw(st.lists(rate, min_size=j, max_size=j))
    caps = data.draw(st.lists(st.lists(st.sampled_from([0.0, 1.0, 2.0, 5.0]), min_size=k, max_size=k), min_size=1,
                              max_size=12))
    bound = LoadScaleBound(n, lam)  # reused: the second cap of a zero pattern reads the memo
    assert [bound(c) for c in caps] == [_bound_by_the_formula(n, lam, c) for c in caps]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10), st.integers(1, 5), st.data())
def test_unique_rows_is_numpys_unique_over_rows(k, j, data):
    from oserve_rl.sched.dispatch import _unique_rows

    values = st.sampled_from([0.0, 1e-3, 0.5, 1.25, 3.0, 7.7])
    n = np.array(data.draw(st.lists(st.lists(values, min_size=j, max_size=j), min_size=k, max_size=k)))
    u, inv = np.unique(n, axis=0, return_inverse=True)
    u2, inv2 = _unique_rows(n)
    assert np.array_equal(u, u2) and np.array_equal(inv.reshape(-1), inv2)
