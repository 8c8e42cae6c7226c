"""Calibration: held-out rows never reach a fit; the shipped parameters are what the command produces."""

import json

import numpy as np
import pytest

from oserve_rl.perf import fit
from oserve_rl.perf.calibration_data import find_calibration_dir


@pytest.fixture(scope="module")
def inputs():
    try:
        return fit.load_inputs()
    except Exception as e:  # pragma: no cover - the data folder is part of the workplace
        pytest.skip(f"calibration data unavailable: {e}")


def test_holdout_rows_do_not_influence_fit(inputs):
    clean = fit.calibrate(inputs, only_gpus=("a40",))
    ops = inputs.ops.copy()
    ops.loc[inputs.holdout.ops_mask(ops), "time_s"] *= 100.0  # poison every held-out row
    net = inputs.network.copy()
    net.loc[inputs.holdout.network_mask(net), "time_s"] *= 100.0
    poisoned = fit.calibrate(fit.CalibrationInputs(ops, inputs.attention, net, inputs.data_dir,
                                                   inputs.holdout), only_gpus=("a40",))
    assert clean["gpus"]["a40"] == poisoned["gpus"]["a40"]


def test_held_out_network_rows_do_not_influence_collectives(inputs):
    net = inputs.network[inputs.network.gpu == "a100"]
    clean = fit.fit_collectives(net[~inputs.holdout.network_mask(net)])
    poisoned = net.copy()
    poisoned.loc[inputs.holdout.network_mask(poisoned), "time_s"] *= 100.0
    assert fit.fit_collectives(poisoned[~inputs.holdout.network_mask(poisoned)]) == clean
    assert set(clean["all_reduce"]["by_workers"]) == {"2", "4", "8"}


def test_unmeasured_world_size_borrows_next_larger_ring():
    p = {"by_workers": {"2": {"alpha_s": 1e-5, "busbw_Bps": 1e11}, "8": {"alpha_s": 3e-5, "busbw_Bps": 1e11}}}
    assert fit.allreduce_params(p, 4) == p["by_workers"]["8"]
    assert fit.allreduce_params(p, 16) == p["by_workers"]["8"]
    vec = fit.allreduce_time_s(p, 1.0, np.array([1e6, 1e6]), np.array([2, 4]))
    assert vec[0] == pytest.approx(fit.allreduce_time_s(p, 1.0, 1e6, 2))
    assert vec[1] == pytest.approx(fit.allreduce_time_s(p, 1.0, 1e6, 4))


def test_holdout_is_nonempty(inputs):
    h = inputs.holdout
    assert h.ops_mask(inputs.ops).sum() > 10_000
    assert h.attention_mask(inputs.attention).sum() > 1000
    assert h.network_mask(inputs.network).sum() > 100


@pytest.mark.slow
def test_shipped_parameters_are_regenerated_by_the_command(inputs):
    doc = fit.calibrate(inputs)
    shipped = json.loads(fit.PARAMS_PATH.read_text())
    for gpu in ("a100", "h100", "a40"):
        got, want = doc["gpus"][gpu]["gemm"]["token_logits"], shipped["gpus"][gpu]["gemm"]["token_logits"]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert shipped["holdout"] == doc["holdout"]


def test_validation_report(tmp_path, inputs):
    from oserve_rl.perf.validate import run

    res = run(out_dir=tmp_path, echo=lambda *_: None)
    for f in ("validation.md", "op_errors.csv", "iteration_errors.csv"):
        assert (tmp_path / f).stat().st_size > 0
    groups = set(res["ops"].index.get_level_values("group"))
    assert {"prefill linear", "decode linear", "attention", "collectives"} <= groups
    it = res["iteration"]
    assert set(res["iteration_strict"].index) == set(it.index)
    r = res["ratios"]
    assert set(r[r.point == "all (summed)"].phase) == {"prefill", "decode"}
    assert {("a100", "prefill"), ("a100", "decode"), ("h100", "prefill"), ("h100", "decode")} <= set(it.index)


def test_missing_data_dir_is_clear(tmp_path):
    from oserve_rl.errors import ConfigError

    with pytest.raises(ConfigError, match="calibration data not found.*--data-dir"):
        find_calibration_dir(tmp_path / "nope")
