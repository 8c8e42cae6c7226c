"""Which forecaster the control loop shares with every policy (and the env's observation).

``load_forecaster(spec)``: ``"lstm"`` (the bundled per-type LSTM trained on
ServeGen by ``python -m oserve_rl forecast train``), ``"ewma"``, ``"last-value"``,
``"moving-average"``, ``"oracle"``, a directory written by ``forecast train``, or
``"none"`` (no forecaster: policies that plan on forecasts refuse to run).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from oserve_rl.errors import CheckpointError


def bundled_lstm_dir() -> Path:
    return Path(str(resources.files("oserve_rl.forecast") / "data" / "lstm"))


def load_forecaster(spec: Any) -> Any:
    """A forecaster from a name or a trained directory; objects with ``predict`` pass through."""
    from oserve_rl.forecast import load_predictor, make_predictor, predictor_names

    if spec is None or hasattr(spec, "predict"):
        return spec
    s = str(spec)
    if s.lower() == "none":
        return None
    if s == "lstm":
        path = bundled_lstm_dir()
        if not path.exists():
            raise CheckpointError(f"the bundled LSTM predictor is missing at {path}; `bash scripts/setup.sh` trains "
                                  "it (or `python -m oserve_rl forecast train --source servegen:m-large --days 0-6 "
                                  f"--out {path}`), or use --predictor ewma")
        return load_predictor(path)
    if Path(s).exists():
        return load_predictor(s)
    if "/" in s or os.sep in s or (os.altsep and os.altsep in s):
        # A path, not a name: "unknown predictor" with the list of names would hide that the folder is missing.
        raise CheckpointError(f"predictor folder {s} does not exist; a predictor folder holds predictor.json "
                              "(+ weights.pt), written by `python -m oserve_rl forecast train --out DIR`; or give a "
                              f"predictor name: {', '.join(predictor_names())}, none")
    return make_predictor(s)
