"""Bad input to the policy-side Python API: one clear project exception, checked up front, never a silent fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oserve_rl.errors import CheckpointError, ConfigError

NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------- 1. policy parameters
@pytest.mark.parametrize("name, params, field", [
    ("oserve", {"min_switch_interval_s": -5}, "min_switch_interval_s"),
    ("oserve", {"min_switch_interval_s": NAN}, "min_switch_interval_s"),
    ("oserve", {"peak_window_min": NAN}, "peak_window_min"),
    ("oserve", {"hysteresis": INF}, "hysteresis"),
    ("oserve", {"amortise_s": INF}, "amortise_s"),
    ("oserve", {"headroom": INF}, "headroom"),
    ("oserve", {"seed": 1.7}, "seed"),
    ("oserve", {"latency_aware": "no"}, "latency_aware"),
    ("oserve", {"tpot_bound": True}, "tpot_bound"),
    ("oserve", {"spill": "0.1"}, "spill"),
    ("oserve_oracle", {"patience": NAN}, "patience"),
    ("threshold_autoscaler", {"step": 2.5}, "step"),
    ("threshold_autoscaler", {"min_replicas": 1.9}, "min_replicas"),
    ("threshold_autoscaler", {"up_cooldown_s": -5}, "up_cooldown_s"),
    ("threshold_autoscaler", {"down_cooldown_s": NAN}, "down_cooldown_s"),
    ("threshold_autoscaler", {"queue_high": INF}, "queue_high"),
    ("vllm_static", {"deployment": 4}, "deployment"),
    ("vllm_static", {"sweep_s": NAN}, "sweep_s"),
    ("vllm_static", {"sweep_s": -5}, "sweep_s"),
    ("llumnix", {"sweep_s": 0}, "sweep_s"),
])
def test_policy_parameters_are_checked_in_the_constructor(name, params, field):
    from oserve_rl.agents import make_policy

    with pytest.raises(ConfigError, match=field) as e:
        make_policy(name, **params)
    assert name in str(e.value)


def test_make_policy_turns_a_constructor_value_error_into_a_config_error():
    from oserve_rl.agents import make_policy

    from oserve_rl.policy import Policy

    class Picky(Policy):
        name = "picky"

        def __init__(self, x: int = 0):
            int("not a number" if x else "0")

    from oserve_rl import agents
    orig = agents.policy_class
    agents.policy_class = lambda name: Picky
    try:
        with pytest.raises(ConfigError, match="picky"):
            make_policy("picky", x=1)
    finally:
        agents.policy_class = orig


def test_valid_policy_parameters_are_kept_as_given():
    from oserve_rl.agents import make_policy

    p = make_policy("oserve", seed=np.int64(3), peak_window_min=10.0, tpot_bound=0.2, latency_aware=np.bool_(False))
    assert (p.seed, p.peak_window_min, p.tpot_bound, p.latency_aware) == (3, 10, 0.2, False)
    assert make_policy("threshold_autoscaler", step=2).step == 2


# ---------------------------------------------------------------- 2. evaluate
@pytest.fixture(scope="module")
def scenario():
    from oserve_rl.policy import Scenario

    return Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=120)


@pytest.mark.parametrize("bad, kw, match", [
    ("scenario", {}, "scenario must be a Scenario"),
    ("none", {}, "scenario must be a Scenario"),
    (None, {"seeds": 5}, "seeds must be a sequence"),
    (None, {"seeds": 0}, "seeds must be a sequence"),
    (None, {"forecaster": object()}, "forecaster must be"),
    (None, {"policies": "oserve"}, "policies must be a list"),
    (None, {"policies": [("x",)]}, r"\(label, factory\)"),
    (None, {"policies": [("x", 5)]}, r"\(label, factory\)"),
])
def test_evaluate_refuses_misuse_up_front(scenario, bad, kw, match):
    from oserve_rl.evaluation import evaluate

    sc = {"scenario": {"cluster": "h100x8"}, "none": None}.get(bad, scenario)
    policies = kw.pop("policies", ["vllm_static"])
    with pytest.raises(ConfigError, match=match):
        evaluate(sc, policies, progress=False, **kw)


def test_evaluate_refuses_a_factory_that_returns_no_policy(scenario):
    from oserve_rl.evaluation import evaluate

    with pytest.raises(ConfigError, match="must return a Policy"):
        evaluate(scenario, [("x", lambda: 5)], progress=False)


def test_evaluate_loads_a_forecaster_by_name(scenario):
    from oserve_rl.evaluation import evaluate

    with pytest.raises(ConfigError, match="unknown predictor"):  # a name is loaded (load_forecaster), not .predict()ed
        evaluate(scenario, ["vllm_static"], forecaster="no-such-predictor", progress=False)


# ---------------------------------------------------------------- 3. Scenario
@pytest.mark.parametrize("field, value", [
    ("rate_scale", "2"), ("duration_s", "60"), ("num_types", NAN), ("max_model_len", NAN), ("typer_seed", -1),
    ("typing_window_s", NAN), ("typing_window_s", -5), ("start_s", INF), ("num_types", True),
])
def test_scenario_fields_are_checked(field, value):
    from oserve_rl.policy import Scenario

    with pytest.raises(ConfigError, match=field):
        Scenario("h100x8", "llama-2-70b", "azure-conv", **{field: value})


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_scenario_build_seed_is_checked(seed):
    from oserve_rl.policy import Scenario

    with pytest.raises(ConfigError, match="seed"):
        Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=60).build(seed=seed)


# ---------------------------------------------------------------- 4. perf model
@pytest.mark.parametrize("kw, field", [({"tp": 2.7}, "tp"), ({"tp": 2, "pp": 1.5}, "pp"),
                                       ({"tp": 2, "link_gbps": -1}, "link_gbps"), ({"tp": 2, "link_gbps": NAN}, "link_gbps"),
                                       ({"tp": 2, "link_gbps": 0}, "link_gbps"),
                                       ({"tp": 2, "inter_node_gbps": INF}, "inter_node_gbps")])
def test_replica_perf_arguments(kw, field):
    from oserve_rl.perf import replica_perf

    with pytest.raises(ConfigError, match=field):
        replica_perf("llama-2-70b", "h100", **kw)


@pytest.mark.parametrize("call, field", [
    (lambda p: p.decode_steps_s(4, 400, -5), "k"), (lambda p: p.decode_s(-4, 100), "batch_size"),
    (lambda p: p.prefill_s(100, batch_size=-1), "batch_size"), (lambda p: p.standalone_latency_s(-5, -3), "input_tokens"),
    (lambda p: p.standalone_latency_s(NAN, 10), "input_tokens"), (lambda p: p.standalone_latency_s(10, NAN), "output_tokens"),
])
def test_perf_helpers_refuse_negative_or_nan_sizes(call, field):
    from oserve_rl.perf import replica_perf

    with pytest.raises(ConfigError, match=field):
        call(replica_perf("llama-2-70b", "h100", tp=2))


# ---------------------------------------------------------------- 5. forecast predictors
def test_predictor_arguments():
    from oserve_rl.forecast import make_predictor

    h = np.ones((30, 2))
    with pytest.raises(ConfigError, match="first_min"):
        make_predictor("ewma").predict_series(h, 2.5)
    with pytest.raises(ConfigError, match="history_counts"):
        make_predictor("ewma").predict([["a"]])
    with pytest.raises(ConfigError, match="window"):
        make_predictor("moving-average", window=NAN)
    with pytest.raises(ConfigError, match="start_min"):
        make_predictor("oracle", true_counts=h, start_min=-5)
    with pytest.raises(ConfigError, match="alpha"):
        make_predictor("ewma", alpha="0.5")


def test_lstm_refuses_counts_it_cannot_carry_and_a_bad_seed(tmp_path):
    from oserve_rl.forecast import load_predictor
    from oserve_rl.forecast.predictors import LSTMPredictor

    p = LSTMPredictor(num_types=2, history_min=4, hidden_size=4, seed=0)
    with pytest.raises(ConfigError, match="history_counts"):
        p.predict(np.full((6, 2), 1e300))
    with pytest.raises(ConfigError, match="history_counts"):
        p.predict_series(np.full((6, 2), 1e300), 2)
    assert np.isfinite(p.predict(np.full((6, 2), 1e30))).all()
    with pytest.raises(ConfigError, match="seed"):
        LSTMPredictor(num_types=2, seed=1.7)
    d = p.save(tmp_path / "pred")
    meta = json.loads((d / "predictor.json").read_text())
    meta["params"]["seed"] = "x"
    (d / "predictor.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="predictor.json.*seed"):
        load_predictor(d)


# ---------------------------------------------------------------- 6. exported policies
def _tiny_export(root, n_actions=6, obs_dim=3):
    """A hand-built policy.onnx + policy.json in the exporter's layout (no training): logits = obs @ W."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from oserve_rl.export.runtime import (
        FORMAT,
        FORMAT_VERSION,
        file_sha256,
        installed_env_version,
    )

    w = numpy_helper.from_array(np.arange(obs_dim * n_actions, dtype=np.float32).reshape(obs_dim, n_actions), "W")
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["raw"]),
             helper.make_node("Mul", ["raw", "action_mask"], ["logits"]),
             helper.make_node("ArgMax", ["logits"], ["action"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim]),
         helper.make_tensor_value_info("action_mask", TensorProto.FLOAT, ["batch", n_actions])],
        [helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_actions])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / "policy.onnx")
    spec = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "onnx", "env_version": installed_env_version(),
            "policy": {"algo": "ppo"}, "provenance": {"checkpoint": "x"},
            "onnx": {"file": "policy.onnx", "sha256": file_sha256(root / "policy.onnx")},
            "observation": {"keys": [{"key": "obs", "shape": [obs_dim]}, {"key": "action_mask", "shape": [n_actions]}]},
            "actions": {"n": n_actions, "table": [{"name": f"a{i}", "meaning": "m"} for i in range(n_actions)]},
            "env": {"space_signature": {}}}
    (root / "policy.json").write_text(json.dumps(spec))
    return spec


