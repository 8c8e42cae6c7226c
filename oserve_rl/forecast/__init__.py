"""Per-type arrival forecasts: OServe's one-LSTM-per-type predictor and simple baselines.

>>> import numpy as np
>>> from oserve_rl.forecast import make_predictor, rrmse
>>> history = np.array([[10.0, 2.0], [12.0, 4.0], [11.0, 3.0]])   # [minutes, types]
>>> make_predictor("last-value").predict(history)
array([11.,  3.])

See docs/forecast.md for the ServeGen-derived training series, the commands
(``python -m oserve_rl forecast train|eval``) and measured errors.
"""

from oserve_rl.forecast.predictors import (
    HISTORY_MIN,
    PREDICTORS,
    EWMAPredictor,
    LastValuePredictor,
    LSTMPredictor,
    MovingAveragePredictor,
    OraclePredictor,
    Predictor,
    load_predictor,
    make_predictor,
    predictor_names,
    rrmse,
    train_lstm,
)
from oserve_rl.forecast.series import (
    SeriesMeta,
    parse_days,
    servegen_length_sample,
    servegen_type_counts,
    trace_type_counts,
    type_counts_per_min,
)

__all__ = [
    "HISTORY_MIN",
    "PREDICTORS",
    "EWMAPredictor",
    "LSTMPredictor",
    "LastValuePredictor",
    "MovingAveragePredictor",
    "OraclePredictor",
    "Predictor",
    "SeriesMeta",
    "load_predictor",
    "make_predictor",
    "parse_days",
    "predictor_names",
    "rrmse",
    "servegen_length_sample",
    "servegen_type_counts",
    "trace_type_counts",
    "train_lstm",
    "type_counts_per_min",
]
