"""Forecasting: count series (traces, ServeGen), predictors, LSTM training, save/load, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from oserve_rl.errors import CheckpointError, ConfigError, OServeError, UnknownNameError
from oserve_rl.forecast import (
    EWMAPredictor,
    LastValuePredictor,
    LSTMPredictor,
    MovingAveragePredictor,
    OraclePredictor,
    load_predictor,
    make_predictor,
    rrmse,
    servegen_length_sample,
    servegen_type_counts,
    trace_type_counts,
    train_lstm,
    type_counts_per_min,
)
from oserve_rl.forecast.cli import main as forecast_cli
from oserve_rl.forecast.predictors import load_forecaster, save_forecaster, score_predictors
from oserve_rl.workload import RequestTyper, Trace


@pytest.fixture(scope="module")
def typer() -> RequestTyper:
    return RequestTyper.fit(servegen_length_sample("m-large", "0", n=5000, seed=0), k=4, seed=0)


def periodic_counts(minutes: int, seed: int = 0) -> np.ndarray:
    """Two types with 12- and 20-minute cycles plus Poisson noise (~2 % of the level)."""
    t = np.arange(minutes)
    rate = np.stack([2000 + 1500 * np.sin(2 * np.pi * t / 12), 1000 + 600 * np.cos(2 * np.pi * t / 20)], axis=1)
    return np.random.default_rng(seed).poisson(rate).astype(np.float64)


# ----------------------------------------------------------------------------------------------- series


def test_type_counts_per_min_bins_by_minute_and_type():
    arrival = np.array([-1.0, 0.0, 59.9, 60.0, 61.0, 179.0, 400.0])
    types = np.array([0, 0, 1, 1, 1, 0, 1])
    counts = type_counts_per_min(arrival, types, 2, start_s=0.0, minutes=3)
    assert counts.tolist() == [[1, 1], [0, 2], [1, 0]]  # -1 s and 400 s fall outside
    assert type_counts_per_min(arrival, types, 2).shape == (7, 2)  # up to the minute of the last arrival
    assert type_counts_per_min(arrival + 30, types, 3, start_s=30.0, minutes=3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    with pytest.raises(ConfigError, match="type ids"):
        type_counts_per_min(arrival, types, 1)


def test_trace_counts_drop_the_partial_last_minute(typer):
    trace = Trace(np.array([0.0, 10.0, 70.0, 130.0, 150.0]), [100] * 5, [50] * 5, name="t", source="test")
    counts, meta = trace_type_counts(trace, typer)
    assert counts.shape == (2, typer.k)
    assert counts.sum(axis=1).tolist() == [2, 1]
    assert meta.segments() == [(0, 2)]


def test_servegen_counts_shape_rate_and_determinism(typer):
    counts, meta = servegen_type_counts("m-large", typer, days="0", rate_scale=0.05, seed=0)
    assert counts.shape == (1440, typer.k) and counts.dtype == np.int64 and counts.min() >= 0
    assert meta.segments() == [(0, 1440)] and meta.start_s == 0.0
    # ~200 req/s in production, scaled by 0.05 -> ~10 req/s.
    assert 5 < counts.sum() / 86_400 < 20
    again, _ = servegen_type_counts("m-large", typer, days="0", rate_scale=0.05, seed=0)
    other, _ = servegen_type_counts("m-large", typer, days="0", rate_scale=0.05, seed=1)
    assert np.array_equal(counts, again)
    assert not np.array_equal(counts, other)
    # The seed changes the noise, not the traffic: daily totals per type agree within a few percent.
    np.testing.assert_allclose(other.sum(axis=0), counts.sum(axis=0), rtol=0.05)
    poisson, _ = servegen_type_counts("m-large", typer, days="0", rate_scale=0.05, dispersion="poisson", seed=0)
    np.testing.assert_allclose(poisson.sum(), counts.sum(), rtol=0.05)


def test_servegen_collection_gaps_are_unobserved_not_zero_load(typer):
    # m-small day 9 has collection gaps (total_rate_rps == 0) at 799,200-801,000 s and 810,000 s.
    counts, meta = servegen_type_counts("m-small", typer, days="9", rate_scale=0.01, seed=0)
    gap = (799_200 - 9 * 86_400) // 60
    assert not meta.observed[gap : gap + 40].any() and meta.observed[: gap].all()
    assert counts[~meta.observed].sum() == 0
    segments = meta.segments()
    assert len(segments) == 3 and segments[0] == (0, gap)
    # Nothing is scored (or trained) across a gap.
    p, _ = train_lstm([(counts, meta.observed)], epochs=1, hidden_size=4, progress=False)
    scores = score_predictors({"last-value": LastValuePredictor()}, counts, meta.observed, 50)
    assert scores["minutes_scored"] == sum(b - a - 50 for a, b in segments if b - a > 50)


def test_servegen_bad_arguments(typer):
    with pytest.raises(UnknownNameError, match="m-large"):
        servegen_type_counts("m-huge", typer, days="0")
    with pytest.raises(ConfigError, match="valid: 0-9"):
        servegen_type_counts("m-large", typer, days="8-10")
    with pytest.raises(ConfigError, match="FIRST-LAST"):
        servegen_type_counts("m-large", typer, days="monday")
    with pytest.raises(ConfigError, match="rate_scale"):
        servegen_type_counts("m-large", typer, days="0", rate_scale=0)


# ----------------------------------------------------------------------------------------------- metrics, baselines


def test_rrmse_formula():
    pred = np.array([[1.0, 0.0], [3.0, 1.0], [2.0, 2.0]])
    true = np.array([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    r = rrmse(pred, true)
    assert r[0] == pytest.approx(np.sqrt(2 / 3) / 2)
    assert np.isnan(r[1])  # true mean 0
    assert rrmse(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        rrmse(pred, true[:2])


def test_baselines_exact_on_hand_series():
    h = np.array([[4.0, 10.0], [8.0, 0.0], [2.0, 5.0]])
    np.testing.assert_array_equal(LastValuePredictor().predict(h), [2.0, 5.0])
    # s0 = x0; s1 = .5*8 + .5*4 = 6; s2 = .5*2 + .5*6 = 4  |  10 -> 5 -> 5
    np.testing.assert_allclose(EWMAPredictor(alpha=0.5).predict(h), [4.0, 5.0])
    np.testing.assert_allclose(EWMAPredictor(alpha=1.0).predict(h), [2.0, 5.0])
    np.testing.assert_allclose(MovingAveragePredictor(window=2).predict(h), [5.0, 2.5])
    np.testing.assert_allclose(MovingAveragePredictor(window=10).predict(h), [14 / 3, 5.0])
    np.testing.assert_allclose(OraclePredictor(h).predict(h[:1]), [8.0, 0.0])
    with pytest.raises(ConfigError, match="needs at least 1"):
        LastValuePredictor().predict(h[:0])


@pytest.mark.parametrize("predictor", [LastValuePredictor(), EWMAPredictor(0.3), MovingAveragePredictor(4)])
def test_vectorised_series_match_step_by_step(predictor):
    counts = periodic_counts(30)
    expected = np.array([predictor.predict(counts[:t]) for t in range(3, 30)])
    np.testing.assert_allclose(predictor.predict_series(counts, 3), expected)


def test_registry_and_unknown_names():
    assert isinstance(make_predictor("moving_average", window=3), MovingAveragePredictor)
    with pytest.raises(UnknownNameError, match="ewma.*last-value.*lstm"):
        make_predictor("arima")
    with pytest.raises(ConfigError, match="accepted arguments: alpha"):
        make_predictor("ewma", window=3)
    with pytest.raises(ConfigError, match="alpha"):
        make_predictor("ewma", alpha=1.5)


# ----------------------------------------------------------------------------------------------- LSTM


def test_lstm_learns_a_periodic_series_better_than_last_value():
    counts = periodic_counts(700)
    # Per-type: each type's LSTM learns its own cycle (12 and 20 minutes).
    p, hist = train_lstm([(counts[:500], np.ones(500, bool))], epochs=6, hidden_size=16, batch_size=64,
                         learning_rate=1e-2, training_data="per-type", seed=0, progress=False)
    assert hist["best_epoch"] >= 0 and len(hist["val_rrmse"]) == 6
    held_out = counts[450:]
    lstm = rrmse(p.predict_series(held_out, 50), held_out[50:])
    last = rrmse(LastValuePredictor().predict_series(held_out, 50), held_out[50:])
    assert np.all(lstm < 0.5 * last), (lstm, last)


def test_lstm_training_is_deterministic():
    counts = periodic_counts(200)
    a, _ = train_lstm([(counts, np.ones(200, bool))], epochs=2, hidden_size=8, seed=3, progress=False)
    b, _ = train_lstm([(counts, np.ones(200, bool))], epochs=2, hidden_size=8, seed=3, progress=False)
    c, _ = train_lstm([(counts, np.ones(200, bool))], epochs=2, hidden_size=8, seed=4, progress=False)
    np.testing.assert_array_equal(a.predict(counts), b.predict(counts))
    assert not np.array_equal(a.predict(counts), c.predict(counts))


def test_lstm_predictions_shape_and_short_history_padding():
    p = LSTMPredictor(num_types=2, hidden_size=8, seed=0)
    counts = periodic_counts(80)
    out = p.predict(counts)
    assert out.shape == (2,) and np.all(out >= 0)
    short = counts[:7]
    padded = np.vstack([np.repeat(short[:1], 43, axis=0), short])  # 50 minutes: earliest repeated leftwards
    np.testing.assert_allclose(p.predict(short), p.predict(padded), rtol=1e-6)
    np.testing.assert_allclose(p.predict(counts), p.predict(counts[-50:]), rtol=1e-6)  # only the last 50 matter
    series = p.predict_series(counts, 1)
    step = np.array([p.predict(counts[:t]) for t in range(1, 80)])
    np.testing.assert_allclose(series, step, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="3 types"):
        p.predict(np.ones((10, 3)))


def test_lstm_handles_idle_types():
    """A type with no requests for the whole window (scale = eps) still gives a finite forecast >= 0."""
    p = LSTMPredictor(num_types=2, hidden_size=8, seed=0)
    history = np.zeros((60, 2))
    history[:, 1] = 40.0
    out = p.predict(history)
    assert np.all(np.isfinite(out)) and np.all(out >= 0)


def test_pooled_training_gives_every_type_the_same_lstm():
    counts = periodic_counts(200)
    p, _ = train_lstm([(counts, np.ones(200, bool))], epochs=1, hidden_size=8, training_data="pooled", progress=False)
    a, b = (dict(lstm.state_dict()) for lstm in p.net.lstms)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    q, _ = train_lstm([(counts, np.ones(200, bool))], epochs=1, hidden_size=8, training_data="per-type", progress=False)
    a, b = (dict(lstm.state_dict()) for lstm in q.net.lstms)
    assert not all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    with pytest.raises(UnknownNameError, match="pooled"):
        train_lstm([(counts, np.ones(200, bool))], training_data="shared", progress=False)


def test_save_load_round_trip(tmp_path: Path):
    counts = periodic_counts(200)
    p, _ = train_lstm([(counts, np.ones(200, bool))], epochs=1, hidden_size=8, seed=0, progress=False)
    q = load_predictor(p.save(tmp_path / "lstm"))
    assert isinstance(q, LSTMPredictor) and q.params() == p.params()
    np.testing.assert_array_equal(q.predict_series(counts, 50), p.predict_series(counts, 50))
    e = load_predictor(EWMAPredictor(0.25).save(tmp_path / "ewma"))
    assert isinstance(e, EWMAPredictor) and e.alpha == 0.25
    with pytest.raises(ConfigError, match="not saved"):
        OraclePredictor(counts).save(tmp_path / "oracle")


def test_bad_checkpoints_raise_checkpoint_error(tmp_path: Path, typer):
    with pytest.raises(CheckpointError, match="no such predictor folder"):
        load_predictor(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no predictor.json"):
        load_predictor(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "predictor.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="format"):
        load_predictor(bad)
    lstm = LSTMPredictor(num_types=4, hidden_size=8).save(tmp_path / "lstm")
    (lstm / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_predictor(lstm)
    other = LSTMPredictor(num_types=4, hidden_size=16).save(tmp_path / "other")
    (lstm / "weights.pt").write_bytes((other / "weights.pt").read_bytes())
    with pytest.raises(CheckpointError, match="saved for"):
        load_predictor(lstm)
    ok = save_forecaster(tmp_path / "ok", LSTMPredictor(num_types=4, hidden_size=8), typer)
    assert load_forecaster(ok)[1].k == 4
    (ok / "typer.json").unlink()
    with pytest.raises(CheckpointError, match="typer.json"):
        load_forecaster(ok)


def test_short_series_error_names_lengths():
    with pytest.raises(ConfigError, match="30 observed minutes.*needs at least 51"):
        score_predictors({"last-value": LastValuePredictor()}, np.ones((30, 2)), None, 50, source="tiny")
    with pytest.raises(ConfigError, match="series too short"):
        train_lstm([(np.ones((40, 2)), np.ones(40, bool))], progress=False)
    with pytest.raises(ConfigError, match="70 windows.*at least 100"):  # an hour-long trace is not training data
        train_lstm([(np.ones((120, 2)), np.ones(120, bool))], progress=False)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_train_then_eval(tmp_path: Path, capsys):
    out = tmp_path / "fc"
    rc = forecast_cli(["train", "--source", "servegen:m-large", "--days", "0", "--rate-scale", "0.05",
                       "--epochs", "1", "--hidden-size", "8", "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"predictor.json", "weights.pt", "typer.json", "training.json"}
    capsys.readouterr()
    rc = forecast_cli(["eval", "--predictor", str(out), "--source", "servegen:m-large", "--days", "1",
                       "--rate-scale", "0.05", "--json", "-"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["rrmse"]) == {"lstm", "ewma", "moving-average", "last-value"}
    assert result["minutes_scored"] == 1440 - 50
    assert all(0 < v < 2 for per_type in result["rrmse"].values() for v in per_type)
    # A trace shorter than history + 1 minute: one clear error line, exit 2.
    assert forecast_cli(["eval", "--predictor", str(out), "--source", "mooncake-synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "needs at least 51" in err and err.count("\n") == 1
    assert forecast_cli(["eval", "--predictor", str(tmp_path / "nope"), "--source", "azure-conv"]) == 2
    assert "no such predictor folder" in capsys.readouterr().err


def test_errors_are_oserve_errors():
    assert issubclass(CheckpointError, OServeError) and issubclass(UnknownNameError, OServeError)
