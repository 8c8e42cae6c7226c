"""evaluate.py's bad input: one ``error: ...`` line (exit 2) naming the flag, file key or value and what would
be valid, raised before any episode is simulated or any file written.

Each CLI test runs ``main(argv)`` in-process with ``oserve_rl.evaluation.evaluate`` replaced by a function that
fails the test: so an error that only shows after the evaluation ran (or a run that should have been refused)
is caught. One test simulates a 120 s episode of one policy (run.json's window).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oserve_rl.errors import CheckpointError, ConfigError, TraceError
from scriptload import load_script

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--cluster", "h100x16", "--model", "llama-2-70b", "--trace", "azure-conv", "--rate-scale", "2",
        "--start", "2400", "--duration", "120", "--predictor", "ewma", "--policies", "vllm_static,oserve",
        "--no-plots"]
AZURE_CONV_SPAN_S = 3501.7


cli = load_script(ROOT / "evaluate.py", "evaluate_cli_under_test")


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if evaluate.py gets as far as simulating."""
    from oserve_rl import evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate() ran: the bad input was not refused up front")

    monkeypatch.setattr(evaluation, "evaluate", refuse)


def _error(capsys, argv: list[str]) -> str:
    """Run evaluate.py's main; it must refuse with exit code 2 and exactly one `error:` line."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text("cluster: h100x16\nmodel: llama-2-70b\ntrace: azure-conv\nduration: 120\nstart: 2400\n"
                    "predictor: ewma\nno_plots: true\n" + body)
    return path


# 1, 8 ------------------------------------------------------------------- --start
def test_start_must_be_seconds_or_random(capsys, no_evaluation, tmp_path):
    out = ["--out", str(tmp_path / "out")]
    assert _error(capsys, [*BASE, *out, "--start", "rnd"]) == \
        "error: --start: expected seconds >= 0 or 'random', got 'rnd'"


def test_negative_start_is_refused(capsys, no_evaluation, tmp_path):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--start", "-100"])
    assert "--start" in msg and "seconds >= 0" in msg and "-100" in msg
    msg = _error(capsys, ["--config", str(_config(tmp_path, "start: -5\n"))])
    assert "eval.yaml: start" in msg and "-5" in msg


# 2 ---------------------------------------------------------------------- --seeds
@pytest.mark.parametrize("seeds", ["a,b", "-1", "1.5", "0,0"])
def test_seeds_must_be_distinct_whole_numbers(capsys, no_evaluation, tmp_path, seeds):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--seeds", seeds])
    assert "--seeds" in msg and "whole numbers >= 0" in msg


def test_seeds_in_a_config_file_are_checked(capsys, no_evaluation, tmp_path):
    cfg = _config(tmp_path, "seeds: [a]\n")
    msg = _error(capsys, ["--config", str(cfg), "--out", str(tmp_path / "out")])
    assert f"{cfg}: seeds" in msg and "'a'" in msg


def test_the_library_refuses_negative_seeds_before_building_episodes():
    from oserve_rl.evaluation import evaluate
    from oserve_rl.policy import Scenario

    with pytest.raises(ConfigError, match="seeds must be whole numbers >= 0"):
        evaluate(Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=120), ["vllm_static"], seeds=[-1])


# 3 ------------------------------------------------------------------- --interval
@pytest.mark.parametrize("interval", ["0", "-5", "nan"])
def test_interval_must_be_positive(capsys, no_evaluation, tmp_path, interval):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--interval", interval])
    assert msg.startswith("error: --interval: expected simulated seconds > 0")


def test_the_library_refuses_a_zero_interval_before_building_episodes():
    from oserve_rl.evaluation import evaluate
    from oserve_rl.policy import Scenario

    with pytest.raises(ConfigError, match="interval_s must be simulated seconds > 0"):
        evaluate(Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=120), ["vllm_static"], interval_s=0)


# 4 ------------------------------------------------------------ --config value types
@pytest.mark.parametrize(("line", "key"), [
    ("duration: long", "duration"), ("jobs: many", "jobs"), ("jobs: 0", "jobs"), ("num_types: 2.5", "num_types"),
    ("interval: [60]", "interval"), ("mode: turbo", "mode"), ("no_plots: 'yes'", "no_plots"),
    ("decision_delay: -1", "decision_delay"), ("rate_scale: [2, x]", "rate_scale"), ("policies: {a: 1}", "policies"),
    ("policy_params: [oserve]", "policy_params"), ("slo_ttft: fast", "slo_ttft"), ("out: 3", "out"),
    ("cluster: 16", "cluster"),
])
def test_every_config_key_is_type_checked(capsys, no_evaluation, tmp_path, line, key):
    cfg = _config(tmp_path, line + "\n")
    msg = _error(capsys, ["--config", str(cfg), *(["--out", str(tmp_path / "out")] if key != "out" else [])])
    assert msg.startswith(f"error: {cfg}: {key}: expected "), msg


# 5 ------------------------------------------------------------------------ --out
def test_out_that_is_a_file_is_refused_before_the_evaluation(capsys, no_evaluation, tmp_path):
    (tmp_path / "taken").write_text("")
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "taken")])
    assert "--out" in msg and "not a directory" in msg


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_out_that_cannot_be_created_is_refused_before_the_evaluation(capsys, no_evaluation):
    msg = _error(capsys, [*BASE, "--out", "/proc/forbidden"])
    assert "--out /proc/forbidden: cannot write there" in msg


def test_the_out_check_leaves_nothing_behind(capsys, tmp_path):
    # A later error (an unknown policy): the directories the --out check created to probe are gone again.
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "a" / "b"), "--policies", "vllm_statik"])
    assert "vllm_static" in msg and not (tmp_path / "a").exists()


def test_json_that_is_a_directory_is_refused(capsys, no_evaluation, tmp_path):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--json", str(tmp_path)])
    assert "--json" in msg and "is a directory" in msg


# 6 -------------------------------------------------------------- checkpoint kinds
def _fake_run(tmp_path: Path, config: str) -> Path:
    """A run directory as train.py leaves it, with a model.zip that is no checkpoint (nothing here loads one)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config)
    (run / "model.zip").write_bytes(b"not a zip")
    return run / "model.zip"


