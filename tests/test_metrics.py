"""Request metrics and the recorder: definitions, counts, SLOs, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oserve_rl.errors import ConfigError, TraceError
from oserve_rl.sim.metrics import per_request, percentiles, summary, write
from oserve_rl.sim.requests import STATUS_COMPLETED, RequestRecorder


def finished_recorder() -> RequestRecorder:
    """Four requests: three completed with known times, one rejected."""
    rec = RequestRecorder([0.0, 1.0, 2.0, 3.0], [100, 200, 300, 5000], [1, 11, 21, 10])
    for rid, (sched, first, fin) in enumerate([(0.5, 1.0, 1.0), (1.0, 2.0, 3.0), (4.0, 5.0, 7.0)]):
        rec.first_scheduled_s[rid] = sched
        rec.first_token_s[rid] = first
        rec.finish_s[rid] = fin
        rec.status[rid] = STATUS_COMPLETED
        rec.generated_tokens[rid] = rec.output_tokens[rid]
    rec.preemptions[2] = 2
    rec.cached_tokens[1] = 64
    rec.reject(3, "exceeds_max_model_len", now_s=3.0)
    return rec


def test_per_request_definitions():
    m = per_request(finished_recorder())
    np.testing.assert_allclose(m["ttft_s"][:3], [1.0, 1.0, 3.0])
    np.testing.assert_allclose(m["e2e_s"][:3], [1.0, 2.0, 5.0])
    np.testing.assert_allclose(m["queue_s"][:3], [0.5, 0.0, 2.0])
    assert math.isnan(m["tpot_s"][0])  # a 1-token output has no TPOT
    np.testing.assert_allclose(m["tpot_s"][1:3], [0.1, 0.1])
    assert np.isnan(m["e2e_s"][3]) and np.isnan(m["ttft_s"][3])


def test_summary_counts_latencies_and_throughput():
    rec = finished_recorder()
    s = summary(rec)
    assert (s["requests"], s["completed"], s["rejected"], s["in_flight"]) == (4, 3, 1, 0)
    assert s["rejected_reasons"] == {"exceeds_max_model_len": 1}
    assert s["e2e_s"]["mean"] == pytest.approx(8 / 3)
    assert s["e2e_s"]["p50"] == pytest.approx(2.0)
    assert s["tpot_s"]["p50"] == pytest.approx(0.1)
    assert s["duration_s"] == pytest.approx(7.0)  # first arrival to last finish
    assert s["throughput_rps"] == pytest.approx(3 / 7)
    assert s["throughput_tok_s"] == pytest.approx(33 / 7)
    assert (s["preemptions_total"], s["preempted_requests"], s["cached_tokens_total"]) == (2, 1, 64)


def test_slo_attainment_counts_rejections_as_misses():
    rec = finished_recorder()
    s = summary(rec, slo_ttft_s=1.5, slo_tpot_s=0.2)
    # requests 0 and 1 meet both; 2 misses TTFT; 3 was rejected
    assert s["slo"]["attainment"] == pytest.approx(2 / 4)
    assert s["slo"]["goodput_rps"] == pytest.approx(2 / 7)
    assert summary(rec, slo_tpot_s=0.05)["slo"]["attainment"] == pytest.approx(1 / 4)  # only the 1-token one
    assert summary(rec)["slo"]["attainment"] == pytest.approx(3 / 4)


def test_slo_scale_is_quantile_of_e2e_over_standalone():
    rec = finished_recorder()
    standalone = np.array([1.0, 1.0, 1.0, 1.0])
    s = summary(rec, standalone_s=standalone)
    assert s["slo_scale_p95"] == pytest.approx(5.0) and s["slo_scale_p99"] == pytest.approx(5.0)
    s = summary(rec, standalone_s=np.array([1.0, 2.0, 5.0, 1.0]))
    assert s["slo_scale_p95"] == pytest.approx(1.0)


def test_slo_scale_of_a_lone_request_is_one():
    from oserve_rl.perf import EngineConfig, replica_perf
    from oserve_rl.sim.engine import ReplicaEngine

    perf = replica_perf("llama-2-70b", "a100-80gb", tp=2)
    rec = RequestRecorder([0.0, 100.0], [1500, 300], [200, 40])
    eng = ReplicaEngine(perf, EngineConfig(), mode="fast", recorder=rec)
    for rid in range(2):
        eng.add_request(rid, float(rec.arrival_s[rid]))
    eng.advance_to(math.inf)
    s = summary(rec, perf=perf)
    assert s["slo_scale_p95"] == pytest.approx(1.0, rel=1e-9)


def test_cost_and_gpu_hours():
    s = summary(finished_recorder(), gpu_hours=8.0, cost_per_gpu_hour=2.5)
    assert s["gpu_hours"] == 8.0 and s["cost_usd"] == 20.0
    assert s["cost_usd_per_1k_requests"] == pytest.approx(20.0 * 1000 / 3)


def test_empty_and_unfinished():
    rec = RequestRecorder([0.0, 1.0], [10, 10], [5, 5])
    s = summary(rec)
    assert (s["completed"], s["in_flight"]) == (0, 2)
    assert s["ttft_s"] == {"p50": None, "p90": None, "p99": None, "mean": None}
    assert s["throughput_rps"] is None
    assert percentiles(np.array([np.nan]))["mean"] is None


def test_write_files(tmp_path):
    rec = finished_recorder()
    res = write(rec, tmp_path / "run", slo_ttft_s=1.5)
    frame = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert len(frame) == 4
    assert frame["status"].tolist() == ["completed", "completed", "completed", "rejected"]
    assert frame["reject_reason"].tolist() == ["", "", "", "exceeds_max_model_len"]
    with open(tmp_path / "run" / "summary.json") as fh:
        loaded = json.load(fh)
    assert loaded == res
    for key in ("requests", "completed", "rejected", "in_flight", "ttft_s", "tpot_s", "e2e_s", "throughput_rps",
                "throughput_tok_s", "slo"):
        assert key in loaded


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ConfigError, match="slo_ttft_s"):
        summary(finished_recorder(), slo_ttft_s=-1.0)
    with pytest.raises(ConfigError, match="standalone_s"):
        summary(finished_recorder(), standalone_s=np.ones(3))
    with pytest.raises(TraceError, match="request 1: output_tokens"):
        RequestRecorder([0.0, 1.0], [10, 10], [5, 0])
    with pytest.raises(TraceError, match="equally long"):
        RequestRecorder([0.0, 1.0], [10], [5, 5])
    with pytest.raises(TraceError, match="prefix_block_tokens"):
        RequestRecorder([0.0], [10], [5], [np.array([1], dtype=np.uint64)])


def test_recorder_from_trace_and_invariants():
    from oserve_rl.workload.trace import Trace

    tr = Trace(np.array([0.0, 0.5]), np.array([600, 10]), np.array([3, 4]), name="t", source="test",
               prefix_hashes=[np.array([7, 8], dtype=np.uint64), np.array([9], dtype=np.uint64)],
               prefix_block_tokens=512)
    rec = RequestRecorder.from_trace(tr)
    assert rec.n == 2 and rec.prefix_block_tokens == 512 and rec.input_list == [600, 10]
    rec.check_invariants()
    rec.status[0] = STATUS_COMPLETED  # completed without timestamps
    with pytest.raises(AssertionError, match="missing timestamp"):
        rec.check_invariants()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 1e4, allow_nan=False)), max_size=300))
def test_grouped_p99_is_numpys_percentile_bit_for_bit(rows):
    from oserve_rl.sim.metrics import grouped_p99

    groups = np.array([g for g, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows], dtype=float)
    got = grouped_p99(values, groups, 6)
    for g in range(6):
        mine = values[groups == g]
        want = np.percentile(mine, 99) if mine.size else np.nan
        assert (np.isnan(got[g]) and np.isnan(want)) or got[g] == want, (g, got[g], want)
