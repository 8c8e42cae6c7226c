"""Bad CLI input gets one ``error:`` line naming the flag and what is valid, before any long work.

simulate, forecast, perf bench, bench env, export --param, live run/compare (validation only: no server
is ever started here; ``open_controller`` and ``run_compare`` are replaced by stand-ins that fail the
test if reached), missing sub-commands and help defaults.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from oserve_rl.__main__ import main

REPO = Path(__file__).resolve().parents[1]
LIVE_CONFIG = REPO / "configs" / "live" / "cpu-tiny-sim.yaml"
SIMULATE = ["simulate", "--cluster", "a100x8", "--model", "llama-2-70b", "--deployment", "4xTP2"]


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one ``error: ...`` line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _argparse_error(capsys, argv: list[str]) -> str:
    """An argparse usage error: SystemExit 2, usage and error lines on stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def no_trace_building(monkeypatch):
    """Fail the test if a trace is built: the flags must be rejected before that (it takes seconds)."""
    import oserve_rl.workload as workload

    def built(*args, **kwargs):
        raise AssertionError("the trace was built before the flags were checked")

    monkeypatch.setattr(workload, "load_trace", built)


# ------------------------------------------------------------------ 1, 4: simulate
def test_simulate_rejects_a_negative_seed(capsys, no_trace_building):
    line = _error(capsys, [*SIMULATE, "--trace", "azure-conv", "--arrival", "poisson:3", "--seed", "-1"])
    assert "--seed" in line and ">= 0" in line and "-1" in line


@pytest.mark.parametrize("flag, value, valid", [
    ("--num-requests", "0", ">= 1"),
    ("--num-requests", "-5", ">= 1"),
    ("--rate-scale", "0", "positive"),
    ("--rate-scale", "nan", "positive"),
    ("--duration", "0", "positive"),
    ("--slo-ttft", "0", "can never be met"),
    ("--slo-tpot", "-0.1", "can never be met"),
    ("--skip-bad-rows", "-1", ">= 0"),
])
def test_simulate_rejects_zero_and_negative_counts_and_rates(capsys, no_trace_building, flag, value, valid):
    line = _error(capsys, [*SIMULATE, "--trace", "azure-conv", flag, value])
    assert flag in line and valid in line


def test_simulate_target_rps_zero_is_not_the_default(capsys, no_trace_building):
    line = _error(capsys, [*SIMULATE, "--trace", "servegen:m-large", "--duration", "60", "--target-rps", "0"])
    assert "--target-rps" in line and "positive" in line


def test_simulate_target_rps_applies_to_servegen_only(capsys, no_trace_building):
    line = _error(capsys, [*SIMULATE, "--trace", "azure-conv", "--target-rps", "3"])
    assert "--target-rps" in line and "servegen" in line and "azure-conv" in line


@pytest.mark.parametrize("switch", ["-10:2xTP4", "10", "10:", "x:2xTP4", "inf:2xTP4"])
def test_simulate_switch_needs_t_at_least_zero_and_a_spec(capsys, no_trace_building, switch):
    line = _error(capsys, [*SIMULATE, "--trace", "azure-conv", f"--switch={switch}"])
    assert "--switch" in line and "T:SPEC" in line and "T >= 0" in line and "is empty" not in line


def test_simulate_switch_spec_is_checked_before_the_trace_is_built(capsys, no_trace_building):
    line = _error(capsys, [*SIMULATE, "--trace", "azure-conv", "--switch", "10:2xTQ4"])
    assert "--switch 10:2xTQ4" in line and "grammar" in line


def test_simulate_parse_switch_accepts_t_and_spec():
    from oserve_rl.sim.cli import parse_switch

    assert parse_switch("600:2xTP4") == (600.0, "2xTP4")
    assert parse_switch("0:4xTP2@h100") == (0.0, "4xTP2@h100")


