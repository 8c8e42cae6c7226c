"""Live controller, fast parts: the shared observation builder against Deploy-v0's own, the arrival book
against the control loop, the sim -> live replica map, configs, metrics helpers, the switch-cost YAML and
the CLI's argument errors. The controller on real vLLM replicas: tests/integration/test_live_controller.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from oserve_rl.catalog import get_cluster  # noqa: E402
from oserve_rl.cluster import load_switch_costs, parse_deployment  # noqa: E402
from oserve_rl.envs.config import make_config  # noqa: E402
from oserve_rl.envs.deploy import DeployEnv  # noqa: E402
from oserve_rl.errors import ConfigError  # noqa: E402
from oserve_rl.live.controller import (  # noqa: E402
    ArrivalBook,
    MetricsArrivals,
    ObsContext,
    ReplicaMap,
    ReplicaMapConfig,
    build_observation,
    build_sim_world,
    e2e_buckets,
    histogram_quantile,
    load_controller_config,
    parse_slice,
)
from oserve_rl.live.metrics import parse_metrics  # noqa: E402
from oserve_rl.policy import Scenario  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "live" / "cpu-tiny-sim.yaml"
SMALL = dict(cluster="h100x8", trace="azure-conv", episode_s=300, num_candidates=4, max_replicas=8, predictor="ewma",
             rate_scale=1.0)


@pytest.fixture(scope="module")
def env():
    return DeployEnv(**SMALL)


def _assert_obs_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------- one observation builder for env and live
@pytest.mark.parametrize("seed, actions", [(0, [1, 2, 0, 3, 1]), (4, [0, 5, 2, 4, 1])])
def test_observation_builder_reproduces_the_envs_on_its_own_states(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    for a in [*actions, None]:
        live_obs, mask = build_observation(env._state, ObsContext.from_env(env))
        _assert_obs_equal(live_obs, obs)
        np.testing.assert_array_equal(mask.astype(bool), env.action_masks())
        if a is None:
            break
        obs, _, term, _, _ = env.step(a if env.action_masks()[a] else 0)
        if term:
            break


def test_live_world_and_arrivals_give_the_envs_state_and_observation(env):
    """The controller's own pieces (scenario, candidates, arrival book, forecast) rebuild the env's
    observation from the same arrivals: nothing of the env is borrowed but the replica states."""
    cfg = make_config(SMALL)
    scen = Scenario(cluster="h100x8", model="llama-2-70b", trace="azure-conv", duration_s=300.0, start_s=600.0,
                    num_types=cfg.num_types, slo_ttft_s=cfg.slo_ttft_s, slo_tpot_s=cfg.slo_tpot_s, typer_seed=0)
    obs, info = env.reset(seed=0, options={"scenario": scen, "data_seed": 0})
    world = build_sim_world(cfg, cluster="h100x8", model="llama-2-70b", trace="azure-conv", start_s=600.0,
                            duration_s=300.0)
    assert [d.spec_string() for d in world.candidates] == info["candidates"]
    np.testing.assert_array_equal(world.cand_capacity, env._cand_capacity)
    data = world.data
    book = ArrivalBook(world.num_types, interval_s=cfg.interval_s, prior_rps=data.prior_rps,
                       history_counts=data.history_counts)
    ctx = world.obs_context()
    fed = 0
    for a in (1, 2, 0, 3, 0, 1):
        st = env._state
        n = int(np.searchsorted(data.trace.arrival_s, st.now_s))
        sl = slice(fed, n)
        book.add(data.trace.arrival_s[sl], data.types[sl], data.trace.input_tokens[sl], data.trace.output_tokens[sl])
        fed = n
        live = book.state(st.now_s, st.step, forecaster=world.forecaster, deployment=st.deployment,
                          replicas=st.replicas, switch_in_progress=st.switch_in_progress,
                          switch_time_left_s=st.switch_time_left_s)
        np.testing.assert_array_equal(live.type_counts_per_min, st.type_counts_per_min)
        np.testing.assert_array_equal(live.forecast_rps, st.forecast_rps)
        np.testing.assert_array_equal(live.recent_lengths, st.recent_lengths)
        live_obs, _ = build_observation(live, ctx)
        _assert_obs_equal(live_obs, obs)
        obs, _, term, _, _ = env.step(a if env.action_masks()[a] else 0)
        if term:
            break


# ---------------------------------------------------------------- sim -> live replicas
def _dep(spec: str):
    return parse_deployment(spec, get_cluster("h100x8"), "llama-2-70b")


def test_live_lstm_forecast_is_the_envs_to_float32_rounding():
    # The env forecasts an episode in one batch, the controller a minute at a time: the bundled LSTM's
    # forecasts then agree to float32 rounding, not bit for bit (EWMA's are exact: the test above).
    lstm = DeployEnv(**{**SMALL, "predictor": "lstm"})
    lstm.reset(seed=0)
    data = lstm.loop.data
    book = ArrivalBook(lstm.J, interval_s=lstm.cfg.interval_s, prior_rps=data.prior_rps,
                       history_counts=data.history_counts)
    book.add(data.trace.arrival_s, data.types, data.trace.input_tokens, data.trace.output_tokens)
    steps = 0
    while True:
        st = lstm._state
        np.testing.assert_allclose(book.forecast_rps(st.now_s, lstm.forecaster), st.forecast_rps, rtol=1e-6)
        steps += 1
        if lstm.step(0)[2]:
            break
    assert steps >= 5


def test_replica_map_rules_grouping_and_cap():
    rules = [{"sim": {"tp": 4}, "live": {"tp": 1, "extra_args": ["--max-num-seqs=16"]}},
             {"sim": {"tp": [2, 1]}, "live": {"tp": 1, "label": "small"}},
             {"live": {"tp": 2, "devices": [0, 1]}}]
    shape = ReplicaMap(ReplicaMapConfig(count="per_shape", max_replicas=1, rules=rules))
    (g,) = shape.groups(_dep("2xTP2+1xTP4"))
    assert g.spec.label == "small" and g.sim_replicas == (0, 1, 2)  # 4 GPUs each: the first in the deployment
    (g,) = shape.groups(_dep("1xTP8"))
    assert g.spec.tp == 2 and g.spec.devices == (0, 1)
    per = ReplicaMap(ReplicaMapConfig(count="per_replica", max_replicas=3, rules=rules))
    groups = per.groups(_dep("1xTP4+2xTP2"))
    assert [len(g.sim_replicas) for g in groups] == [1, 1, 1]
    capped = ReplicaMap(ReplicaMapConfig(count="per_replica", max_replicas=2, rules=rules)).groups(_dep("4xTP2"))
    assert len(capped) == 2 and sorted(i for g in capped for i in g.sim_replicas) == [0, 1, 2, 3]
    # Two simulated deployments with the same live replicas: switching between them changes nothing live.
    assert shape.specs(_dep("4xTP2")) == shape.specs(_dep("2xTP2+1xTP4"))


def test_replica_map_errors_name_what_is_wrong(tmp_path):
    only_tp4 = ReplicaMap(ReplicaMapConfig(rules=[{"sim": {"tp": 4}, "live": {"tp": 1}}]))
    with pytest.raises(ConfigError, match=r"TP2 PP1 on h100-sxm.*tp=4.*catch-all"):
        only_tp4.groups(_dep("4xTP2"))
    bad = tmp_path / "gpu.yaml"
    bad.write_text(CONFIG.read_text().replace("sim: {tp: 4}", "sim: {tp: 4, gpu: h1000}")
                   .replace("live: cpu-tiny.yaml", f"live: {CONFIG.parent / 'cpu-tiny.yaml'}"))
    with pytest.raises(ConfigError, match=r"gpu.yaml: replica_map.rules.1.sim.gpu: .*unknown GPU 'h1000'"):
        load_controller_config(bad)


# ---------------------------------------------------------------- configs
def test_controller_config_loads_and_overrides(tmp_path):
    c = load_controller_config(CONFIG, model=str(tmp_path), router_port=18123)
    assert c.live.model == str(tmp_path) and c.live.router_port == 18123
    assert c.live.max_replicas == 2  # live_overrides of the file
    assert c.config.sim.cluster == "h100x8" and c.switch_costs == load_switch_costs()


def test_controller_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("\n  count: per_shape\n", "\n  count: per_shape\n  maxreplicas: 2\n")
                   .replace("live: cpu-tiny.yaml", f"live: {CONFIG.parent / 'cpu-tiny.yaml'}"))
    with pytest.raises(ConfigError, match=r"bad.yaml: replica_map.maxreplicas: unknown key.*max_replicas"):
        load_controller_config(bad)
    with pytest.raises(ConfigError, match="is a live cluster config.*sim.*replica_map"):
        load_controller_config(CONFIG.parent / "cpu-tiny.yaml")
    missing = tmp_path / "m.yaml"
    missing.write_text(CONFIG.read_text())
    with pytest.raises(ConfigError, match="live: 'cpu-tiny.yaml'.*does not exist"):
        load_controller_config(missing)
    for text in ("600", "9:3", "a:b"):
        with pytest.raises(ConfigError, match="--slice"):
            parse_slice(text)
    assert parse_slice("600:900") == (600.0, 900.0)


# ---------------------------------------------------------------- metrics helpers
METRICS_TEXT = """\
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_running{engine="1",model_name="tiny"} 1.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 0.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 30.0
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1200.0
vllm:generation_tokens_total{engine="0",model_name="tiny"} 300.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.5",model_name="tiny"} 10.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="tiny"} 18.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 20.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="0.5",model_name="tiny"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="1.0",model_name="tiny"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="+Inf",model_name="tiny"} 10.0
"""


def test_e2e_histogram_is_summed_over_engines_and_quantiles_interpolate():
    b = e2e_buckets(METRICS_TEXT)
    assert b == {0.5: 10.0, 1.0: 18.0, math.inf: 30.0}
    assert histogram_quantile(0.5, {0.1: 0, 0.5: 10, 1.0: 20, math.inf: 20}) == 0.5
    assert histogram_quantile(0.25, {0.1: 0, 0.5: 10, 1.0: 20, math.inf: 20}) == pytest.approx(0.3)
    assert histogram_quantile(0.99, b) == 1.0        # in the +Inf bucket: the largest finite bound
    assert math.isnan(histogram_quantile(0.99, {0.5: 0.0, math.inf: 0.0}))


def test_metrics_arrivals_count_new_requests_per_interval():
    world_typer = Scenario(cluster="h100x8", model="llama-2-70b", trace="azure-conv", duration_s=120).build(0).typer
    book = ArrivalBook(4, interval_s=60.0, prior_rps=np.zeros(4))
    arr = MetricsArrivals(book, world_typer)
    m1 = parse_metrics(METRICS_TEXT)                 # 30 done + 7 in flight since start
    assert arr.update(60.0, {"r0": m1}) == 37
    m2 = parse_metrics(METRICS_TEXT.replace(" 30.0\n", " 40.0\n").replace(
        'running{engine="1",model_name="tiny"} 1.0', 'running{engine="1",model_name="tiny"} 0.0'))
    assert arr.update(120.0, {"r0": m2, "r1": None}) == 9   # 10 more done, one fewer in flight
    counts = book.counts_so_far(120.0)
    assert counts.shape == (2, 4) and counts.sum(axis=1).tolist() == [37.0, 9.0]


# ---------------------------------------------------------------- switch-cost YAML
def test_fitted_switch_costs_are_written_and_read_back(tmp_path):
    from oserve_rl.live.compare import fit_switch_costs, write_switch_costs
    from oserve_rl.live.plan import ReplicaPhases, SwitchReport

    up = SwitchReport("make-before-break", [], ["r0"], [], {"start": 0.01, "ready": 40.0, "route": 0.02},
                      [ReplicaPhases("r0", "start", "u0", {"start": 0.01, "ready": 40.0, "route": 0.02})], 40.1)
    sw = SwitchReport("make-before-break", [], ["r1"], ["r0"], {}, [
        ReplicaPhases("r1", "start", "u1", {"start": 0.01, "ready": 60.0, "route": 0.04}),
        ReplicaPhases("r0", "stop", "u0", {"route": 0.03, "drain": 1.5, "stop": 2.5}, True, "SIGTERM")], 64.0)
    base = load_switch_costs()
    costs, why = fit_switch_costs([up, sw], base, model_bytes=int(2.15e9))  # 1 s of disk read
    assert costs.mode == "reload"
    assert costs.engine_init_s == pytest.approx(50.01 - 1.0)
    assert costs.router_update_s == pytest.approx(0.03) and costs.drain_estimate_s == pytest.approx(1.5)
    assert costs.reshard_init_s == base.reshard_init_s and "not measured" in why["reshard_init_s"]
    path = write_switch_costs(tmp_path / "sc.yaml", costs, why, header=["test"])
    assert load_switch_costs(tmp_path / "sc.yaml") == costs == path


# ---------------------------------------------------------------- CLI
def _parse(argv):
    import argparse

    from oserve_rl.live import cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    cli.add_parser(sub)
    return cli, parser.parse_args(argv)


def test_cli_parses_and_rejects_bad_arguments_with_one_error():
    from oserve_rl.live.compare import parse_switch

    cli, args = _parse(["live", "run", "--policy", "oserve", "--cluster", str(CONFIG), "--trace", "azure-conv",
                        "--slice", "600:900", "--replay-speed", "0.8", "--initial", "4xTP2",
                        "--live-set", "router_port=18124"])
    assert args.live_cmd == "run" and args.replay_speed == 0.8 and cli._live_overrides(args) == {"router_port": 18124}
    _, args = _parse(["live", "run", "--policy", "oserve", "--cluster", str(CONFIG), "--slice", "0:60"])
    with pytest.raises(ConfigError, match="--slice needs --trace"):
        cli.main(args)
    _, args = _parse(["live", "compare", "--cluster", str(CONFIG.parent / "cpu-tiny.yaml"), "--trace", "azure-conv",
                      "--deployment", "4xTP2"])
    with pytest.raises(ConfigError, match="is a live cluster config"):
        cli.main(args)
    assert parse_switch("30:2xTP4") == (30.0, "2xTP4")
    for bad in ("2xTP4", "x:2xTP4", "-1:2xTP4", "5:"):
        with pytest.raises(ConfigError, match="--switch"):
            parse_switch(bad)


# ---------------------------------------------------------------- the decision -> switch mechanics
class _StandInCluster:
    """Just enough of LiveCluster for the controller's bookkeeping: apply() records the target and can be held
    or made to fail; replicas get unreachable URLs (scrapes fail, as for a replica that does not answer)."""

    def __init__(self):
        import threading

        self.applied: list[list] = []
        self.reports: list = []
        self.release = threading.Event()
        self.release.set()
        self.fail = False
        self._serving: list = []
        self._n = 0

    def serving(self):
        return list(self._serving)

    def diff(self, specs):
        from oserve_rl.live.plan import diff_deployment

        return diff_deployment(self._serving, specs)

    def apply(self, specs):
        from oserve_rl.live.backend import LiveClusterError, Replica
        from oserve_rl.live.plan import SwitchReport

        self.applied.append(list(specs))
        self.release.wait(30)
        if self.fail:
            raise LiveClusterError("replica r9 at http://127.0.0.1:9 not ready after 1 s")
        d = self.diff(specs)
        new = []
        for s in d.start:
            self._n += 1
            new.append(Replica(f"r{self._n}", s, "http://127.0.0.1:9", 9))
        self._serving = [*d.keep, *new]
        rep = SwitchReport("make-before-break", [r.replica_id for r in d.keep], [r.replica_id for r in new],
                           [r.replica_id for r in d.stop], {}, [], 0.0)
        self.reports.append(rep)
        return rep

    def close(self):
        pass


class _Scripted:
    """A heuristic that returns the deployments it is given, one per decision (None: keep)."""

    name = "scripted"

    def __init__(self, specs):
        self.specs = list(specs)

    def reset(self, ctx):
        self.ctx = ctx

    def decide(self, state):
        from oserve_rl.policy import Decision

        spec = self.specs.pop(0)
        return Decision(None if spec is None else parse_deployment(spec, self.ctx.cluster, self.ctx.model))


def test_controller_maps_diffs_defers_and_reverts_switches():
    from oserve_rl.live.controller import LiveController, PolicyHandle

    cfg = make_config(SMALL)
    world = build_sim_world(cfg, cluster="h100x8", model="llama-2-70b", trace="azure-conv", duration_s=300.0)
    rmap = ReplicaMap(ReplicaMapConfig(rules=[{"sim": {"tp": 4}, "live": {"tp": 1, "label": "B"}},
                                              {"live": {"tp": 1, "label": "A"}}]))
    cluster = _StandInCluster()
    policy = PolicyHandle("scripted", "heuristic", heuristic=_Scripted([None, "2xTP2+1xTP4", "2xTP4", "1xTP8",
                                                                         "4xTP2"]))
    ctl = LiveController(policy, world, cluster, rmap, log=None)
    ctl.install("4xTP2")
    assert [s.label for s in cluster.applied[-1]] == ["A"] and ctl.shadow.spec_string() == "4xTP2"
    assert ctl.decide().outcome == "keep"
    rec = ctl.decide()                                  # 2xTP2+1xTP4: its largest part is the TP2 pair -> A
    assert rec.outcome.startswith("sim-only") and len(cluster.applied) == 1
    assert ctl.shadow.spec_string() == "2xTP2+1xTP4"
    cluster.release.clear()                             # hold the next switch in progress
    rec = ctl.decide()
    assert rec.outcome == "switching" and rec.live_target == ["TP1[B]"] and "stop ['TP1[A]']" in rec.diff
    state, obs, _ = ctl.observe()
    assert state.switch_in_progress and obs["switch"][0] == 1.0
    assert ctl.decide().outcome.startswith("deferred")  # 1xTP8 must wait
    cluster.release.set()
    ctl._reap(wait=True)
    assert ctl.switches_done == 1 and [r.spec.label for r in cluster.serving()] == ["B"]
    state, obs, _ = ctl.observe()
    assert not state.switch_in_progress and all(r.ready for r in state.replicas) and len(state.replicas) == 2
    cluster.fail = True                                 # 4xTP2 -> A never gets ready: B stays, shadow reverts
    rec = ctl.decide()
    ctl._reap(wait=True)
    assert rec.error and ctl.shadow.spec_string() == "2xTP4" and ctl.switches_done == 1
