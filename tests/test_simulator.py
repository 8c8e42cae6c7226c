"""Cluster simulator: request accounting, KV and time invariants, determinism,
switches, fast-vs-exact agreement on the bundled traces, and the ``simulate`` CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oserve_rl.__main__ import main
from oserve_rl.catalog import get_cluster
from oserve_rl.cluster import SwitchCosts, parse_deployment
from oserve_rl.errors import DoesNotFitError
from oserve_rl.perf import EngineConfig
from oserve_rl.sim.requests import RequestRecorder
from oserve_rl.sim.simulator import ClusterSimulator
from oserve_rl.workload import Trace, load_trace

# Keys that measure the host, not the simulation.
HOST_KEYS = {"wall_s", "cpu_s", "requests_per_cpu_s", "sim_s_per_wall_s"}

SETUPS = [("a100x8", "llama-2-7b"), ("h100x8", "llama-3-8b")]
SPECS_8 = ["8xTP1", "4xTP2", "2xTP4", "1xTP8", "2xTP2+4xTP1", "1xTP4+2xTP2", "4xTP1", "2xTP1", "1xTP2+1xTP1"]
ROUTERS = ["least_work", "round_robin"]


# ------------------------------------------------------------------ helpers
def _same(a, b) -> bool:
    """Structural equality where NaN equals NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _sim_summary(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in HOST_KEYS}


@st.composite
def scenarios(draw):
    cluster, model = draw(st.sampled_from(SETUPS))
    util = draw(st.sampled_from([0.23, 0.3, 0.5, 0.9]))
    engine = EngineConfig(gpu_memory_utilization=util, max_num_seqs=draw(st.sampled_from([1, 2, 4, 256])),
                          max_num_batched_tokens=draw(st.sampled_from([512, 2048])))
    n = draw(st.integers(1, 50))
    gaps = draw(st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=n, max_size=n))
    start = draw(st.floats(0.0, 100.0))
    arrival = start + np.cumsum(gaps)
    # Prompts up to ~9k tokens so that some requests exceed the context or the KV pool and are rejected.
    inp = draw(st.lists(st.one_of(st.integers(1, 3000), st.integers(3000, 9000)), min_size=n, max_size=n))
    out = draw(st.lists(st.integers(1, 600), min_size=n, max_size=n))
    span = float(arrival[-1] - arrival[0]) + 10.0
    switches = draw(st.lists(st.tuples(st.floats(0.0, span), st.sampled_from(SPECS_8)), max_size=3))
    switches = [(float(arrival[0]) + t, spec) for t, spec in switches]
    until = draw(st.one_of(st.none(), st.floats(0.0, span)))
    until = None if until is None else float(arrival[0]) + until
    return dict(cluster=cluster, model=model, engine=engine, spec=draw(st.sampled_from(SPECS_8)),
                arrival=arrival, inp=inp, out=out, router=draw(st.sampled_from(ROUTERS)), switches=switches,
                until=until, migrate_min=draw(st.sampled_from([0, 64, 1024])),
                migrate=draw(st.booleans()), as_trace=draw(st.booleans()))


def _build(sc, mode: str = "fast") -> ClusterSimulator:
    try:
        dep = parse_deployment(sc["spec"], get_cluster(sc["cluster"]), sc["model"], engine=sc["engine"])
        for _, spec in sc["switches"]:
            parse_deployment(spec, get_cluster(sc["cluster"]), sc["model"], engine=sc["engine"])
    except DoesNotFitError:
        assume(False)
    if sc["as_trace"]:
        trace = Trace(sc["arrival"], sc["inp"], sc["out"], name="hyp", source="hypothesis")
    else:
        trace = RequestRecorder(sc["arrival"], sc["inp"], sc["out"])
    costs = SwitchCosts(migrate_min_kv_tokens=sc["migrate_min"], migrate_enabled=sc["migrate"])
    sim = ClusterSimulator(dep, trace, router=sc["router"], engine=sc["engine"], mode=mode, switch_costs=costs,
                           progress=False)
    for t, spec in sc["switches"]:
        sim.schedule_switch(t, spec)
    return sim


PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------ properties
@PROP
@given(scenarios())
def test_every_request_is_accounted_for_and_times_are_ordered(sc):
    sim = _build(sc)
    # Stop once midway to check the KV pools and the recorder while requests are in flight.
    mid = float(sc["arrival"][len(sc["arrival"]) // 2])
    if sc["until"] is None or mid <= sc["until"]:
        sim.step_to(mid)
        sim.check_invariants()
    res = sim.run(until_s=sc["until"])
    sim.check_invariants()
    rec, s = res.recorder, res.summary
    n = len(sc["arrival"])
    assert s["requests"] == n
    assert s["completed"] + s["rejected"] + s["in_flight"] == n
    assert s["completed"] == int((rec.status == 1).sum())
    assert s["rejected"] == int((rec.status == 2).sum())
    assert sum(s["rejected_reasons"].values()) == s["rejected"]
    assert set(np.unique(rec.status)) <= {0, 1, 2}
    for rid in np.flatnonzero(rec.status == 2):
        assert rec.reject_reason(int(rid))
    for rid in np.flatnonzero(rec.status != 2):
        assert rec.reject_reason(int(rid)) is None

    done = rec.status == 1
    a, sch, ft, fin = rec.arrival_s, rec.first_scheduled_s, rec.first_token_s, rec.finish_s
    assert np.all(np.isfinite(sch[done]) & np.isfinite(ft[done]) & np.isfinite(fin[done]))
    assert np.all(sch[done] >= a[done] - 1e-9)
    assert np.all(ft[done] >= sch[done] - 1e-9)
    assert np.all(fin[done] >= ft[done] - 1e-9)
    assert np.all(rec.generated_tokens[done] == rec.output_tokens[done])
    started = np.isfinite(ft)
    assert np.all(ft[started] >= a[started] - 1e-9)
    # Rejections are for the documented reasons, and only when the request could never fit.
    frame = rec.frame()
    for _, row in frame[frame.status == "rejected"].iterrows():
        assert row.reject_reason in ("exceeds_max_model_len", "exceeds_kv_capacity")

    if sc["until"] is None:
        # Run to the end: nothing is left in flight and every switch has happened.
        assert s["in_flight"] == 0
        assert len(res.switches) == len(sc["switches"])
    else:
        later = a > sc["until"]
        assert np.all(rec.status[later] == 0)
        assert np.all(rec.replica[later] == -1)
        assert np.all(np.isnan(sch[later]))
        assert len(res.switches) == sum(t <= sc["until"] for t, _ in sc["switches"])
        assert s["sim_time_s"] == pytest.approx(sc["until"] - a[0])
    assert s["deployment"] == res.timeline[-1][1]
    assert [t for t, _ in res.timeline] == sorted(t for t, _ in res.timeline)
    for sw in res.switches:
        assert sw.ready_s >= sw.start_s
        assert sw.migrated_requests + sw.requeued_requests >= 0
        if not sc["migrate"]:
            assert sw.migrated_requests == sw.requeued_requests == 0


@PROP
@given(scenarios())
def test_identical_inputs_give_identical_results(sc):
    r1 = _build(sc).run(until_s=sc["until"])
    r2 = _build(sc).run(until_s=sc["until"])
    assert _same(_sim_summary(r1.summary), _sim_summary(r2.summary))
    pd.testing.assert_frame_equal(r1.recorder.frame(), r2.recorder.frame())
    assert [vars(w) for w in r1.switches] == [vars(w) for w in r2.switches]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_fast_and_exact_agree_request_by_request(sc):
    fast = _build(sc, "fast").run(until_s=sc["until"])
    exact = _build(sc, "exact").run(until_s=sc["until"])
    rf, re_ = fast.recorder, exact.recorder
    np.testing.assert_array_equal(rf.status, re_.status)
    np.testing.assert_array_equal(rf.replica, re_.replica)
    for name in ("first_scheduled_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(getattr(rf, name), getattr(re_, name), rtol=1e-6, atol=1e-6, equal_nan=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_switches_never_drop_requests(data):
    """Every request moved off a leaving replica (migrated with KV or re-queued) still ends accounted for."""
    sc = data.draw(scenarios())
    sc = {**sc, "until": None, "migrate": True, "as_trace": True}
    n = len(sc["arrival"])
    # Switch while requests are surely running: right after an arrival, between deployments that share little.
    at = float(sc["arrival"][data.draw(st.integers(0, n - 1))]) + data.draw(st.floats(0.0, 0.5))
    sc["spec"], other = data.draw(st.sampled_from([("8xTP1", "2xTP4"), ("2xTP4", "8xTP1"), ("4xTP2", "1xTP8"),
                                                   ("1xTP8", "4xTP2")]))
    sc["switches"] = [(at, other), *sc["switches"]]
    sim = _build(sc)
    res = sim.run()
    sim.check_invariants()
    s = res.summary
    assert s["in_flight"] == 0
    assert s["completed"] + s["rejected"] == n
    moved = sum(w.migrated_requests + w.requeued_requests for w in res.switches)
    assert moved <= n * len(res.switches)
    assert len(res.switches) == len(sc["switches"])


def test_switch_moves_running_requests_and_they_complete():
    """A migrate-mode switch with requests in flight moves them, and each finishes with all its tokens."""
    dep = parse_deployment("8xTP1", "a100x8", "llama-2-7b")
    n = 40
    rec = RequestRecorder(np.linspace(0.0, 1.0, n), [1500] * n, [300] * n)
    sim = ClusterSimulator(dep, rec, switch_costs=SwitchCosts(migrate_min_kv_tokens=1024), progress=False)
    sim.schedule_switch(2.0, "2xTP4")
    res = sim.run()
    sim.check_invariants()
    (sw,) = res.switches
    assert sw.migrated_requests + sw.requeued_requests > 0
    assert sw.old_spec != sw.new_spec and res.summary["deployment"] == sw.new_spec
    assert res.summary["completed"] == n
    assert np.all(rec.generated_tokens == rec.output_tokens)
    assert res.summary["switch_downtime_s"] == pytest.approx(sw.downtime_s)


def test_least_work_router_sees_current_work():
    """A replica that finished its work long ago is idle now, even if it had more work earlier."""
    dep = parse_deployment("2xTP4", "a100x8", "llama-2-7b")
    # r0 gets a long prompt that finishes in well under a second; r1 a long decode still running at t=5.
    rec = RequestRecorder([0.0, 0.0, 5.0], [3000, 10, 100], [2, 1000, 10])
    ClusterSimulator(dep, rec, router="least_work", progress=False).run()
    assert rec.finish_s[0] < 5.0 < rec.finish_s[1]
    assert rec.replica.tolist() == [0, 1, 0]


def test_round_robin_cycles_over_replicas():
    dep = parse_deployment("4xTP2", "a100x8", "llama-2-7b")
    rec = RequestRecorder(np.arange(8.0), [100] * 8, [10] * 8)
    ClusterSimulator(dep, rec, router="round_robin", progress=False).run()
    assert rec.replica.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


# ------------------------------------------------- fast vs exact, bundled traces
def _pool_trace():
    return load_trace("sharegpt", arrival="poisson:8", n=800, seed=3)


FAST_EXACT_CASES = [
    ("azure-conv", lambda: load_trace("azure-conv").head(1500), "a100x8", "llama-2-7b", "8xTP1"),
    ("azure-code", lambda: load_trace("azure-code").head(1200), "a100x8", "llama-2-7b", "4xTP2"),
    ("mooncake-synthetic", lambda: load_trace("mooncake-synthetic").head(300), "h100x8", "llama-3.1-8b", "8xTP1"),
    ("sharegpt-poisson", _pool_trace, "a100x8", "llama-2-7b", "2xTP2+4xTP1"),
    ("servegen:m-large", lambda: load_trace("servegen:m-large", target_rps=5, duration_s=200, seed=0).rebase(),
     "h100x8", "llama-3-8b", "8xTP1"),
]


@pytest.mark.parametrize("label,make,cluster,model,spec", FAST_EXACT_CASES, ids=[c[0] for c in FAST_EXACT_CASES])
def test_fast_matches_exact_on_bundled_traces(label, make, cluster, model, spec):
    trace = make()
    dep = parse_deployment(spec, cluster, model)
    fast = ClusterSimulator(dep, trace, mode="fast", progress=False).run().summary
    exact = ClusterSimulator(dep, trace, mode="exact", progress=False).run().summary
    assert fast["requests"] == len(trace) >= 100
    for k in ("requests", "completed", "rejected", "in_flight", "rejected_reasons"):
        assert fast[k] == exact[k], k
    assert fast["completed"] > 0.5 * len(trace)
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        for q in ("p50", "p90", "p99"):
            assert fast[metric][q] == pytest.approx(exact[metric][q], rel=0.01), (metric, q)


# ------------------------------------------------------------------ CLI
BASE = ["simulate", "--cluster", "a100x8", "--model", "llama-2-7b", "--deployment", "4xTP2"]


def test_cli_json_file_has_the_summary_keys(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main([*BASE, "--trace", "azure-conv", "--num-requests", "200", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    for k in ("requests", "completed", "rejected", "in_flight", "throughput_rps", "throughput_tok_s",
              "sim_time_s", "wall_s", "cpu_s"):
        assert k in s, k
    for k in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(s[k]) >= {"p50", "p90", "p99", "mean"}
    assert s["requests"] == 200 == s["completed"] + s["rejected"] + s["in_flight"]
    assert "requests 200" in capsys.readouterr().out  # the human table still prints


def test_cli_json_to_stdout_is_pure_json(capsys):
    assert main([*BASE, "--trace", "azure-code", "--num-requests", "100", "--json", "-"]) == 0
    captured = capsys.readouterr()
    s = json.loads(captured.out)
    assert s["requests"] == 100


def test_cli_out_writes_parquet_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*BASE, "--trace", "azure-conv", "--num-requests", "150", "--out", str(out)]) == 0
    frame = pd.read_parquet(out / "requests.parquet")
    assert len(frame) == 150 and {"request_id", "status", "ttft_s", "e2e_s"} <= set(frame.columns)
    s = json.loads((out / "summary.json").read_text())
    assert s["requests"] == 150
    assert s["completed"] == int((frame.status == "completed").sum())


def test_cli_switch(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main([*BASE, "--trace", "azure-conv", "--num-requests", "300", "--switch", "20:2xTP4",
                 "--switch", "60:8xTP1", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["switches"] == 2
    assert s["deployment"].startswith("8xTP1")
    assert s["in_flight"] == 0 and s["completed"] + s["rejected"] == 300


def test_cli_duration_leaves_requests_in_flight_or_done(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main([*BASE, "--trace", "azure-conv", "--duration", "30", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["sim_time_s"] == pytest.approx(30.0)
    assert s["completed"] + s["rejected"] + s["in_flight"] == s["requests"] > 0


# ------------------------------------------------------------ bad input
def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _csv(tmp_path: Path, rows: list[str], header: str = "TIMESTAMP,ContextTokens,GeneratedTokens") -> str:
    p = tmp_path / "trace.csv"
    p.write_text("\n".join([header, *rows]) + "\n")
    return str(p)


GOOD_ROWS = ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:50.9951690,396,109",
             "2023-11-16 18:15:51.0000000,120,20"]


def test_unknown_trace_name_suggests(capsys):
    line = _error(capsys, [*BASE, "--trace", "azure-cnv"])
    assert "azure-cnv" in line and "azure-conv" in line


def test_deployment_exceeding_cluster(capsys):
    line = _error(capsys, [*BASE[:-1], "16xTP1", "--trace", "azure-conv"])
    assert "16xTP1" in line and "a100x8" in line and "8 GPUs" in line


def test_replica_that_does_not_fit_in_memory(capsys):
    line = _error(capsys, ["simulate", "--cluster", "a100x8", "--model", "llama-2-70b", "--deployment", "1xTP1",
                           "--trace", "azure-conv"])
    assert "llama-2-70b" in line and "TP1" in line and "fit" in line


def test_malformed_deployment_spec(capsys):
    line = _error(capsys, [*BASE[:-1], "4xTQ2", "--trace", "azure-conv"])
    assert "4xTQ2" in line and "grammar" in line


def test_trace_missing_column(tmp_path, capsys):
    path = _csv(tmp_path, ["2023-11-16 18:15:46.6805900,374"], header="TIMESTAMP,ContextTokens")
    line = _error(capsys, [*BASE, "--trace", path])
    assert "trace.csv" in line and "GeneratedTokens" in line


def test_trace_negative_tokens(tmp_path, capsys):
    path = _csv(tmp_path, [GOOD_ROWS[0], "2023-11-16 18:15:50.9951690,-5,109", GOOD_ROWS[2]])
    line = _error(capsys, [*BASE, "--trace", path])
    assert "trace.csv" in line and "ContextTokens" in line and "row 2" in line


def test_trace_non_monotone_timestamps_and_sort(tmp_path, capsys):
    path = _csv(tmp_path, [GOOD_ROWS[1], GOOD_ROWS[0], GOOD_ROWS[2]])
    line = _error(capsys, [*BASE, "--trace", path])
    assert "trace.csv" in line and "row 2" in line and "TIMESTAMP" in line and "sort" in line
    out = tmp_path / "s.json"
    assert main([*BASE, "--trace", path, "--sort", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "sort" in err
    assert json.loads(out.read_text())["requests"] == 3


def test_empty_trace_file(tmp_path, capsys):
    p = tmp_path / "empty.csv"
    p.write_text("")
    line = _error(capsys, [*BASE, "--trace", str(p)])
    assert "empty.csv" in line and "empty" in line
    header_only = _csv(tmp_path, [])
    line = _error(capsys, [*BASE, "--trace", header_only])
    assert "trace.csv" in line and "empty" in line