# ------------------------------------------------------------------ 2, 9: forecast
@pytest.fixture
def no_series_building(monkeypatch):
    """Fail the test if forecast builds its series: the flags must be rejected before (seconds of work)."""
    import oserve_rl.forecast.series as series

    def built(*args, **kwargs):
        raise AssertionError("series were built before the flags were checked")

    for name in ("servegen_length_sample", "servegen_type_counts", "trace_type_counts"):
        monkeypatch.setattr(series, name, built)


@pytest.mark.parametrize("flag, value", [("--threads", "-2"), ("--threads", "0"), ("--epochs", "0"),
                                         ("--hidden-size", "0"), ("--types", "0"), ("--seed", "-1")])
def test_forecast_train_rejects_counts_below_their_minimum_up_front(capsys, tmp_path, no_series_building, flag,
                                                                     value):
    line = _error(capsys, ["forecast", "train", "--source", "servegen:m-large", flag, value,
                           "--out", str(tmp_path / "f")])
    assert flag in line and ">=" in line and value in line
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("flag, value, valid", [("--rate-scale", "0", "positive"), ("--ma-window", "0", ">= 1"),
                                                ("--ewma-alpha", "0", "(0, 1]"), ("--seed", "-1", ">= 0")])
def test_forecast_eval_rejects_bad_values_before_loading(capsys, tmp_path, no_series_building, flag, value, valid):
    # The predictor folder does not exist: the flag must be reported first, not the missing folder.
    line = _error(capsys, ["forecast", "eval", "--predictor", str(tmp_path / "nope"), "--source", "servegen:m-large",
                           flag, value])
    assert flag in line and valid in line


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps help lines


def test_forecast_help_shows_the_defaults(capsys):
    from oserve_rl.forecast.predictors import MovingAveragePredictor, train_lstm

    lstm = inspect.signature(train_lstm).parameters
    train = _help(capsys, ["forecast", "train", "-h"])
    assert f"training epochs (default {lstm['epochs'].default}" in train
    assert f"LSTM hidden units per type (default {lstm['hidden_size'].default})" in train
    window = inspect.signature(MovingAveragePredictor).parameters["window"].default
    assert f"window in minutes (default {window})" in _help(capsys, ["forecast", "eval", "-h"])


# ------------------------------------------------------------------ 3: perf bench
@pytest.mark.parametrize("n", ["-5", "0"])
def test_perf_bench_needs_at_least_one_point(capsys, monkeypatch, n):
    import oserve_rl.perf.bench as bench

    def built(*args, **kwargs):
        raise AssertionError("the bench set up before --n was checked")

    monkeypatch.setattr(bench, "replica_perf", built)
    line = _error(capsys, ["perf", "bench", "--n", n])
    assert "--n" in line and ">= 1" in line and n in line


# ------------------------------------------------------------------ 6: bench env
@pytest.mark.parametrize("flag, value", [("--episodes", "0"), ("--episodes", "-1"), ("--seed", "-1")])
def test_bench_env_rejects_no_episodes_and_negative_seeds(capsys, monkeypatch, flag, value):
    pytest.importorskip("gymnasium")
    import oserve_rl.envs.deploy as deploy

    def built(*args, **kwargs):
        raise AssertionError("the env was built before the flags were checked")

    monkeypatch.setattr(deploy, "DeployEnv", built)
    line = _error(capsys, ["bench", "env", flag, value])
    assert flag in line and ">=" in line and value in line


# ------------------------------------------------------------------ 7: export --param
@pytest.mark.parametrize("param, expected", [("hysteresis=abc", "must be a number"),
                                             ("hysteresis=true", "must be a number"),
                                             ("patience=2.5", "must be an integer"),
                                             ("latency_aware=1", "must be true or false")])
def test_export_param_of_the_wrong_type_names_the_type(capsys, tmp_path, param, expected):
    line = _error(capsys, ["export", "oserve", "--out", str(tmp_path / "x"), "--param", param])
    key = param.partition("=")[0]
    assert f"--param {key}" in line and expected in line and "not supported between" not in line
    assert not (tmp_path / "x").exists()