@pytest.mark.parametrize("kind", ["ppo", "dqn"])
def test_a_checkpoint_of_another_kind_names_the_kind_that_saved_it(capsys, no_evaluation, tmp_path, kind):
    model = _fake_run(tmp_path, "env: {}\nbackend: sb3\nalgo: maskable_ppo\n")
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--policies", f"vllm_static,{kind}:{model}"])
    assert f"checkpoint {model} was saved by maskable_ppo" in msg and f"not {kind}" in msg
    assert f"use maskable_ppo:{model}" in msg


def test_an_rllib_run_named_as_sb3_says_rllib(tmp_path):
    from oserve_rl.envs.checkpoints import check_kind

    model = _fake_run(tmp_path, "env: {}\nbackend: rllib\nalgo: maskable_ppo\n")
    with pytest.raises(CheckpointError, match=r"saved by rllib \(backend: rllib"):
        check_kind("ppo", model)
    check_kind("rllib", model)


def test_a_checkpoint_that_does_not_load_as_its_kind_is_a_checkpoint_error(tmp_path):
    from oserve_rl.envs.checkpoints import load_actor

    model = _fake_run(tmp_path, "env: {}\n")  # no algo recorded: the load error itself must be one clear error
    with pytest.raises(CheckpointError, match=r"cannot load .* as a dqn checkpoint .*the kind must be the algorithm"):
        load_actor("dqn", model)


def test_help_shows_the_quickstart_as_maskable_ppo():
    doc = cli.build_parser().format_help()
    assert "maskable_ppo:runs/quickstart/model.zip" in doc and ",ppo:runs/quickstart" not in doc


# 7 ------------------------------------------------------------- zero is not "unset"
@pytest.mark.parametrize(("flag", "value"), [("--max-model-len", "0"), ("--num-types", "0"), ("--jobs", "0"),
                                             ("--duration", "0"), ("--decision-delay", "-1"),
                                             ("--decision-time-scale", "-1"), ("--rate-scale", "0")])
def test_zero_and_negative_values_are_errors_not_defaults(capsys, no_evaluation, tmp_path, flag, value):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), flag, value])
    assert msg.startswith(f"error: {flag}: expected "), msg


