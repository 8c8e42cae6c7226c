"""The policy interface, scenarios, the control loop, the baselines and evaluate.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oserve_rl.agents import make_policy, policy_names
from oserve_rl.cluster import parse_deployment
from oserve_rl.errors import ConfigError, UnknownNameError
from oserve_rl.forecast import make_predictor
from oserve_rl.policy import ClusterState, Decision, Policy, Scenario, run_policy
from oserve_rl.workload import load_trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    return Scenario("h100x8", "llama-2-70b", "azure-conv", rate_scale=1.0, duration_s=300).build(seed=0)


class SwitchAt(Policy):
    """Starts on 4xTP2, asks for 2xTP4 at the first decision after ``at_s``."""

    name = "switch_at"

    def __init__(self, at_s: float = 60.0):
        self.at_s = at_s

    def decide(self, state: ClusterState) -> Decision:
        if state.deployment is None:
            return Decision(parse_deployment("4xTP2", self.ctx.cluster, self.ctx.model))
        if state.now_s >= self.at_s and state.deployment.spec_string() == "4xTP2":
            return Decision(parse_deployment("2xTP4", self.ctx.cluster, self.ctx.model, prefer=state.deployment))
        return Decision()


def test_two_policies_on_one_seed_see_identical_arrivals(small):
    a = run_policy(SwitchAt(), small, decision_delay_s=0.0)
    b = run_policy(make_policy("threshold_autoscaler"), small, decision_delay_s=0.0)
    ra, rb = a.sim.recorder, b.sim.recorder
    assert ra.n == rb.n == len(small.trace)
    np.testing.assert_array_equal(ra.arrival_s, rb.arrival_s)
    np.testing.assert_array_equal(ra.input_tokens, rb.input_tokens)
    np.testing.assert_array_equal(ra.output_tokens, rb.output_tokens)
    # and a rebuilt episode with the same seed is the same again
    again = Scenario("h100x8", "llama-2-70b", "azure-conv", rate_scale=1.0, duration_s=300).build(seed=0)
    np.testing.assert_array_equal(again.trace.arrival_s, small.trace.arrival_s)
    np.testing.assert_array_equal(again.types, small.types)


def test_every_request_is_accounted_for_and_the_decision_delay_is_charged(small):
    res = run_policy(SwitchAt(60.0), small, decision_delay_s=7.0)
    s = res.summary
    assert s["completed"] + s["rejected"] + s["in_flight"] == s["requests"] == len(small.trace)
    assert len(res.sim.switches) == 1
    assert res.sim.switches[0].start_s == pytest.approx(67.0)  # decided at 60 s, charged 7 s
    assert res.decisions[0]["t_s"] == 0.0 and not res.decisions[0]["switched"]


def test_first_decision_must_name_a_deployment(small):
    class Lazy(Policy):
        name = "lazy"

        def decide(self, state):
            return Decision()

    with pytest.raises(ConfigError, match="first decision"):
        run_policy(Lazy(), small)


def test_weights_must_match_the_deployment(small):
    class BadWeights(Policy):
        name = "bad_weights"

        def decide(self, state):
            dep = parse_deployment("4xTP2", self.ctx.cluster, self.ctx.model)
            return Decision(dep, weights=np.ones((state.num_types, 3)))

    with pytest.raises(ConfigError, match="weights"):
        run_policy(BadWeights(), small)


def test_scale_load_keeps_the_span_and_is_seeded():
    tr = load_trace("azure-conv").rebase().slice(0, 600)
    two = tr.scale_load(2.0, seed=1)
    assert len(two) == 2 * len(tr)
    assert two.arrival_s[-1] <= tr.arrival_s[-1] + 30.0 + 1e-9
    assert np.all(np.diff(two.arrival_s) >= 0)
    half = tr.scale_load(0.5, seed=1)
    assert 0.4 * len(tr) < len(half) < 0.6 * len(tr)
    np.testing.assert_array_equal(tr.scale_load(1.5, seed=3).arrival_s, tr.scale_load(1.5, seed=3).arrival_s)
    with pytest.raises(ConfigError, match="factor"):
        tr.scale_load(0.0)


def test_requests_beyond_the_context_are_not_typed():
    # Azure code's head has prompts near or past Llama-2-70B's 4,096 tokens: they are rejected on arrival
    # whatever runs, so the typer's centres, the type lengths and the prior rates come from the others.
    data = Scenario("h100x8", "llama-2-70b", "azure-code", duration_s=600).build(0)
    assert np.all(data.type_lengths.sum(axis=1) <= 4096)
    assert np.all(data.typer.centers_tokens.sum(axis=1) <= 4096)
    head = load_trace("azure-code").rebase().slice(0, 600)
    servable = head.fitting(4096)
    assert len(servable) < len(head)
    span_s = servable.arrival_s[-1] - servable.arrival_s[0]
    assert data.prior_rps.sum() * span_s == pytest.approx(len(servable))
    # The episode itself is untouched: over-context requests arrive and are rejected with a reason.
    assert len(data.trace) == len(head)


@pytest.mark.parametrize("kwargs, match", [
    ({"slo_ttft_s": 0.0}, "slo_ttft_s"),
    ({"slo_tpot_s": -1.0}, "slo_tpot_s"),
    ({"rate_scale": 0.0}, "rate_scale"),
    ({"start_s": "later"}, "start_s"),
])
def test_impossible_scenarios_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Scenario("h100x8", "llama-2-70b", "azure-conv", **kwargs)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="oserve"):
        make_policy("oserv")
    with pytest.raises(UnknownNameError):
        Scenario("h100x9", "llama-2-70b", "azure-conv")
    with pytest.raises(ConfigError, match="start_s"):
        Scenario("h100x8", "llama-2-70b", "azure-conv", start_s=1e7).build()


def test_registry_has_every_baseline():
    assert set(policy_names()) >= {"vllm_static", "oserve", "oserve_oracle", "vllm_reload", "llumnix",
                                   "threshold_autoscaler", "brute_force"}


def test_vllm_static_runs_its_sweeps_best(small):
    pol = make_policy("vllm_static")
    res = run_policy(pol, small)
    best = min(pol.sweep, key=lambda r: (-r["completed"], r["p99_e2e_s"]))
    assert res.summary["deployment"] == best["deployment"]
    assert res.summary["switches"] == 0
    assert res.summary["e2e_s"]["p99"] == pytest.approx(best["p99_e2e_s"])


def test_oserve_decides_with_weights_for_every_replica(small):
    res = run_policy(make_policy("oserve"), small, decision_delay_s=0.0, forecaster=make_predictor("ewma"))
    assert res.summary["completed"] > 0
    pol = make_policy("oserve")
    from oserve_rl.policy import ControlLoop

    loop = ControlLoop(small, decision_delay_s=0.0)
    pol.reset(loop.context())
    d = pol.decide(loop.observe())
    assert d.deployment is not None and d.weights.shape == (small.num_types, len(d.deployment))
    assert np.all(d.weights >= 0) and d.weights.sum() > 0


def test_oserve_oracle_reads_the_true_rates(small):
    from oserve_rl.policy import ControlLoop

    loop = ControlLoop(small, hindsight=True)
    state = loop.observe()
    lo, hi = np.searchsorted(small.trace.arrival_s, [0.0, 60.0])
    np.testing.assert_allclose(state.true_next_rps * 60.0, np.bincount(small.types[lo:hi], minlength=small.num_types))
    assert ControlLoop(small).observe().true_next_rps is None  # nobody else sees the future


def test_autoscaler_scales_up_under_overload():
    data = Scenario("h100x8", "llama-2-70b", "azure-conv", rate_scale=4.0, duration_s=900).build(seed=0)
    res = run_policy(make_policy("threshold_autoscaler", initial_fraction=0.25), data, decision_delay_s=0.0)
    assert res.summary["switches"] >= 1
    first, last = res.sim.timeline[0][1], res.sim.timeline[-1][1]
    assert int(last.split("x")[0]) > int(first.split("x")[0])


def test_evaluate_writes_the_figures_the_issue_asks_for(tmp_path, small):
    from oserve_rl.evaluation import FIGURE_KEYS, evaluate

    scen = Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=240)
    table = evaluate(scen, ["vllm_static", "threshold_autoscaler"], seeds=[0], progress=False, decision_delay_s=0.0)
    out = table.write(tmp_path / "eval", tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data) == {"vllm_static", "threshold_autoscaler"}
    for figures in data.values():
        assert set(figures) == set(FIGURE_KEYS)
        assert set(figures["e2e_s"]) == {"p50", "p99"}
    for f in ("table.md", "table.csv", "per_seed.csv", "results.json", "latency_cdf.png", "p99_over_time.png",
              "deployment_timeline.png"):
        assert (out / f).stat().st_size > 0


@pytest.mark.slow
def test_evaluate_in_worker_processes_gives_the_same_figures():
    """jobs > 1 moves (policy, seed) episodes to worker processes, including a script's own policy factory;
    every simulated figure is the same (decision_s_* are wall-time measurements: left out)."""
    from oserve_rl.evaluation import evaluate

    scen = Scenario("h100x8", "llama-2-70b", "azure-conv", rate_scale=1.5, duration_s=240)
    pols = ["vllm_static", "oserve", ("switch_at_60", lambda: SwitchAt(60.0))]
    kw = {"seeds": [0, 1], "progress": False, "decision_delay_s": 0.0, "forecaster": make_predictor("ewma")}
    serial, parallel = evaluate(scen, pols, jobs=1, **kw), evaluate(scen, pols, jobs=2, **kw)

    def simulated(table):
        return {p: [{k: v for k, v in f.items() if not k.startswith("decision_s")} for f in per_seed]
                for p, per_seed in table.per_seed.items()}

    assert simulated(parallel) == simulated(serial)
    assert parallel.per_seed["switch_at_60"][0]["switches"] == 1
    assert parallel.describe == serial.describe


def _unknown_deployment_policy():
    from oserve_rl.errors import UnknownNameError

    raise UnknownNameError("deployment", "9xTP3", ["4xTP2", "2xTP4"])


def test_an_error_in_a_worker_process_is_the_same_clear_error():
    from oserve_rl.errors import UnknownNameError
    from oserve_rl.evaluation import evaluate

    scen = Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=120)
    with pytest.raises(UnknownNameError, match="unknown deployment '9xTP3'.*valid: 2xTP4, 4xTP2"):
        evaluate(scen, ["vllm_static", ("bad", _unknown_deployment_policy)], seeds=[0], progress=False,
                 decision_delay_s=0.0, jobs=2)


USER_POLICY = """
from oserve_rl.cluster import parse_deployment
from oserve_rl.policy import Decision, Policy