def test_export_param_types_accept_what_the_constructor_takes(capsys, tmp_path):
    # tpot_bound is str | float | None: a name, a number and null all pass the type check.
    for i, value in enumerate(["slo", "0.2", "null"]):
        assert main(["export", "oserve", "--out", str(tmp_path / f"x{i}"), "--param", f"tpot_bound={value}",
                     "--param", "hysteresis=1", "--param", "latency_aware=false"]) == 0
    capsys.readouterr()


# ------------------------------------------------------------------ 5: live run / compare (no servers)
class _ServersWouldStart(Exception):
    """Raised by the stand-ins for open_controller / run_compare: the checks let the command through."""


@pytest.fixture
def no_servers(monkeypatch):
    import oserve_rl.live.compare as compare
    import oserve_rl.live.controller as controller

    def start(*args, **kwargs):
        raise _ServersWouldStart

    monkeypatch.setattr(controller, "open_controller", start)
    monkeypatch.setattr(compare, "run_compare", start)


LIVE_RUN = ["live", "run", "--policy", "oserve", "--cluster", str(LIVE_CONFIG)]
LIVE_COMPARE = ["live", "compare", "--cluster", str(LIVE_CONFIG), "--trace", "azure-conv", "--deployment", "4xTP2"]


@pytest.mark.parametrize("argv", [LIVE_RUN, LIVE_COMPARE], ids=["run", "compare"])
@pytest.mark.parametrize("speed", ["0", "-2"])
def test_live_replay_speed_zero_is_rejected_before_servers(capsys, no_servers, argv, speed):
    line = _error(capsys, [*argv, "--replay-speed", speed])
    assert "--replay-speed" in line and "positive" in line


@pytest.mark.parametrize("argv", [LIVE_RUN, LIVE_COMPARE], ids=["run", "compare"])
def test_live_missing_model_folder_from_the_config_is_reported_before_servers(capsys, monkeypatch, tmp_path,
                                                                              no_servers, argv):
    monkeypatch.chdir(tmp_path)  # the config's model: runs/live/tiny-llama resolves here, and is missing
    line = _error(capsys, argv)
    assert str(tmp_path / "runs" / "live" / "tiny-llama") in line and "does not exist" in line
    assert "cpu-tiny.yaml" in line and "tiny_model.py" in line and "docs/live.md" in line


def test_live_model_flag_naming_a_missing_or_non_model_folder(capsys, tmp_path, no_servers):
    line = _error(capsys, [*LIVE_RUN, "--model", str(tmp_path / "nonexistent")])
    assert "nonexistent" in line and "--model" in line and "does not exist" in line
    line = _error(capsys, [*LIVE_RUN, "--model", str(tmp_path)])
    assert "config.json" in line and "--model" in line


def test_live_model_folder_with_config_json_passes_the_check(tmp_path, no_servers):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(_ServersWouldStart):
        main([*LIVE_RUN, "--model", str(tmp_path)])


# ------------------------------------------------------------------ 8: sub-commands and prog
@pytest.mark.parametrize("argv", [[], ["perf"], ["forecast"], ["live"], ["bench"]])
def test_missing_sub_command_says_command_not_an_internal_name(capsys, argv):
    err = _argparse_error(capsys, argv)
    assert "the following arguments are required: COMMAND" in err
    assert not any(f"required: {dest}" in err for dest in ("cmd", "perf_cmd", "forecast_cmd", "live_cmd",
                                                           "bench_cmd"))


@pytest.mark.parametrize("argv0, prog", [("/usr/local/bin/oserve-rl", "oserve-rl"),
                                         ("/repo/oserve_rl/__main__.py", "python -m oserve_rl")])
def test_usage_names_how_the_cli_was_started(capsys, monkeypatch, argv0, prog):
    monkeypatch.setattr(sys, "argv", [argv0])
    err = _argparse_error(capsys, [])
    assert err.startswith(f"usage: {prog} ")