def test_max_model_len_zero_in_a_config_file_is_an_error(capsys, no_evaluation, tmp_path):
    cfg = _config(tmp_path, "max_model_len: 0\n")
    msg = _error(capsys, ["--config", str(cfg), "--out", str(tmp_path / "out")])
    assert f"{cfg}: max_model_len: expected a context length in tokens >= 1, got 0" in msg


# 9 ------------------------------------------------------------------ policy_params
def test_policy_params_for_a_policy_not_evaluated_is_an_error(capsys, no_evaluation, tmp_path):
    cfg = _config(tmp_path, "policies: [oserve]\npolicy_params:\n  osrve: {switch_margin: 0.2}\n")
    msg = _error(capsys, ["--config", str(cfg), "--out", str(tmp_path / "out")])
    assert f"{cfg}: policy_params: 'osrve' is not a policy being evaluated (policies: oserve)" in msg
    assert "did you mean 'oserve'" in msg


def test_the_library_refuses_policy_params_for_a_policy_not_evaluated():
    from oserve_rl.evaluation import evaluate
    from oserve_rl.policy import Scenario

    with pytest.raises(ConfigError, match="'osrve' is not a policy being evaluated"):
        evaluate(Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=120), ["oserve"],
                 policy_params={"osrve": {}})


# 10 ---------------------------------------------------------- windows past the end
# The env runs its validation windows as given (the quickstart's [2400, 3600) s on the 3501.7 s azure-conv trace),
# so evaluate.py, which reproduces them, runs such a window too, and says and records where its arrivals end.
def test_a_window_past_the_end_of_the_trace_is_reported_before_it_runs(capsys, no_evaluation, tmp_path):
    with pytest.raises(AssertionError, match="evaluate\\(\\) ran"):
        cli.main([*BASE, "--out", str(tmp_path / "out"), "--start", "3400", "--duration", "1200"])
    err = capsys.readouterr().err
    assert "note: the window [3400, 4600) s runs past the end of trace 'azure-conv' (3501.7 s)" in err
    assert "first 101.7 s only" in err and "still runs 1200 s" in err


def test_a_start_past_the_end_of_the_trace_names_the_flag(capsys, no_evaluation, tmp_path):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--start", "3600"])
    assert msg == f"error: --start 3600: past the end of trace 'azure-conv' ({AZURE_CONV_SPAN_S} s); give a start in " \
                  f"[0, {AZURE_CONV_SPAN_S})"


def test_run_json_records_the_arrival_window():
    from oserve_rl.evaluation import trace_window
    from oserve_rl.policy import Scenario

    past = trace_window(Scenario("h100x16", "llama-2-70b", "azure-conv", duration_s=1200, start_s=3400))
    assert past["past_trace_end"] and past["duration_s"] == 1200
    assert past["arrivals_s"] == pytest.approx(101.72, abs=0.01)
    inside = trace_window(Scenario("h100x16", "llama-2-70b", "azure-conv", duration_s=600, start_s=2400))
    assert not inside["past_trace_end"] and inside["arrivals_s"] == 600
    whole = trace_window(Scenario("h100x16", "llama-2-70b", "azure-conv", start_s=3400))
    assert not whole["past_trace_end"] and whole["duration_s"] == pytest.approx(101.72, abs=0.01)
    drawn = trace_window(Scenario("h100x16", "llama-2-70b", "azure-conv", duration_s=5000, start_s="random"))
    assert drawn["past_trace_end"] and drawn["arrivals_s"] == pytest.approx(AZURE_CONV_SPAN_S, abs=0.05)


