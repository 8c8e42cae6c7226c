"""Fast tests of oserve_rl.live's pure parts: config, specs, metrics parsing, diffing, replay parsing.

The features themselves (servers, router, switches, chaos) are proven against real
vLLM in tests/integration/test_live_vllm.py; fakes here only feed parsers.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from oserve_rl.errors import ConfigError
from oserve_rl.live.backend import (
    LiveClusterError,
    ProcessBackend,
    Replica,
    ReplicaSpec,
    cpu_binding,
    group_alive,
    load_live_config,
    terminate_group,
)
from oserve_rl.live.metrics import parse_metrics, scrape
from oserve_rl.live.plan import BREAK_BEFORE_MAKE, MAKE_BEFORE_BREAK, choose_order, diff_deployment
from oserve_rl.live.replay import (
    ReplayRequest,
    ReplayResult,
    RequestRecord,
    poisson_requests,
    recovery_time_s,
    requests_from_trace,
    run_replay,
)
from oserve_rl.live.router import RouterClient, WeightedDispatcher
from oserve_rl.workload import Trace

REPO = Path(__file__).resolve().parents[1]
CPU_TINY = REPO / "configs" / "live" / "cpu-tiny.yaml"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- config and specs
def test_shipped_cpu_config_validates():
    cfg = load_live_config(CPU_TINY, base_dir=REPO, model="/tmp/some-model")
    assert cfg.device == "cpu" and cfg.model == "/tmp/some-model"
    assert cfg.python.endswith(".venv-vllm/bin/python")
    assert "--enforce-eager" in cfg.server_args


def test_config_rejects_unknown_key_naming_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: m\nmax_replica: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*max_replica: unknown key"):
        load_live_config(p)


def test_config_rejects_router_port_inside_replica_range(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: m\nports: [8000, 8100]\nrouter_port: 8050\n")
    with pytest.raises(ConfigError, match="router_port 8050"):
        load_live_config(p)
    p.write_text("model: m\nports: [9000, 8000]\n")
    with pytest.raises(ConfigError, match="ports"):
        load_live_config(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_live_config(tmp_path / "nope.yaml")


def test_replica_spec_validates_and_compares_by_value():
    assert ReplicaSpec(tp=2, devices=[0, 1]) == ReplicaSpec(tp=2, devices=(0, 1))
    assert ReplicaSpec(tp=1, label="A") != ReplicaSpec(tp=1, label="B")
    with pytest.raises(ConfigError, match="tp"):
        ReplicaSpec(tp=0)
    with pytest.raises(ConfigError, match="duplicates"):
        ReplicaSpec(tp=2, devices=(1, 1))


def test_cpu_binding_maps_ranks_to_core_groups():
    assert cpu_binding(ReplicaSpec(tp=1), [0, 1]) is None  # vLLM's auto binding
    assert cpu_binding(ReplicaSpec(tp=2), [0, 1]) == "0|1"
    assert cpu_binding(ReplicaSpec(tp=2, pp=2), [0, 1, 2, 3]) == "0|1|2|3"
    assert cpu_binding(ReplicaSpec(tp=2, devices=(0, 1, 2, 3)), [0]) == "0,1|2,3"
    assert cpu_binding(ReplicaSpec(tp=1, devices=(3,)), [0]) == "3"
    with pytest.raises(ConfigError, match="split evenly"):
        cpu_binding(ReplicaSpec(tp=2, devices=(0, 1, 2)), [0, 1, 2])
    with pytest.raises(ConfigError, match="need >= 4"):
        cpu_binding(ReplicaSpec(tp=4), [0, 1])


def _backend(tmp_path, **over):
    cfg = load_live_config(CPU_TINY, base_dir=REPO, model="/m", python=sys.executable, **over)
    return ProcessBackend(cfg, tmp_path)


def test_process_backend_command_and_environment(tmp_path):
    be = _backend(tmp_path)
    cmd = be.command(ReplicaSpec(tp=2, pp=2, extra_args=("--max-num-seqs=8",)), 8031)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--port") + 1] == "8031"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--pipeline-parallel-size") + 1] == "2"
    assert cmd[-1] == "--max-num-seqs=8"
    env = be.environment(ReplicaSpec(tp=2, devices=(0, 1)))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    # One rank: vLLM's own binding (whatever the caller's environment says).
    key = "VLLM_CPU_OMP_THREADS_BIND"
    assert be.environment(ReplicaSpec(tp=1)).get(key) == os.environ.get(key)
    gpu = _backend(tmp_path, device="gpu")
    assert gpu.environment(ReplicaSpec(tp=2, devices=(2, 3)))["CUDA_VISIBLE_DEVICES"] == "2,3"
    with pytest.raises(ConfigError, match="device ids"):
        gpu.environment(ReplicaSpec(tp=2, devices=(2,)))
    assert not gpu.fits([ReplicaSpec(devices=(0,)), ReplicaSpec(devices=(0,))])
    assert gpu.fits([ReplicaSpec(devices=(0,)), ReplicaSpec(devices=(1,))])
    assert be.fits([ReplicaSpec()] * 3) and not be.fits([ReplicaSpec()] * 4)


def test_process_backend_needs_the_vllm_python(tmp_path):
    cfg = load_live_config(CPU_TINY, model="/m", python=str(tmp_path / "no-python"))
    with pytest.raises(ConfigError, match="setup_live.sh"):
        ProcessBackend(cfg, tmp_path)


def test_process_backend_refuses_a_missing_model_folder_before_spawning(tmp_path):
    """A replica of a model folder that is not there would die in its own log; the start refuses it first."""
    from oserve_rl.live.backend import model_folder_problem

    be = _backend(tmp_path / "run")  # model="/m": absolute, missing
    with pytest.raises(ConfigError, match=r"live model '/m': folder /m does not exist; .*tiny_model.py"):
        be.start(ReplicaSpec())
    assert not list((tmp_path / "run").glob("*.log"))  # nothing was spawned
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in model_folder_problem(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert model_folder_problem(str(tmp_path / "empty")) is None
    assert model_folder_problem("meta-llama/Llama-3.1-8B") is None  # a hub id: vLLM's to resolve


# ----------------------------------------------------------------------------- process groups (real processes)
def test_terminate_group_sigterm_then_sigkill():
    p = subprocess.Popen(["sleep", "30"], start_new_session=True)
    sig, _ = terminate_group(p.pid, p, grace_s=5.0)
    assert sig == "SIGTERM" and not group_alive(p.pid)
    stubborn = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"], start_new_session=True
    )
    time.sleep(0.2)  # let bash install its trap
    t = time.monotonic()
    sig, rc = terminate_group(stubborn.pid, stubborn, grace_s=0.5)
    assert sig == "SIGKILL" and rc == -signal.SIGKILL
    assert not group_alive(stubborn.pid) and time.monotonic() - t < 10


# ----------------------------------------------------------------------------- metrics parsing
NEW_METRICS = textwrap.dedent("""\
    # TYPE vllm:num_requests_running gauge
    vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
    vllm:num_requests_running{engine="1",model_name="tiny"} 1.0
    # TYPE vllm:num_requests_waiting gauge
    vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0
    vllm:num_requests_waiting{engine="1",model_name="tiny"} 0.0
    # TYPE vllm:kv_cache_usage_perc gauge
    vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 1.0
    vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.5
    # TYPE vllm:num_preemptions counter
    vllm:num_preemptions_total{engine="0",model_name="tiny"} 3.0
    vllm:num_preemptions_total{engine="1",model_name="tiny"} 1.0
    # TYPE vllm:request_success counter
    vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 10.0
    vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 2.0
    # TYPE vllm:time_to_first_token_seconds histogram
    vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 12.0
    vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 12.0
    vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 6.0
    """)

OLD_METRICS = textwrap.dedent("""\
    vllm:num_requests_running{model_name="m"} 1.0
    vllm:num_requests_waiting{model_name="m"} 0.0
    vllm:gpu_cache_usage_perc{model_name="m"} 0.25
    vllm:num_preemptions_total{model_name="m"} 0.0
    """)


def test_parse_metrics_sums_engines_and_averages_kv_usage():
    m = parse_metrics(NEW_METRICS)
    assert (m.running, m.waiting, m.in_flight) == (3.0, 4.0, 7.0)
    assert m.kv_cache_usage == pytest.approx(0.75)
    assert m.preemptions_total == 4.0
    assert m.requests_success_total == 12.0
    assert m.mean_ttft_s == pytest.approx(0.5)
    assert math.isnan(m.generation_tokens_total)  # absent, not 0


def test_parse_metrics_accepts_old_names():
    m = parse_metrics(OLD_METRICS)
    assert (m.running, m.waiting, m.kv_cache_usage) == (1.0, 0.0, 0.25)


def test_parse_metrics_rejects_garbage():
    with pytest.raises(LiveClusterError, match="Prometheus"):
        parse_metrics("vllm:num_requests_running{engine=} nope nope\n")


def test_unreachable_endpoints_raise_one_error_naming_the_url():
    port = closed_port()
    with pytest.raises(LiveClusterError, match=f"127.0.0.1:{port}/metrics"):
        scrape(f"http://127.0.0.1:{port}", timeout_s=1)
    with pytest.raises(LiveClusterError, match=f"router at http://127.0.0.1:{port}/list_workers unreachable"):
        RouterClient(f"http://127.0.0.1:{port}", timeout_s=1).list_workers()
    with pytest.raises(LiveClusterError, match=f"replay target http://127.0.0.1:{port} unreachable"):
        run_replay([ReplayRequest(0, 0.0, "x", 1)], f"http://127.0.0.1:{port}", model="m")


# ----------------------------------------------------------------------------- diffing
def _rep(i: int, spec: ReplicaSpec) -> Replica:
    return Replica(replica_id=f"r{i}", spec=spec, url=f"http://h:{8000 + i}", port=8000 + i)


def test_diff_keeps_matching_specs_as_a_multiset():
    a, b, c = ReplicaSpec(tp=1), ReplicaSpec(tp=2), ReplicaSpec(tp=1, label="c")
    running = [_rep(0, a), _rep(1, a), _rep(2, b)]
    d = diff_deployment(running, [a, c, a])
    assert [r.replica_id for r in d.keep] == ["r0", "r1"]
    assert d.start == (c,)
    assert [r.replica_id for r in d.stop] == ["r2"]
    assert not d.is_noop
    assert diff_deployment(running, [b, a, a]).is_noop
    d2 = diff_deployment(running, [a])
    assert [r.replica_id for r in d2.stop] == ["r1", "r2"] and not d2.start
    d3 = diff_deployment([], [a, a])
    assert d3.start == (a, a) and not d3.keep
    with pytest.raises(ConfigError, match="ReplicaSpec"):
        diff_deployment(running, ["TP1"])  # type: ignore[list-item]


def test_choose_order_depends_on_whether_old_and_new_fit_together():
    a, b = ReplicaSpec(tp=1), ReplicaSpec(tp=2)
    d = diff_deployment([_rep(0, a), _rep(1, a)], [a, b])
    assert choose_order(d, lambda specs: len(specs) <= 3) == MAKE_BEFORE_BREAK
    assert choose_order(d, lambda specs: len(specs) <= 2) == BREAK_BEFORE_MAKE


# ----------------------------------------------------------------------------- dispatcher choice
def test_dispatcher_draws_workers_by_per_type_weight():
    d = WeightedDispatcher(seed=1)
    for u in ("u1", "u2", "u3"):
        d.add_worker(u)
    d.set_weights({0: {"u1": 1.0}, 1: {"u1": 1.0, "u2": 3.0}})
    assert {d.choose(0) for _ in range(50)} == {"u1"}
    picks = [d.choose(1) for _ in range(4000)]
    assert set(picks) == {"u1", "u2"}
    assert picks.count("u2") / len(picks) == pytest.approx(0.75, abs=0.03)
    assert {d.choose(2) for _ in range(200)} == {"u1", "u2", "u3"}  # no weights: uniform
    assert d.choose(0, exclude=["u1"]) in {"u2", "u3"}  # weighted worker gone: fall back
    d.remove_worker("u1")
    assert d.choose(0) in {"u2", "u3"} and d.list_workers() == ["u2", "u3"]
    with pytest.raises(ConfigError, match="weight"):
        d.set_weights({0: {"u2": -1.0}})


# ----------------------------------------------------------------------------- replay sources and records
def test_requests_from_trace_clips_and_scales_time():
    trace = Trace(np.array([10.0, 12.0, 20.0]), np.array([5, 900, 40]), np.array([3, 700, 1]), "t", "test")
    reqs = requests_from_trace(trace, rate_scale=2.0, max_prompt_tokens=64, max_output_tokens=16,
                               types=np.array([0, 2, 1]))
    assert [r.send_at_s for r in reqs] == [0.0, 1.0, 5.0]
    assert [r.max_tokens for r in reqs] == [3, 16, 1]
    assert [len(r.prompt.split()) for r in reqs] == [5, 64, 40]
    assert [r.request_type for r in reqs] == [0, 2, 1]
    with pytest.raises(ConfigError, match="types"):
        requests_from_trace(trace, types=np.array([0]))
    with pytest.raises(ConfigError, match="rate_scale"):
        requests_from_trace(trace, rate_scale=0)


def test_poisson_requests_are_seeded_and_increasing():
    take = lambda seed: [next(g) for g in [poisson_requests(5.0, seed=seed)] for _ in range(50)]  # noqa: E731
    a, b = take(0), take(0)
    assert a == b and a != take(1)
    times = [r.send_at_s for r in a]
    assert all(t1 > t0 for t0, t1 in zip(times, times[1:]))


def test_recovery_time_counts_until_the_last_disturbed_request():
    def rec(i, start, end, attempts=1, ok=True):
        return RequestRecord(i, 0, start, start_s=start, first_token_s=start + 0.1, end_s=end, ok=ok, attempts=attempts)

    t0 = 100.0
    clean = ReplayResult([rec(0, 0, 1), rec(1, 5, 6)], t0, "u")
    assert recovery_time_s(clean, t0 + 3) == 0.0
    records = [rec(0, 0, 1), rec(1, 2, 7, attempts=2), rec(2, 4, 5.5, attempts=3), rec(3, 8, 9)]
    disturbed = ReplayResult(records, t0, "u")
    assert recovery_time_s(disturbed, t0 + 3) == pytest.approx(4.0)
    lost = ReplayResult([rec(0, 2, 7, attempts=8, ok=False)], t0, "u")
    assert math.isnan(recovery_time_s(lost, t0 + 3))


# ----------------------------------------------------------------------------- stream parsing against a fake SSE server
def _sse(*chunks: str) -> bytes:
    return "".join(f"data: {c}\n\n" for c in chunks).encode()


def test_replay_retries_aborted_and_cut_streams_and_not_bad_requests():
    from aiohttp import web
    import asyncio
    import threading

    calls: dict[str, int] = {}
    ok_stream = _sse(
        '{"choices":[{"text":"a","finish_reason":null}]}',
        '{"choices":[{"text":"b","finish_reason":"length"}]}',
        '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
        "[DONE]",
    )

    async def completions(request):
        body = await request.json()
        n = calls[body["prompt"]] = calls.get(body["prompt"], 0) + 1
        if body["prompt"] == "bad":
            return web.Response(status=400, text="bad request")
        if body["prompt"] == "abort" and n == 1:  # what a draining vLLM answers
            return web.Response(body=_sse('{"choices":[{"text":"","finish_reason":"abort"}]}',
                                          '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":0}}', "[DONE]"),
                                content_type="text/event-stream")
        if body["prompt"] == "cut" and n == 1:  # replica killed mid-stream: no [DONE]
            return web.Response(body=_sse('{"choices":[{"text":"a","finish_reason":null}]}'),
                                content_type="text/event-stream")
        if body["prompt"] == "error" and n == 1:
            return web.Response(body=_sse('{"error":{"message":"engine dead"}}'), content_type="text/event-stream")
        if body["prompt"] == "busy" and n == 1:
            return web.Response(status=503, text="No available workers")
        return web.Response(body=ok_stream, content_type="text/event-stream")

    async def models(request):
        return web.json_response({"data": [{"id": "m"}]})

    port = closed_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve():
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        return runner

    th = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    th.start()
    ready.wait(5)
    try:
        prompts = ["ok", "abort", "cut", "error", "busy", "bad"]
        reqs = [ReplayRequest(i, 0.0, p, 2) for i, p in enumerate(prompts)]
        res = run_replay(reqs, f"http://127.0.0.1:{port}", model="m", backoff_s=0.01)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        th.join(5)
    by = {prompts[r.request_id]: r for r in res.records}
    for p in ("ok", "abort", "cut", "error", "busy"):
        assert by[p].ok and by[p].output_tokens == 2 and by[p].finish_reason == "length", (p, by[p])
    assert by["ok"].attempts == 1
    assert all(by[p].attempts == 2 for p in ("abort", "cut", "error", "busy"))
    assert not by["bad"].ok and by["bad"].attempts == 1 and "HTTP 400" in by["bad"].error
    s = res.summary()
    assert (s["requests"], s["ok"], s["failed"], s["retried"]) == (6, 5, 1, 4)