class Fixed(Policy):
    name = "fixed"

    def __init__(self, spec="4xTP2"):
        self.spec = spec

    def decide(self, state):
        if state.deployment is None:
            return Decision(parse_deployment(self.spec, self.ctx.cluster, self.ctx.model), router="least_work")
        return Decision()
"""


def test_your_own_policy_loads_from_a_file_and_bad_specs_are_clear_errors(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(USER_POLICY)
    policy = make_policy(f"{path}:Fixed", spec="2xTP4")
    assert isinstance(policy, Policy) and policy.spec == "2xTP4"
    with pytest.raises(ConfigError, match=r"no Policy subclass 'Fixd'.*Policy subclasses there: Fixed"):
        make_policy(f"{path}:Fixd")
    with pytest.raises(ConfigError, match="no file"):
        make_policy(f"{tmp_path / 'nope.py'}:Fixed")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        make_policy("no_such_module:Fixed")
    broken = tmp_path / "broken.py"
    broken.write_text("class Oops(:\n")
    with pytest.raises(ConfigError, match="broken.py does not load: SyntaxError"):
        make_policy(f"{broken}:Oops")


@pytest.mark.slow
def test_evaluate_cli_runs_your_own_policy_in_worker_processes(tmp_path):
    (tmp_path / "mine.py").write_text(USER_POLICY)
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--cluster", "h100x8", "--model", "llama-2-70b",
                        "--trace", "azure-conv", "--duration", "180", "--predictor", "ewma", "--no-plots",
                        "--policies", "vllm_static,mine.py:Fixed", "--jobs", "2", "--json", "r.json",
                        "--out", "out"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads((tmp_path / "r.json").read_text())
    assert set(figures) == {"vllm_static", "mine.py:Fixed"} and figures["mine.py:Fixed"]["e2e_s"]["p99"] > 0


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_evaluate_cli_bad_input_is_one_clear_error(tmp_path):
    r = _evaluate("--cluster", "h100x8", "--model", "llama-2-70b", "--trace", "azure-conv", "--policies",
                  "vllm_statik", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "vllm_static" in r.stderr
    assert "Traceback" not in r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cluster: h100x8\nmodel: llama-2-70b\ntrace: azure-conv\nrate_sclae: 2\n")
    r = _evaluate("--config", str(cfg))
    assert r.returncode == 2 and "rate_sclae" in r.stderr and "rate_scale" in r.stderr
    r = _evaluate("--cluster", "h100x8", "--model", "llama-2-70b", "--trace", "azure-conv", "--slo-ttft", "0",
                  "--out", str(tmp_path))
    assert r.returncode == 2 and "slo_ttft_s" in r.stderr


def test_worker_processes_that_cannot_start_are_one_clear_error():
    """jobs > 1 from a script on standard input: the workers cannot re-import it; say so and how to run it."""
    script = ("from oserve_rl.evaluation import evaluate\nfrom oserve_rl.policy import Scenario\n"
              "evaluate(Scenario('h100x8', 'llama-2-70b', 'azure-conv', duration_s=120), ['vllm_static', 'oserve'], "
              "seeds=[0], jobs=2, progress=False)\n")
    r = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and "a worker process died" in r.stderr and 'if __name__ == "__main__"' in r.stderr


def test_evaluate_cli_sweeps_loads(tmp_path):
    r = _evaluate("--cluster", "h100x8", "--model", "llama-2-70b", "--trace", "azure-conv", "--duration", "180",
                  "--rate-scale", "0.5,1.5", "--predictor", "ewma", "--policies", "vllm_static,oserve", "--out",
                  str(tmp_path), "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = json.loads((tmp_path / "s.json").read_text())
    assert set(sweep) == {"0.5", "1.5"} and all(set(f) == {"vllm_static", "oserve"} for f in sweep.values())
    assert sweep["1.5"]["vllm_static"]["throughput_rps"] > sweep["0.5"]["vllm_static"]["throughput_rps"]
    for f in ("sweep.md", "sweep_p99.png", "rate-0.5/table.md", "rate-1.5/results.json"):
        assert (tmp_path / f).stat().st_size > 0
    assert "p99 E2E s @1.5x" in r.stdout
    r = _evaluate("--cluster", "h100x8", "--model", "llama-2-70b", "--trace", "azure-conv", "--rate-scale", "2,x",
                  "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "comma-separated numbers" in r.stderr


def test_a_forecasting_policy_without_a_predictor_is_refused(small):
    with pytest.raises(ConfigError, match="needs a trained predictor"):
        run_policy(make_policy("oserve"), small, forecaster=None)


def test_a_trace_shorter_than_the_predictors_history_is_refused(small):
    class Needs(object):
        name = "needs_an_hour"
        min_history_min = 60
        num_types = None

        def predict(self, history):
            return history[-1]

    with pytest.raises(ConfigError, match="needs at least 60"):
        run_policy(make_policy("vllm_static"), small, forecaster=Needs())


def test_oserve_dispatch_is_ranked_by_its_p99_proxy_and_every_type_has_a_replica(small):
    from oserve_rl.policy import ControlLoop

    pol = make_policy("oserve")
    loop = ControlLoop(small, forecaster=make_predictor("ewma"))
    pol.reset(loop.context())
    for _ in range(3):
        state = loop.observe()
        dec = pol.decide(state)
        assert "dispatch" in dec.info and dec.info["latency_proxy_s"] > 0
        loop.apply(dec, 0.0)
        w = np.asarray(dec.weights)
        assert w.shape == (small.num_types, len(loop.sim.deployment))
        assert (w.sum(axis=1) > 0).all()  # every type can go somewhere
        # The partition's dispatch (if any) is at least as good, by the proxy, as the balanced one it was ranked with.
        bal = make_policy("oserve", dispatch="balanced")
        bal.reset(loop.context())
        dep = loop.sim.deployment
        # chosen at the current capacity rates (dispatch_load="current"), not at the deployment's planning load
        rates, need = pol.dispatch_plan(dep)
        np.testing.assert_array_equal(rates, pol.capacity_rates(state, pol.rates(state)))
        assert dec.info["dispatch"] == pol.routing(dep, rates, need).label()
        assert pol.latency_s(dep, rates, need) <= bal.latency_s(dep, rates, need) + 1e-9
        loop.advance()
    at_plan = make_policy("oserve", dispatch_load="plan")
    at_plan.reset(loop.context())
    at_plan.decide(loop.observe())
    assert at_plan.dispatch_plan(loop.sim.deployment) is at_plan._plan


@pytest.mark.parametrize("name", ["lstm", "ewma", "moving-average"])
def test_the_episodes_forecasts_come_in_one_batch_and_are_each_histories_forecast(small, name):
    from oserve_rl.policy import ControlLoop

    kwargs = {"num_types": small.num_types} if name == "lstm" else {}
    predictor = make_predictor(name, **kwargs)
    loop = ControlLoop(small, forecaster=predictor)
    calls = []
    series = predictor.predict_series
    predictor.predict_series = lambda *a, **k: calls.append(a[1]) or series(*a, **k)
    loop.apply(Decision(parse_deployment("2xTP4", small.cluster, small.model)))
    while True:
        state = loop.observe()
        hist = loop.counts_so_far()
        if len(hist):  # before the first minute the typing window's rates stand in
            np.testing.assert_allclose(state.forecast_rps, np.maximum(predictor.predict(hist), 0.0) / 60.0,
                                       rtol=1e-5)
        if loop.done:
            break
        loop.advance()
    assert calls == [max(len(small.history_counts), 1)]  # one batch, from the first minute with a history on


def test_oserve_routings_with_a_floor_are_those_without_it_that_keep_it(small):
    # routings() skips, without solving their LPs, the partitions whose load-scale bound is below the floor:
    # what it returns must be exactly the dispatches that keep the floor.
    from oserve_rl.policy import ControlLoop

    pol = make_policy("oserve")
    loop = ControlLoop(small, forecaster=make_predictor("ewma"))
    pol.reset(loop.context())
    rng = np.random.default_rng(3)
    checked = 0
    for spec in ("2xTP2+1xTP4", "4xTP2", "1xTP2+1xTP2-PP2+1xTP4", "8xTP1"):
        try:
            dep = parse_deployment(spec, small.cluster, small.model)
        except ConfigError:
            continue
        for _ in range(6):
            lam = rng.uniform(0.0, 3.0, small.num_types) * (rng.random(small.num_types) > 0.15)
            for need in (0.5, 1.0, 1.2, 2.0):
                kept = [(r.label(), r.alpha, r.p99_s) for r in pol.routings(dep, lam, need)]
                full = [(r.label(), r.alpha, r.p99_s) for r in pol.routings(dep, lam, 0.0)
                        if r.alpha >= need * (1 - 1e-6)]
                assert kept == full
                checked += len(full) < len(pol.routings(dep, lam, 0.0))
    assert checked > 5  # some floors did rule partitions out


@pytest.mark.parametrize("kwargs, match", [({"dispatch": "maxflow"}, "dispatch must be one of"),
                                           ({"spill": 2.0}, "spill must be in"),
                                           ({"plan_load": "mean"}, "plan_load must be one of"),
                                           ({"dispatch_load": "peak"}, "dispatch_load must be one of")])
def test_oserve_refuses_bad_dispatch_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_policy("oserve", **kwargs)