def test_the_written_run_json_has_the_window(tmp_path):
    from oserve_rl.evaluation import evaluate
    from oserve_rl.policy import Scenario

    table = evaluate(Scenario("h100x8", "llama-2-70b", "azure-conv", duration_s=120, start_s=3420), ["vllm_static"],
                     progress=False, decision_delay_s=0.0)
    table.write(tmp_path, plots=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["scenario"]["duration_s"] == 120 and run["window"]["past_trace_end"] is True
    assert run["window"]["arrivals_s"] == pytest.approx(81.72, abs=0.01)


# 11, 12 ------------------------------------------------------------- trace files
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def test_bad_rows_hint_names_the_load_trace_option_and_the_command_with_the_flag(tmp_path):
    from oserve_rl.workload.loaders import load_azure

    path = tmp_path / "bad.csv"
    path.write_text(AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,x,3\n")
    with pytest.raises(TraceError) as info:
        load_azure(path)
    msg = str(info.value)
    assert "skip_bad_rows=0" in msg and "load_trace(..., skip_bad_rows=N)" in msg
    assert "python -m oserve_rl simulate --skip-bad-rows N" in msg and "CLI: --skip-bad-rows" not in msg


def test_unsorted_hint_names_the_load_trace_option_and_the_command_with_the_flag(tmp_path):
    from oserve_rl.workload.loaders import load_azure

    path = tmp_path / "unsorted.csv"
    path.write_text(AZURE_HEADER + "2023-11-16 18:15:47,5,3\n2023-11-16 18:15:40,5,3\n")
    with pytest.raises(TraceError) as info:
        load_azure(path)
    msg = str(info.value)
    assert "sort=True" in msg and "load_trace(..., sort=True)" in msg and "python -m oserve_rl simulate --sort" in msg
    assert "CLI: --sort" not in msg


def test_evaluate_on_a_bad_trace_file_does_not_suggest_a_flag_it_lacks(capsys, no_evaluation, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,x,3\n")
    msg = _error(capsys, ["--cluster", "h100x16", "--model", "llama-2-70b", "--trace", str(path), "--duration", "1",
                          "--out", str(tmp_path / "out")])
    assert str(path) in msg and "simulate --skip-bad-rows" in msg and "CLI:" not in msg


@pytest.mark.parametrize(("text", "field"), [
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,5\n", "GeneratedTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,,5\n", "ContextTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n,5,5\n", "TIMESTAMP"),
])
def test_a_short_azure_row_says_the_field_is_missing(tmp_path, text, field):
    from oserve_rl.workload.loaders import load_azure

    path = tmp_path / "short.csv"
    path.write_text(text)
    with pytest.raises(TraceError) as info:
        load_azure(path)
    msg = str(info.value)
    assert f"data row 2 (line 3), field {field!r}: missing" in msg and "nan" not in msg.lower()


def test_a_short_length_pool_row_says_the_field_is_missing(tmp_path):
    from oserve_rl.workload.loaders import load_length_pool

    path = tmp_path / "pool.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n10,20\n30\n")
    with pytest.raises(TraceError, match=r"data row 2 \(line 3\), field 'num_decode_tokens': missing"):
        load_length_pool(path)


# 13 ------------------------------------------------------------------ policy specs
def test_a_checkpoint_kind_without_a_path_says_so(capsys, no_evaluation, tmp_path):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--policies", "ppo:"])
    assert msg == "error: ppo: needs a checkpoint path, e.g. ppo:runs/NAME/model.zip"


def test_an_unknown_checkpoint_kind_lists_the_kinds_and_the_policies(capsys, no_evaluation, tmp_path):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--policies", "sac:/tmp/x.zip"])
    assert "'sac' is not a checkpoint kind" in msg and "cannot import" not in msg
    for name in ("ppo", "maskable_ppo", "dqn", "a2c", "rllib", "vllm_static", "oserve", "FILE.py:ClassName"):
        assert name in msg


def test_your_own_policy_specs_still_parse(tmp_path):
    from oserve_rl.evaluation import policy_entry

    mine = tmp_path / "mine.py"
    mine.write_text("from oserve_rl.policy import Policy\n\n\nclass Mine(Policy):\n    pass\n")
    assert policy_entry(f"{mine}:Mine") == f"{mine}:Mine"
    assert policy_entry("vllm_static") == "vllm_static"
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'|'no_such_module' is not a checkpoint kind"):
        policy_entry("no_such_module:Fixed")


# 14 --------------------------------------------------------------- predictor paths
def test_a_predictor_path_that_does_not_exist_says_so(capsys, no_evaluation, tmp_path):
    msg = _error(capsys, [*BASE, "--out", str(tmp_path / "out"), "--predictor", "/nonexistent/dir"])
    assert "predictor folder /nonexistent/dir does not exist" in msg and "forecast train" in msg
    assert "unknown predictor" not in msg


def test_a_predictor_name_typo_still_lists_the_names():
    from oserve_rl.policy.forecasting import load_forecaster

    with pytest.raises(ConfigError, match="unknown predictor 'ewmaa'.*ewma"):
        load_forecaster("ewmaa")
