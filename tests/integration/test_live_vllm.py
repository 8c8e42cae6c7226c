"""Live cluster end to end: real vLLM (CPU) replicas of a tiny Llama behind a real vllm-router.

Needs .venv-vllm (scripts/setup_live.sh); skipped with that reason otherwise.
The tests share one cluster (module fixture) and each first applies the
deployment it starts from, so they also pass alone. Figures (phase durations,
recovery time) are printed with a ``LIVE`` prefix (run with ``-s`` to see them);
the assertions are about behaviour only.

    .venv/bin/python -m pytest -q -s -m integration tests/integration/test_live_vllm.py
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import pytest

VLLM_BIN = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin"
_MISSING = not (VLLM_BIN / "python").exists() or not (VLLM_BIN / "vllm-router").exists()

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_MISSING, reason=f"{VLLM_BIN} has no vLLM / vllm-router: run scripts/setup_live.sh"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _specs():
    from oserve_rl.live.backend import ReplicaSpec

    a = ReplicaSpec(tp=1, label="A")
    b = ReplicaSpec(tp=2, label="B")  # TP=2 on 2 cores: manual binding "0|1" (tests function, not speed)
    c = ReplicaSpec(tp=1, label="C", extra_args=("--max-num-seqs=8",))
    return a, b, c


def _wait(cond, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def cluster(live_config, tmp_path_factory):
    from oserve_rl.live.plan import LiveCluster

    run_dir = tmp_path_factory.mktemp("live-run")
    c = LiveCluster.from_config(live_config, run_dir)
    try:
        yield c
    finally:
        c.close()
        leftovers = [r.replica_id for r in c.backend.replicas()]
        assert not leftovers, f"replicas left running: {leftovers}"


def test_one_replica_serves_through_router_and_reports_metrics(cluster):
    from oserve_rl.live.metrics import scrape, scrape_samples
    from oserve_rl.live.replay import ReplayRequest, run_replay

    a, _, _ = _specs()
    report = cluster.apply([a])
    print(f"\nLIVE start A: {report.summary()}")
    (rep,) = cluster.serving()
    assert cluster.router.list_workers() == [rep.url]

    before = scrape(rep.url)
    reqs = [ReplayRequest(i, 0.05 * i, "the model request token data", 4 + i % 5) for i in range(30)]
    result = run_replay(reqs, cluster.router.url, model=cluster.backend.served_model_name, concurrency=8)
    s = result.summary()
    print(f"LIVE one replica: {s}")
    assert s["failed"] == 0 and s["ok"] == 30
    for r in result.records:
        assert r.output_tokens == reqs[r.request_id].max_tokens  # ignore_eos went through the router
        assert 0 <= r.ttft_s <= r.e2e_s

    after = scrape(rep.url)
    assert after.running >= 0 and after.waiting >= 0
    assert 0.0 <= after.kv_cache_usage <= 1.0
    assert after.requests_success_total - before.requests_success_total == 30
    assert after.generation_tokens_total - before.generation_tokens_total == sum(r.max_tokens for r in reqs)
    assert after.ttft_count >= 30 and after.mean_ttft_s > 0
    processed = scrape_samples(cluster.router_process.metrics_url)["vllm_router_processed_requests_total"]
    assert sum(v for labels, v in processed.items() if dict(labels).get("worker") == rep.url) >= 30


@pytest.mark.timeout(900)
def test_switch_under_load_loses_no_request(cluster):
    from oserve_rl.live.metrics import scrape_samples
    from oserve_rl.live.plan import MAKE_BEFORE_BREAK
    from oserve_rl.live.replay import ReplayThread, poisson_requests

    a, b, _ = _specs()
    cluster.apply([a])
    (old,) = cluster.serving()
    old_pgid = old.pgid
    rt = ReplayThread(poisson_requests(4.0, seed=2), cluster.router.url,
                      model=cluster.backend.served_model_name, concurrency=8).start()
    try:
        _wait(lambda: rt.completed() >= 20, 120, "20 requests before the switch")
        report = cluster.apply([b])
        done_at_switch_end = rt.completed()
        _wait(lambda: rt.completed() >= max(200, done_at_switch_end + 20), 300, ">= 200 requests, 20 after the switch")
    finally:
        result = rt.stop_and_join()
    s = result.summary()
    print(f"\nLIVE switch A->B: {report.summary()}")
    for rp in report.replicas:
        print(f"LIVE   {rp.action} {rp.replica_id}: " + ", ".join(f"{k} {v:.2f}s" for k, v in rp.phases_s.items())
              + (f", drained={rp.drained}, {rp.stop_signal}" if rp.action == "stop" else ""))
    print(f"LIVE switch replay: {s}")

    assert report.order == MAKE_BEFORE_BREAK
    assert report.stopped == [old.replica_id] and len(report.started) == 1
    assert s["requests"] >= 200 and s["failed"] == 0, result.failures()[:3]
    (new,) = cluster.serving()
    assert new.spec == b
    assert cluster.router.list_workers() == [new.url]
    assert _group_gone(old_pgid)
    stop_rec = next(r for r in report.replicas if r.action == "stop")
    assert stop_rec.drained is True
    processed = scrape_samples(cluster.router_process.metrics_url)["vllm_router_processed_requests_total"]
    by_worker = {dict(labels).get("worker"): v for labels, v in processed.items()}
    assert by_worker.get(old.url, 0) > 0 and by_worker.get(new.url, 0) > 0  # both served during the replay


@pytest.mark.timeout(900)
def test_weighted_dispatch_follows_per_type_weights(cluster):
    from oserve_rl.live.metrics import scrape
    from oserve_rl.live.replay import ReplayRequest, run_replay
    from oserve_rl.live.router import TYPE_HEADER, WeightedDispatcher

    a, _, c = _specs()
    report = cluster.apply([a, c])
    print(f"\nLIVE to two replicas: {report.summary()}")
    ra = next(r for r in cluster.serving() if r.spec == a)
    rc = next(r for r in cluster.serving() if r.spec == c)
    before = {r.url: scrape(r.url).requests_success_total for r in (ra, rc)}
    with WeightedDispatcher(port=free_port(), seed=0) as d:
        for r in (ra, rc):
            d.add_worker(r.url)
        d.set_weights({0: {ra.url: 1.0}, 1: {rc.url: 1.0}, 2: {ra.url: 1.0, rc.url: 3.0}})
        reqs = [ReplayRequest(i, 0.02 * i, "one two data", 3, request_type=i % 3) for i in range(60)]
        result = run_replay(reqs, d.url, model=cluster.backend.served_model_name, concurrency=6,
                            type_header=TYPE_HEADER)
        dispatched = dict(d.dispatched)
    retried = [(r.request_id, r.attempt_errors) for r in result.records if r.attempts > 1]
    assert result.summary()["failed"] == 0 and not retried, retried
    assert dispatched.get((0, ra.url)) == 20 and (0, rc.url) not in dispatched
    assert dispatched.get((1, rc.url)) == 20 and (1, ra.url) not in dispatched
    assert dispatched.get((2, ra.url), 0) + dispatched.get((2, rc.url), 0) == 20
    after = {r.url: scrape(r.url).requests_success_total for r in (ra, rc)}
    expect_a = 20 + dispatched.get((2, ra.url), 0)
    assert after[ra.url] - before[ra.url] == expect_a
    assert after[rc.url] - before[rc.url] == 60 - expect_a
    print(f"LIVE dispatch: {sorted((k, u[-4:], n) for (k, u), n in dispatched.items())}")


@pytest.mark.timeout(900)
def test_killed_replica_is_removed_and_no_request_is_lost(cluster):
    from oserve_rl.live.plan import replica_in_flight
    from oserve_rl.live.replay import ReplayThread, poisson_requests, recovery_time_s

    a, _, c = _specs()
    cluster.apply([a, c])
    victim = next(r for r in cluster.serving() if r.spec == a)
    survivor = next(r for r in cluster.serving() if r.spec == c)
    n_events = len(cluster.events)
    rt = ReplayThread(poisson_requests(6.0, output_tokens=(16, 48), seed=3), cluster.router.url,
                      model=cluster.backend.served_model_name, concurrency=8).start()
    try:
        _wait(lambda: rt.completed() >= 30, 120, "30 requests before the kill")
        # Kill while the victim holds requests, so some streams are really cut.
        _wait(lambda: replica_in_flight(victim.url) > 0, 30, "requests in flight on the victim", poll_s=0.05)
        kill_t = time.monotonic()
        cluster.backend.kill(victim)
        _wait(lambda: len(cluster.events) > n_events, 60, "the health monitor to remove the killed replica")
        done_at_removal = rt.completed()
        _wait(lambda: rt.completed() >= done_at_removal + 40, 120, "40 requests after the removal")
    finally:
        result = rt.stop_and_join()
    s = result.summary()
    event = cluster.events[-1]
    removed_after_s = event.removed_at - kill_t
    flow_after_s = recovery_time_s(result, kill_t)
    disturbed = sum(1 for r in result.records if r.attempts > 1)
    print(f"\nLIVE chaos replay: {s}")
    print(f"LIVE chaos: removed from router {removed_after_s:.2f}s after SIGKILL ({event.reason}); "
          f"last disturbed request served {flow_after_s:.2f}s after; {disturbed} requests retried")

    assert event.replica_id == victim.replica_id
    assert s["failed"] == 0, result.failures()[:3]
    assert not math.isnan(flow_after_s)
    assert cluster.router.list_workers() == [survivor.url]
    assert [r.replica_id for r in cluster.serving()] == [survivor.replica_id]
    _wait(lambda: _group_gone(victim.pgid), 30, "the killed replica's process group to be reaped")
