"""Deployment specs, placement, validation, enumeration and the switch-cost model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oserve_rl.catalog import get_cluster, get_model
from oserve_rl.cluster import (
    Deployment,
    ReplicaConfig,
    SwitchCosts,
    cluster_nodes,
    enumerate_deployments,
    enumerate_replica_configs,
    estimate_switch_downtime_s,
    load_switch_costs,
    parse_deployment,
    parse_groups,
    plan_switch,
)
from oserve_rl.errors import ConfigError, DoesNotFitError, UnknownNameError


def _node_of(cluster):
    return {g: n.index for n in cluster_nodes(cluster) for g in n.gpu_ids}


def _tp_groups_inside_nodes(d: Deployment) -> bool:
    node_of = _node_of(d.cluster)
    return all(
        len({node_of[g] for g in r.stage_gpu_ids(s)}) == 1 for r in d.replicas for s in range(r.config.pp)
    )


# --------------------------------------------------------------------------- spec strings


@pytest.mark.parametrize(
    "spec, cluster, model",
    [
        ("4xTP2", "a100x8", "llama-2-70b"),
        ("2xTP4+8xTP1", "h100x16", "llama-2-7b"),
        ("1xTP4PP2", "h100x8", "llama-2-70b"),
        ("1xTP2PP4+2xTP4", "h100x16", "llama-2-70b"),
        ("2xTP4@h200+4xTP2@h100-sxm+4xTP1@a100-80gb", "mixed-a100-h100-h200", "llama-2-7b"),
    ],
)
def test_spec_round_trip(spec, cluster, model):
    d = parse_deployment(spec, cluster, model)
    assert d.spec_string() == spec
    assert parse_deployment(d.spec_string(), cluster, model) == d
    assert Deployment.from_dict(d.to_dict()) == d
    assert _tp_groups_inside_nodes(d)
    all_ids = [g for r in d.replicas for g in r.gpu_ids]
    assert len(all_ids) == len(set(all_ids)) == d.num_gpus


def test_spec_syntax_is_lenient_about_case_spaces_and_aliases():
    c = get_cluster("mixed-a100-h100-h200")
    a = parse_deployment(" 2x tp4 @H100 + tp2pp1@a100 ", c, "meta-llama/Llama-2-7b-hf")
    b = parse_deployment("2xTP4@h100-sxm+1xTP2@a100-80gb", c, "llama-2-7b")
    assert a == b
    assert a.configs[0] == ReplicaConfig("llama-2-7b", "h100", 4, 1)


def test_parse_groups_needs_no_cluster_and_deployments_hash():
    g = parse_groups("2xTP4PP2@h100+TP1")
    assert [(x.count, x.tp, x.pp, x.gpu) for x in g] == [(2, 4, 2, "h100"), (1, 1, 1, None)]
    a = parse_deployment("4xTP2", "a100x8", "llama-2-70b")
    assert len({a, parse_deployment("4xTP2", "a100x8", "llama-2-70b")}) == 1


def test_structured_constructor_matches_spec():
    c = get_cluster("h100x16")
    a = Deployment.from_groups([(2, 4, 1, None), (4, 2)], c, "llama-2-70b")
    b = Deployment.from_groups([{"count": 2, "tp": 4}, {"count": 4, "tp": 2, "pp": 1}], c, "llama-2-70b")
    assert a == b == parse_deployment("2xTP4+4xTP2", c, "llama-2-70b")


def test_placement_is_independent_of_group_order():
    c = get_cluster("a100x8")
    a = parse_deployment("2xTP2+1xTP4", c, "llama-2-70b")
    b = parse_deployment("1xTP4+2xTP2", c, "llama-2-70b")
    assert {r.gpu_ids for r in a.replicas} == {r.gpu_ids for r in b.replicas}
    assert a.replicas[2].gpu_ids == (0, 1, 2, 3)  # largest first, lowest ids
    assert a.spec_string() == "2xTP2+1xTP4"  # replica order follows the spec


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("", "empty"),
        ("4xTP", "cannot parse group '4xTP'"),
        ("4*TP2", "grammar"),
        ("2xTP2+", "cannot parse group ''"),
        ("0xTP2", "count 0"),
        ("2xTP0", "TP 0"),
        ("2xTP2PP0", "PP 0"),
        ("2xTP2@", "cannot parse group"),
    ],
)
def test_malformed_specs_quote_group_and_grammar(spec, needle):
    with pytest.raises(ConfigError) as e:
        parse_deployment(spec, "a100x8", "llama-2-7b")
    assert needle in str(e.value)
    if needle != "empty":
        assert "group :=" in str(e.value) or "must be >= 1" in str(e.value)


def test_unknown_gpu_and_gpu_not_in_cluster():
    with pytest.raises(ConfigError, match=r"group '2xTP2@h1000'.*unknown GPU 'h1000'"):
        parse_deployment("2xTP2@h1000", "a100x8", "llama-2-7b")
    with pytest.raises(ConfigError, match=r"group '2xTP2@h200'.*has no h200 GPUs.*8 a100-80gb"):
        parse_deployment("2xTP2@h200", "a100x8", "llama-2-7b")
    with pytest.raises(UnknownNameError):
        parse_deployment("2xTP2", "a100x8", "llama-9-70b")


def test_too_many_gpus_names_groups_and_numbers():
    with pytest.raises(DoesNotFitError, match=r"needs 12 h100-sxm GPUs .*'2xTP4@h100' 8.*'2xTP2@h100' 4.*has 8"):
        parse_deployment("2xTP4@h100+2xTP2@h100", "mixed-a100-h100-h200", "llama-2-7b")
    with pytest.raises(DoesNotFitError, match=r"group '3xTP4'.*4 unassigned GPUs"):
        parse_deployment("3xTP4", "a100x8", "llama-2-7b")


def test_tp_must_divide_heads():
    with pytest.raises(ConfigError, match=r"TP 3 does not divide the 64 attention heads"):
        parse_deployment("1xTP3", "a100x8", "llama-2-70b")
    assert get_model("opt-30b").num_heads == 56
    with pytest.raises(ConfigError, match=r"replica TP16@h100-sxm: TP 16 does not divide the 56 .*valid TP: 1, 2, 4, 8"):
        parse_deployment("1xTP16", "h100x16", "opt-30b", allow_cross_node_tp=True)


def test_memory_fit_rejection():
    """llama-2-70b (138 GB of weights) does not fit one A100-80GB; two do."""
    with pytest.raises(DoesNotFitError) as e:
        parse_deployment("1xTP1", "a100x8", "llama-2-70b")
    assert "TP1" in str(e.value) and "llama-2-70b" in str(e.value)
    d = parse_deployment("4xTP2", "a100x8", "llama-2-70b")
    assert len(d) == 4
    cfgs = enumerate_replica_configs("llama-2-70b", "a100x8")
    assert ReplicaConfig("llama-2-70b", "a100-80gb", 1, 1) not in cfgs
    assert ReplicaConfig("llama-2-70b", "a100-80gb", 2, 1) in cfgs


def test_tp_group_stays_in_a_node():
    c = get_cluster("h100x16")
    with pytest.raises(DoesNotFitError, match=r"TP group of 16 GPUs cannot be placed inside one node.*has 8 GPUs"):
        parse_deployment("1xTP16", c, "llama-3-8b")  # 32 heads / 8 KV heads: TP16 is a multiple of 8
    d = parse_deployment("1xTP16", c, "llama-3-8b", allow_cross_node_tp=True)
    assert len({_node_of(c)[g] for g in d.replicas[0].gpu_ids}) == 2
    # PP stages may span nodes; each TP group stays whole.
    d = parse_deployment("3xTP4+1xTP2PP2", c, "llama-2-70b")
    assert _tp_groups_inside_nodes(d)


def test_fragmentation_error_names_replica():
    # Keeping two TP2 replicas in place leaves 6 free GPUs per node: enough in total, no room for a TP8.
    c = get_cluster("h100x16")
    old = Deployment.from_dict({
        "model": "llama-2-7b", "cluster": "h100x16",
        "replicas": [{"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [0, 1]},
                     {"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [8, 9]}],
    })
    with pytest.raises(DoesNotFitError, match=r"replica 2 \(TP8@h100-sxm\): no h100-sxm node has 8 free GPUs.*\{0: 6, 1: 6\}"):
        parse_deployment("2xTP2+1xTP8", c, "llama-2-7b", prefer=old)
    assert parse_deployment("2xTP2+1xTP8", c, "llama-2-7b").num_gpus == 12


def test_mixed_cluster_fills_fastest_gpus_first():
    c = get_cluster("mixed-a100-h100-h200")
    d = parse_deployment("2xTP4+2xTP4+2xTP2", c, "llama-2-7b")
    assert [r.config.gpu for r in d.replicas] == ["h200"] * 2 + ["h100-sxm"] * 2 + ["a100-80gb"] * 2
    types = {n.index: n.gpu.name for n in cluster_nodes(c)}
    node_of = _node_of(c)
    assert all(types[node_of[g]] == r.config.gpu for r in d.replicas for g in r.gpu_ids)
    assert d.spec_string() == "2xTP4@h200+2xTP4@h100-sxm+2xTP2@a100-80gb"
    # named groups take their type first; unnamed ones get the fastest type left
    d = parse_deployment("1xTP8+2xTP4@h200", c, "llama-2-7b")
    assert d.configs[0].gpu == "h100-sxm"


def test_from_dict_rejects_bad_placements():
    c = get_cluster("h100x16")
    base = {"model": "llama-2-7b", "cluster": "h100x16"}

    def mk(*reps):
        return Deployment.from_dict({**base, "replicas": list(reps)})

    with pytest.raises(ConfigError, match=r"GPU id 16 is outside.*0\.\.15"):
        mk({"gpu": "h100", "tp": 1, "pp": 1, "gpu_ids": [16]})
    with pytest.raises(ConfigError, match=r"GPU 1 is already used by replica 0"):
        mk({"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [0, 1]}, {"gpu": "h100", "tp": 1, "pp": 1, "gpu_ids": [1]})
    with pytest.raises(DoesNotFitError, match=r"TP group \(7, 8\) spans nodes \[0, 1\]"):
        mk({"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [7, 8]})
    with pytest.raises(ConfigError, match=r"needs 2 GPUs, got 1"):
        mk({"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [7]})
    with pytest.raises(ConfigError, match=r"replicas\[0\] must have exactly keys"):
        mk({"gpu": "h100", "tp": 2, "gpu_ids": [0, 1]})
    with pytest.raises(ConfigError, match=r"GPU 0 is a h100-sxm, not a a100-80gb"):
        mk({"gpu": "a100", "tp": 1, "pp": 1, "gpu_ids": [0]})
    # PP stages across nodes are fine
    d = mk({"gpu": "h100", "tp": 2, "pp": 2, "gpu_ids": [6, 7, 8, 9]})
    assert d.cluster == c


def test_enumerate_replica_configs_and_deployments():
    cfgs = enumerate_replica_configs("llama-2-70b", "a100x8")
    assert cfgs == sorted(cfgs, key=lambda c: (c.num_gpus, c.tp))
    assert all(c.tp <= 8 and c.num_gpus <= 8 for c in cfgs)
    homo = enumerate_deployments("llama-2-70b", "a100x8")
    assert len(homo) == len(cfgs)
    assert all(d.num_gpus == 8 and len(set(d.configs)) == 1 for d in homo)
    assert "4xTP2" in {d.spec_string() for d in homo}
    het = enumerate_deployments("llama-2-70b", "a100x8", homogeneous=False)
    specs = [d.spec_string() for d in het]
    assert len(specs) == len(set(specs)) and {d.spec_string() for d in homo} <= set(specs)
    assert "1xTP4+2xTP2" in specs
    assert all(d.num_gpus == 8 for d in het)  # 70B has no 1-GPU config on A100, so 8 is always filled
    assert enumerate_deployments("llama-2-70b", "a100x8", homogeneous=False) == het  # deterministic
    assert len(enumerate_deployments("llama-2-70b", "a100x8", homogeneous=False, limit=3)) == 3
    small = enumerate_deployments("llama-2-70b", "a100x8", max_gpus=4)
    assert all(d.num_gpus <= 4 for d in small)


# --------------------------------------------------------------------------- switching


def test_switch_plan_keeps_leaves_starts():
    c = get_cluster("a100x8")
    old = parse_deployment("4xTP2", c, "llama-2-70b")
    new = parse_deployment("2xTP2+1xTP4", c, "llama-2-70b")  # TP4 on 0-3, TP2 on 4-5, 6-7
    plan = plan_switch(old, new)
    assert plan.kept == {0: 2, 1: 3}
    assert plan.leaving == (0, 1) and plan.starting == (2,)
    assert plan.blocked_by[2] == frozenset({0, 1})
    assert plan.blocked_by[0] == plan.blocked_by[1] == frozenset()
    assert plan.ready_s[0] == 0.0 and plan.ready_s[2] == plan.load_s[2] > 0
    assert plan.ready_at_s(2, 100.0, {0: 110.0, 1: 130.0}) == pytest.approx(130.0 + plan.load_s[2])
    with pytest.raises(ConfigError, match=r"waits for old replicas \[1\]"):
        plan.ready_at_s(2, 100.0, {0: 110.0})
    assert set(plan.leave_mode) == {0, 1}
    # The new TP4 replica's GPUs are the old replicas' GPUs: half of each shard is already local.
    local = sum(t.bytes for t in plan.transfers if t.link == "local")
    moved = sum(t.bytes for t in plan.transfers if t.link != "local")
    assert local == pytest.approx(moved, rel=0.01)


def test_prefer_keeps_replicas_in_place():
    c = get_cluster("a100x8")
    old = parse_deployment("4xTP2", c, "llama-2-70b")
    new = parse_deployment("1xTP4+2xTP2", c, "llama-2-70b", prefer=old)
    plan = plan_switch(old, new)
    assert len(plan.kept) == 2 and plan.starting == (0,)


def test_noop_and_router_only_switches():
    c = get_cluster("a100x8")
    d = parse_deployment("4xTP2", c, "llama-2-70b")
    plan = plan_switch(d, d)
    assert plan.is_noop and plan.router_only and plan.router_update_s == 0.0
    assert estimate_switch_downtime_s(d, d) == 0.0
    reordered = Deployment(d.model, c, d.replicas[::-1])
    p2 = plan_switch(d, reordered)
    assert p2.router_only and not p2.is_noop and p2.kept == {0: 3, 1: 2, 2: 1, 3: 0}
    assert estimate_switch_downtime_s(d, reordered) == pytest.approx(0.05)


def test_reshard_beats_reload_for_70b():
    c = get_cluster("h100x32")
    old = parse_deployment("8xTP4", c, "llama-2-70b")
    new = parse_deployment("16xTP2", c, "llama-2-70b")
    reshard = plan_switch(old, new)
    reload = plan_switch(old, new, SwitchCosts(mode="reload"))
    assert all(reshard.source[i] == "reshard" for i in reshard.starting)
    assert all(reload.source[i] == "reload" for i in reload.starting)
    t_reshard = max(reshard.load_s.values())
    t_reload = max(reload.load_s.values())
    assert t_reshard < 10.0 < 50.0 < t_reload  # OServe: < 10 s vs > 50 s for a cold 70B reload
    assert estimate_switch_downtime_s(old, new) < estimate_switch_downtime_s(old, new, SwitchCosts(mode="reload"))
    # First deployment: nothing to pull from, so a disk load (~84 s for 70B on one node).
    first = plan_switch(None, parse_deployment("1xTP4", c, "llama-2-70b"))
    assert first.source == {0: "reload"}
    assert 70.0 < first.load_s[0] < 100.0


def test_inter_node_reshard_slower_than_intra_node():
    c = get_cluster("h100x16")
    costs = SwitchCosts(reshard_init_s=0.0)
    old = Deployment.from_dict({"model": "llama-2-70b", "cluster": "h100x16", "replicas": [
        {"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [0, 1]}]})
    near = Deployment.from_dict({"model": "llama-2-70b", "cluster": "h100x16", "replicas": [
        {"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [0, 1]}, {"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [2, 3]}]})
    far = Deployment.from_dict({"model": "llama-2-70b", "cluster": "h100x16", "replicas": [
        {"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [0, 1]}, {"gpu": "h100", "tp": 2, "pp": 1, "gpu_ids": [8, 9]}]})
    p_near, p_far = plan_switch(old, near, costs), plan_switch(old, far, costs)
    assert {t.link for t in p_near.transfers} == {"nvlink"}
    assert {t.link for t in p_far.transfers} == {"network"}
    ratio = p_far.load_s[1] / p_near.load_s[1]
    assert ratio == pytest.approx(c.node_list()[0][2] / c.inter_node_gbps, rel=1e-6)
    assert p_near.blocked_by[1] == frozenset()


def test_reshard_prefers_least_loaded_sources():
    # Two old TP2 replicas on one node; four new TP1... use 8B so TP1 fits. Pulls spread over both sources.
    c = get_cluster("h100x8")
    old = parse_deployment("2xTP2", c, "llama-3-8b")  # GPUs 0-1, 2-3
    new = parse_deployment("2xTP2+4xTP1", c, "llama-3-8b", prefer=old)
    plan = plan_switch(old, new)
    assert plan.starting == (2, 3, 4, 5)
    srcs = {t.src_gpu for t in plan.transfers}
    assert srcs == {0, 1, 2, 3}
    sent = {g: sum(t.bytes for t in plan.transfers if t.src_gpu == g) for g in srcs}
    assert max(sent.values()) == min(sent.values())


def test_kv_transfer_and_cross_cluster_error():
    c = get_cluster("h100x16")
    d = parse_deployment("4xTP4", c, "llama-2-70b")
    plan = plan_switch(d, d)
    same_node = plan.kv_transfer_s(10_000, d.replicas[0], d.replicas[1])
    cross = plan.kv_transfer_s(10_000, d.replicas[0], d.replicas[2])
    assert 0 < same_node < cross
    with pytest.raises(ConfigError, match="cluster"):
        plan_switch(parse_deployment("1xTP4", "h100x8", "llama-2-70b"), d)


def test_model_change_reloads():
    c = get_cluster("h100x8")
    plan = plan_switch(parse_deployment("1xTP4", c, "llama-2-70b"), parse_deployment("1xTP4", c, "llama-3-70b"))
    assert plan.source == {0: "reload"} and plan.kept == {}


def test_switch_cost_yaml(tmp_path):
    costs = load_switch_costs()
    assert costs == SwitchCosts()  # the shipped file holds the documented defaults
    p = tmp_path / "s.yaml"
    p.write_text("mode: reload\ndisk_gbps: 4\n")
    assert load_switch_costs(p).disk_gbps == 4.0
    p.write_text("router_update_seconds: 0.1\n")
    with pytest.raises(ConfigError, match=r"s\.yaml.*router_update_seconds: unknown key.*valid keys: mode"):
        load_switch_costs(p)
    p.write_text("mode: teleport\n")
    with pytest.raises(ConfigError, match=r"switching\.mode"):
        load_switch_costs(p)
    p.write_text("link_efficiency: 1.5\n")
    with pytest.raises(ConfigError, match=r"link_efficiency.*1\.5"):
        load_switch_costs(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_switch_costs(p)
    with pytest.raises(ConfigError, match="not found"):
        load_switch_costs(tmp_path / "missing.yaml")


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(
        st.tuples(st.integers(1, 4), st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4]),
                  st.sampled_from([None, "a100-80gb", "h100-sxm", "h200"])),
        min_size=1, max_size=4,
    )
)
def test_placement_invariants(groups):
    """Any group list either places validly or raises one DoesNotFitError; never overlaps or splits a TP group."""
    c = get_cluster("mixed-a100-h100-h200")
    try:
        d = Deployment.from_groups(groups, c, "llama-3-8b")
    except DoesNotFitError:
        return
    types = {g: n.gpu.name for n in cluster_nodes(c) for g in n.gpu_ids}
    ids = [g for r in d.replicas for g in r.gpu_ids]
    assert len(ids) == len(set(ids)) == sum(n * tp * pp for n, tp, pp, _ in groups)
    assert all(types[g] == r.config.gpu for r in d.replicas for g in r.gpu_ids)
    assert _tp_groups_inside_nodes(d)
    assert Deployment.from_groups(groups, c, "llama-3-8b") == d
    assert parse_deployment(d.spec_string(), c, "llama-3-8b") == d