def _doctor(root, change):
    spec = json.loads((root / "policy.json").read_text())
    change(spec)
    (root / "policy.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("change, field", [
    (lambda s: s.pop("onnx"), "onnx"), (lambda s: s.pop("observation"), "observation"),
    (lambda s: s.pop("policy"), "policy"), (lambda s: s.pop("provenance"), "provenance"),
    (lambda s: s.pop("actions"), "actions"), (lambda s: s["observation"]["keys"][0].pop("shape"), "shape"),
    (lambda s: s.update(onnx="policy.onnx"), "onnx"), (lambda s: s["observation"]["keys"][0].update(shape="abc"), "shape"),
    (lambda s: s["actions"].update(n="x"), r"actions\.n"), (lambda s: s.update(format_version=0), "format_version"),
    (lambda s: s.update(format_version=-5), "format_version"), (lambda s: s.update(format_version=True), "format_version"),
    (lambda s: s["actions"].update(n=99, table=[{"name": "a", "meaning": "m"}] * 99), r"actions\.n"),
    (lambda s: s["observation"]["keys"][0].update(shape=[4]), "shape"),
])
def test_doctored_policy_json_is_refused_at_load(tmp_path, change, field):
    from oserve_rl.export.runtime import load_exported

    _tiny_export(tmp_path)
    _doctor(tmp_path, change)
    with pytest.raises(CheckpointError, match=field):
        load_exported(tmp_path)


def test_exported_policy_arguments(tmp_path):
    from oserve_rl.export.runtime import load_exported

    _tiny_export(tmp_path)
    for threads in (0, -5, 1.5):
        with pytest.raises(ConfigError, match="threads"):
            load_exported(tmp_path, threads=threads)
    pol = load_exported(tmp_path)
    obs = {"obs": np.ones(3, np.float32), "action_mask": np.ones(6, np.float32)}
    assert pol.act(obs) == 5 and pol.action_meaning(np.int64(2)) == "a2: m"
    for bad in ("x", 2.7, True):
        with pytest.raises(ConfigError, match="action"):
            pol.action_meaning(bad)
    with pytest.raises(CheckpointError, match="action_mask"):
        pol.act({**obs, "action_mask": np.full(6, 0.5, np.float32)})
