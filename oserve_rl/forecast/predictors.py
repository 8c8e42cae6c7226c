"""Next-minute arrival forecasts per request type (OServe's predictor and baselines).

Every predictor maps the per-minute counts seen so far, ``history_counts``
(``[t, J]``: t minutes, J types, oldest first), to the expected counts of the
next minute (``[J]``, >= 0):

=================  ==========================================================
``last-value``     the last observed minute
``ewma``           exponentially weighted mean, ``s = a x_t + (1 - a) s``,
                   started at the first minute
``moving-average`` mean of the last ``window`` minutes (fewer if fewer seen)
``lstm``           OServe: one small LSTM per type over the last 50 minutes
``oracle``         the true next minute, from a known future (an upper bound)
=================  ==========================================================

The LSTM sees each type's window divided by the window mean (+ ``eps``) and
predicts the next minute in the same units, so a model trained on ServeGen's
production rates applies to a trace a hundred times smaller. With fewer than
``history_min`` observed minutes the window is left-padded with the earliest
observed minute; training pads a share of its windows the same way, so this
is a mode the model was trained for, not an extrapolation.

Saved predictors are a folder: ``predictor.json`` (kind, version, parameters)
and, for the LSTM, ``weights.pt`` (tensors only; loaded with
``weights_only=True``, so a checkpoint cannot run code).

>>> import numpy as np
>>> p = make_predictor("ewma", alpha=0.5)
>>> p.predict(np.array([[4.0, 0.0], [8.0, 2.0]]))
array([6., 1.])
>>> rrmse(np.array([[1.0], [3.0]]), np.array([[2.0], [2.0]]))
array([0.5])
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from oserve_rl.errors import CheckpointError, ConfigError, OServeError, UnknownNameError

FORMAT = "oserve-forecast-predictor"
FORMAT_VERSION = 1
HISTORY_MIN = 50
TRAINING_DATA = ("pooled", "per-type")
LEVEL_DIV = 10.0  # log(count) / 10: O(1) for counts up to ~20,000 per minute


def rrmse(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Relative RMSE per type: ``sqrt(mean((pred - true)^2)) / mean(true)``, means over minutes (axis 0).

    ``pred`` and ``true`` are ``[minutes, J]`` (or ``[minutes]``, giving a
    scalar array). A type whose true mean is 0 gets NaN.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim not in (1, 2) or len(pred) == 0:
        raise ConfigError(f"rrmse: pred {pred.shape} and true {true.shape} must be equal, non-empty [minutes(, J)]")
    rmse = np.sqrt(np.mean((pred - true) ** 2, axis=0))
    mean = np.mean(true, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, rmse / np.where(mean > 0, mean, 1.0), np.nan)


def _whole(who: str, label: str, v: Any, lo: int) -> None:
    """A whole-number argument (a Python or numpy integer, or a float with no fraction): ConfigError otherwise."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    if not (ok and math.isfinite(v) and float(v).is_integer() and v >= lo):
        raise ConfigError(f"{who}: {label} must be an integer >= {lo}, got {v!r}")


def _as_history(history_counts: np.ndarray, who: str, min_minutes: int, num_types: int | None) -> np.ndarray:
    try:
        h = np.asarray(history_counts, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{who}: history_counts must be a numeric [minutes, types] array of counts, got "
                          f"{history_counts!r:.80}") from None
    if h.ndim != 2:
        raise ConfigError(f"{who}: history_counts must be [minutes, types], got shape {h.shape}")
    if num_types is not None and h.shape[1] != num_types:
        raise ConfigError(f"{who}: history has {h.shape[1]} types, this predictor was built for {num_types}")
    if len(h) < min_minutes:
        raise ConfigError(f"{who}: history has {len(h)} minutes, needs at least {min_minutes}")
    if not np.all(np.isfinite(h)) or (h < 0).any():
        raise ConfigError(f"{who}: history_counts must be finite and >= 0")
    return h


class Predictor:
    """Interface: ``predict(history [t, J]) -> [J]`` next-minute counts (>= 0).

    ``predict_series(counts, first_min)`` gives the one-step-ahead forecast of
    every minute ``t >= first_min`` from ``counts[:t]`` (subclasses vectorise it).
    """

    name: ClassVar[str] = "predictor"
    min_history_min: int = 1
    num_types: int | None = None

    def predict(self, history_counts: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_series(self, counts: np.ndarray, first_min: int) -> np.ndarray:
        """``[T - first_min, J]``: row ``i`` forecasts minute ``first_min + i`` from the minutes before it."""
        counts = _as_history(counts, self.name, 0, self.num_types)
        self._check_first(len(counts), first_min)
        return np.array([self.predict(counts[:t]) for t in range(first_min, len(counts))]).reshape(-1, counts.shape[1])

    def _check_first(self, minutes: int, first_min: int) -> None:
        if isinstance(first_min, (bool, np.bool_)) or not isinstance(first_min, (int, np.integer)):
            raise ConfigError(f"{self.name}: first_min must be a whole number of minutes (an int), got {first_min!r}")
        if not self.min_history_min <= first_min < minutes:
            raise ConfigError(
                f"{self.name}: forecasting from minute {first_min} of a {minutes}-minute series; "
                f"need {self.min_history_min} <= first_min < {minutes}"
            )

    def params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able)."""
        return {}

    def save(self, path: str | Path) -> Path:
        """Write the predictor to folder ``path`` (created); returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "name": self.name, "params": self.params()}
        (path / "predictor.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class LastValuePredictor(Predictor):
    """Next minute = last minute."""

    name = "last-value"

    def predict(self, history_counts: np.ndarray) -> np.ndarray:
        return _as_history(history_counts, self.name, 1, None)[-1].copy()

    def predict_series(self, counts: np.ndarray, first_min: int) -> np.ndarray:
        counts = _as_history(counts, self.name, 0, None)
        self._check_first(len(counts), first_min)
        return counts[first_min - 1 : -1].copy()


class EWMAPredictor(Predictor):
    """Exponentially weighted moving average: ``s_0 = x_0``, ``s_t = alpha x_t + (1 - alpha) s_{t-1}``."""

    name = "ewma"

    def __init__(self, alpha: float = 0.5):
        if (isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating))
                or not 0 < alpha <= 1):
            raise ConfigError(f"ewma: alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _smooth(self, x: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        a = self.alpha
        return lfilter([a], [1.0, a - 1.0], x, axis=0, zi=(1.0 - a) * x[:1])[0]

    def predict(self, history_counts: np.ndarray) -> np.ndarray:
        return self._smooth(_as_history(history_counts, self.name, 1, None))[-1]

    def predict_series(self, counts: np.ndarray, first_min: int) -> np.ndarray:
        counts = _as_history(counts, self.name, 0, None)
        self._check_first(len(counts), first_min)
        return self._smooth(counts)[first_min - 1 : -1]


class MovingAveragePredictor(Predictor):
    """Mean of the last ``window`` minutes (of all minutes while fewer have been seen)."""

    name = "moving-average"

    def __init__(self, window: int = 5):
        _whole("moving-average", "window", window, 1)
        self.window = int(window)

    def params(self) -> dict[str, Any]:
        return {"window": self.window}

    def predict(self, history_counts: np.ndarray) -> np.ndarray:
        return _as_history(history_counts, self.name, 1, None)[-self.window :].mean(axis=0)

    def predict_series(self, counts: np.ndarray, first_min: int) -> np.ndarray:
        counts = _as_history(counts, self.name, 0, None)
        self._check_first(len(counts), first_min)
        cum = np.vstack([np.zeros((1, counts.shape[1])), np.cumsum(counts, axis=0)])
        t = np.arange(first_min, len(counts))
        lo = np.maximum(t - self.window, 0)
        return (cum[t] - cum[lo]) / (t - lo)[:, None]


class OraclePredictor(Predictor):
    """The true next minute: ``true_counts[start_min + len(history)]``.

    ``true_counts`` is the whole series the histories are cut from, and a
    history is assumed to start at its minute ``start_min``. An upper bound on
    what forecasting can give, for the ``oserve_oracle`` policy.
    """

    name = "oracle"
    min_history_min = 0

    def __init__(self, true_counts: np.ndarray, start_min: int = 0):
        self.true_counts = _as_history(true_counts, self.name, 1, None)
        _whole("oracle", "start_min", start_min, 0)
        self.num_types = self.true_counts.shape[1]
        self.start_min = int(start_min)

    def params(self) -> dict[str, Any]:
        return {"minutes": len(self.true_counts), "start_min": self.start_min}

    def predict(self, history_counts: np.ndarray) -> np.ndarray:
        h = _as_history(history_counts, self.name, 0, self.num_types)
        t = self.start_min + len(h)
        if t >= len(self.true_counts):
            raise ConfigError(f"oracle: asked for minute {t}, the true series has {len(self.true_counts)} minutes")
        return self.true_counts[t].copy()

    def save(self, path: str | Path) -> Path:
        raise ConfigError("oracle: holds the true future of one series, so it is not saved; rebuild it from the series")


# ------------------------------------------------------------------------------------------------ LSTM


SMALL_BATCH = 256  # windows up to which one thread is faster than torch's pool (an episode's forecasts: ~30)


def _torch():
    import torch  # imported lazily: the baselines and the CLI's help should not pay for torch

    return torch


def _build_net(num_types: int, hidden_size: int, num_layers: int):
    """One LSTM + linear head per type, applied to that type's normalised window."""
    torch = _torch()
    nn = torch.nn

    class TypeLSTMs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstms = nn.ModuleList(
                nn.LSTM(2, hidden_size, num_layers=num_layers, batch_first=True) for _ in range(num_types)
            )
            self.heads = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_types))

        def forward(self, x, scale):  # x: [batch, minutes, types] normalised, scale: [batch, types] -> [batch, types]
            # Second input channel: the window's level (log count), constant over the window. Relative noise
            # shrinks with the level (Poisson: 1/sqrt(count)), so the best smoothing depends on it.
            level = (torch.log(scale) / LEVEL_DIV)[:, None, :].expand_as(x)
            outs = []
            for j, (lstm, head) in enumerate(zip(self.lstms, self.heads)):
                h = lstm(torch.stack([x[:, :, j], level[:, :, j]], dim=2))[0][:, -1]
                outs.append(head(h))
            # A correction to the last minute: untrained, this is the last-value forecast.
            return x[:, -1, :] + torch.cat(outs, dim=1)

    return TypeLSTMs()


def _normalise(windows, eps: float):
    """Windows ``[B, H, J]`` divided by their per-type mean + eps; returns (normalised, scale ``[B, J]``)."""
    scale = windows.mean(dim=1) + eps
    return windows / scale[:, None, :], scale


def _left_pad(history: np.ndarray, history_min: int) -> np.ndarray:
    """The last ``history_min`` rows; fewer are left-padded with the earliest observed row."""
    h = history[-history_min:]
    if len(h) < history_min:
        h = np.vstack([np.repeat(h[:1], history_min - len(h), axis=0), h])
    return h


LSTM_MAX_COUNT = 1e30  # the network runs in float32 (max ~3.4e38): larger counts would overflow to inf/NaN


def _check_lstm_range(h: np.ndarray) -> np.ndarray:
    """Counts the float32 network can carry: larger ones would come out as NaN, so they are refused."""
    if h.size and h.max() > LSTM_MAX_COUNT:
        raise ConfigError(f"lstm: history_counts must be <= {LSTM_MAX_COUNT:g} requests a minute (the network runs "
                          f"in float32), got a maximum of {h.max():g}")
    return h


class LSTMPredictor(Predictor):
    """OServe's forecaster: one LSTM per type, last ``history_min`` minutes -> next minute.

    Untrained when constructed (seeded weights); see :func:`train_lstm`. Any
    history of >= 1 minute works: shorter than ``history_min`` is left-padded
    with the earliest minute (a mode trained for).

    >>> import numpy as np
    >>> p = LSTMPredictor(num_types=2, seed=0)
    >>> p.predict(np.ones((60, 2))).shape
    (2,)
    """

    name = "lstm"

    def __init__(
        self,
        num_types: int = 4,
        history_min: int = HISTORY_MIN,
        hidden_size: int = 32,
        num_layers: int = 1,
        eps: float = 1.0,
        seed: int = 0,
        info: dict[str, Any] | None = None,
    ):
        for label, v, lo in (("num_types", num_types, 1), ("history_min", history_min, 2),
                             ("hidden_size", hidden_size, 1), ("num_layers", num_layers, 1)):
            _whole("lstm", label, v, lo)
        _whole("lstm", "seed", seed, 0)
        if (isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating))
                or not (math.isfinite(eps) and eps > 0)):
            raise ConfigError(f"lstm: eps must be a finite number > 0, got {eps!r}")
        torch = _torch()
        self.num_types, self.history_min = int(num_types), int(history_min)
        self.hidden_size, self.num_layers, self.eps, self.seed = int(hidden_size), int(num_layers), float(eps), int(seed)
        self.info = dict(info or {})  # how it was trained (JSON-able), saved with it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = _build_net(self.num_types, self.hidden_size, self.num_layers)
        self.net.eval()

    def params(self) -> dict[str, Any]:
        return {"num_types": self.num_types, "history_min": self.history_min, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "eps": self.eps, "seed": self.seed}

    def _forward_counts(self, windows: np.ndarray) -> np.ndarray:
        """``[B, H, J]`` raw count windows -> ``[B, J]`` predicted counts."""
        torch = _torch()
        with torch.inference_mode():
            x = torch.as_tensor(windows, dtype=torch.float32)
            xn, scale = _normalise(x, self.eps)
            out = torch.clamp(self.net(xn, scale), min=0.0) * scale
        return out.double().numpy()

    def _forward_small(self, windows: np.ndarray) -> np.ndarray:
        """``_forward_counts`` on one thread, for a few windows.

        A few windows are far too small to split across threads: with torch's default pool, threads spinning
        on a busy 2-core machine cost 15-85 ms of CPU per call against ~1 ms on one thread, with identical
        outputs. The caller's setting is restored (training keeps its own).
        """
        torch = _torch()
        n = torch.get_num_threads()
        if n != 1:
            torch.set_num_threads(1)
        try:
            return self._forward_counts(windows)
        finally:
            if n != 1:
                torch.set_num_threads(n)

    def predict(self, history_counts: np.ndarray) -> np.ndarray:
        h = _check_lstm_range(_as_history(history_counts, self.name, 1, self.num_types))
        return self._forward_small(_left_pad(h, self.history_min)[None])[0]

    def predict_series(self, counts: np.ndarray, first_min: int, batch: int = 4096) -> np.ndarray:
        counts = _check_lstm_range(_as_history(counts, self.name, 0, self.num_types))
        self._check_first(len(counts), first_min)
        H = self.history_min
        # Left-pad the whole series once so that every window is a plain slice.
        padded = np.vstack([np.repeat(counts[:1], H - 1, axis=0), counts])
        out = []
        for lo in range(first_min, len(counts), batch):
            t = np.arange(lo, min(lo + batch, len(counts)))
            # Minute t's window is counts[t-H:t]; where t < H the padding must repeat counts[0], which it does.
            idx = t[:, None] - H + np.arange(H)[None, :] + (H - 1)
            out.append(self._forward_small(padded[idx]) if len(t) <= SMALL_BATCH else self._forward_counts(padded[idx]))
        return np.concatenate(out)

    def save(self, path: str | Path) -> Path:
        torch = _torch()
        path = super().save(path)
        meta = json.loads((path / "predictor.json").read_text())
        meta["info"] = self.info
        (path / "predictor.json").write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        torch.save({"format": FORMAT, "version": FORMAT_VERSION, "params_json": json.dumps(self.params()),
                    "state_dict": state}, path / "weights.pt")
        return path


# ------------------------------------------------------------------------------------------------ registry

PREDICTORS: dict[str, type[Predictor]] = {
    cls.name: cls
    for cls in (LastValuePredictor, EWMAPredictor, MovingAveragePredictor, LSTMPredictor, OraclePredictor)
}


def predictor_names() -> tuple[str, ...]:
    return tuple(sorted(PREDICTORS))


def make_predictor(name: str, **kwargs: Any) -> Predictor:
    """A predictor by registry name (``ewma``, ``lstm``, ...; ``_`` works for ``-``) with constructor kwargs."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in PREDICTORS:
        raise UnknownNameError("predictor", name, PREDICTORS)
    try:
        return PREDICTORS[key](**kwargs)
    except OServeError:  # the constructor's own message names the argument
        raise
    except (TypeError, ValueError) as exc:  # wrong keyword: name what is accepted
        import inspect

        accepted = [p for p in inspect.signature(PREDICTORS[key].__init__).parameters if p != "self"]
        raise ConfigError(f"predictor {key!r}: {exc}; accepted arguments: {', '.join(accepted) or 'none'}") from None


def load_predictor(path: str | Path) -> Predictor:
    """A predictor saved with ``Predictor.save``; :class:`CheckpointError` if ``path`` is not one."""
    path = Path(path)
    meta_path = path / "predictor.json"
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such predictor folder (expected predictor.json [+ weights.pt] inside)")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a predictor folder (no predictor.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an oserve-rl forecast predictor (format != {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format version {meta.get('version')!r}, this code reads {FORMAT_VERSION}")
    name = meta.get("name")
    if name not in PREDICTORS or name == "oracle":
        raise CheckpointError(f"{meta_path}: unknown predictor kind {name!r} (valid: {', '.join(predictor_names())})")
    try:
        predictor = PREDICTORS[name](**meta.get("params", {}))
    except (TypeError, ValueError) as exc:  # a ConfigError from the constructor too: the file is at fault
        raise CheckpointError(f"{meta_path}: bad parameters for {name!r}: {exc}") from None
    if isinstance(predictor, LSTMPredictor):
        predictor.info = dict(meta.get("info") or {})
        _load_weights(predictor, path / "weights.pt")
    return predictor


def _load_weights(predictor: LSTMPredictor, weights_path: Path) -> None:
    torch = _torch()
    try:
        blob = torch.load(weights_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: missing (an lstm predictor folder holds predictor.json and weights.pt)") from None
    except Exception as exc:  # torch raises several types for corrupt or non-tensor files
        raise CheckpointError(f"{weights_path}: not a readable tensor checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise CheckpointError(f"{weights_path}: not an oserve-rl forecast checkpoint")
    if json.loads(blob.get("params_json", "{}")) != predictor.params():
        raise CheckpointError(f"{weights_path}: weights were saved for {blob.get('params_json')}, "
                              f"predictor.json says {json.dumps(predictor.params())}")
    try:
        predictor.net.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights_path}: weights do not fit the network: {str(exc).splitlines()[0]}") from None
    predictor.net.eval()


# ------------------------------------------------------------------------------------------------ training


def _training_windows(series: Sequence[tuple[np.ndarray, np.ndarray]], history_min: int, val_fraction: float):
    """(history + target) windows inside observed stretches, per series: lists of train and validation ``[N, H + 1, J]``.

    Per series, the last ``val_fraction`` of the target minutes is validation
    (a time split, as OServe's 9:1); validation targets whose history reaches
    into the training targets are kept, since the model never trains on them.
    """
    train, val = [], []
    for counts, observed in series:
        counts = np.asarray(counts, dtype=np.float32)
        observed = np.asarray(observed, dtype=bool)
        if observed.shape != (len(counts),):
            raise ConfigError(f"train_lstm: observed mask {observed.shape} does not match counts {counts.shape}")
        ok = np.concatenate(([0], np.cumsum(~observed)))  # unobserved minutes before index i
        t = np.arange(history_min, len(counts))
        t = t[ok[t + 1] - ok[t - history_min] == 0]  # window and target all observed
        cut = int(round(len(t) * (1.0 - val_fraction)))
        if cut == 0 or cut == len(t):
            continue
        windows = counts[t[:, None] - history_min + np.arange(history_min + 1)[None, :]]
        train.append(windows[:cut])
        val.append(windows[cut:])
    return train, val


def train_lstm(
    series: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    num_types: int | None = None,
    history_min: int = HISTORY_MIN,
    hidden_size: int = 32,
    num_layers: int = 1,
    eps: float = 1.0,
    epochs: int = 6,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    pad_prob: float = 0.2,
    val_fraction: float = 0.1,
    training_data: str = "pooled",
    min_windows: int = 100,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool | Callable[[dict[str, Any]], None] = True,
) -> tuple[LSTMPredictor, dict[str, Any]]:
    """Train an :class:`LSTMPredictor` on ``series``: a list of (counts ``[T, J]``, observed ``[T]``) pairs.

    Returns the predictor with the weights of the epoch with the best
    validation RRMSE (mean over types) and a history dict (per-epoch losses
    and validation RRMSEs). ``pad_prob`` of the training windows keep only
    1..history_min-1 real minutes, left-padded with the earliest, as at
    prediction time early in a trace. ``threads`` sets torch's CPU threads
    (1: well-behaved on shared 2-core machines). Fewer than ``min_windows``
    (history + target) windows in all is refused: that would fit noise.

    ``training_data``: ``"per-type"`` trains type j's LSTM on type j's series
    only (OServe as written); ``"pooled"`` (default) trains one LSTM on the
    windows of every type and gives each type a copy. On ServeGen the mix
    shifts from day to day (a type's share changes up to 10x), and per-type
    LSTMs learn their type's regime in the training days and then misjudge it
    on later days; pooled training sees every regime (docs/forecast.md has the
    figures). The predictor is the same either way: one LSTM per type.

    >>> import numpy as np
    >>> t = np.arange(600)
    >>> counts = np.stack([50 + 20 * np.sin(t / 5), 30 + 10 * np.cos(t / 7)], axis=1).round()
    >>> p, hist = train_lstm([(counts, np.ones(600, bool))], epochs=2, progress=False)
    """
    torch = _torch()
    from tqdm.auto import tqdm

    if not series:
        raise ConfigError("train_lstm: no series given")
    num_types = num_types or int(np.asarray(series[0][0]).shape[1])
    for counts, _ in series:
        if np.ndim(counts) != 2 or np.shape(counts)[1] != num_types:
            raise ConfigError(f"train_lstm: every series must be [minutes, {num_types}], got {np.shape(counts)}")
    for label, v in (("epochs", epochs), ("batch_size", batch_size)):
        if int(v) != v or v < 1:
            raise ConfigError(f"train_lstm: {label} must be an integer >= 1, got {v!r}")
    if training_data not in TRAINING_DATA:
        raise UnknownNameError("training_data", training_data, TRAINING_DATA)
    if not 0 < val_fraction < 1 or not 0 <= pad_prob <= 1:
        raise ConfigError(f"train_lstm: need 0 < val_fraction < 1 and 0 <= pad_prob <= 1 "
                          f"(got {val_fraction!r}, {pad_prob!r})")
    train_parts, val_parts = _training_windows(series, history_min, val_fraction)
    windows = sum(len(w) for w in train_parts + val_parts)
    if not train_parts or windows < min_windows:
        longest = max(len(c) for c, _ in series)
        raise ConfigError(
            f"train_lstm: series too short: {windows} windows of {history_min} + 1 observed minutes (longest series "
            f"{longest} minutes); training needs at least {min_windows} (min_windows), i.e. an observed stretch of "
            f"{history_min + min_windows} minutes or more"
        )
    if threads is not None:  # None: torch's default pool; 0 or less is a mistake, not "unset"
        if int(threads) != threads or threads < 1:
            raise ConfigError(f"train_lstm: threads must be an integer >= 1 (or None for torch's default), got {threads!r}")
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_w = torch.as_tensor(np.concatenate(train_parts))
    # Each window's error is measured relative to its series' mean count per type, so the loss is the mean
    # squared RRMSE over series and types: a series at 5 req/s weighs as much as one at 200 req/s.
    train_level = torch.as_tensor(np.concatenate(
        [np.broadcast_to(w[:, -1].mean(axis=0) + eps, (len(w), w.shape[2])) for w in train_parts]))
    val_w = [torch.as_tensor(v) for v in val_parts]

    predictor = LSTMPredictor(num_types, history_min, hidden_size, num_layers, eps, seed)
    pooled = training_data == "pooled"
    # Pooled: one network, fed every type's column as its own sequence; copied to every type at the end.
    net = LSTMPredictor(1, history_min, hidden_size, num_layers, eps, seed).net if pooled else predictor.net
    H = history_min

    def forward(xn, scale):  # [B, H, J], [B, J] -> [B, J] (normalised next minute)
        if not pooled:
            return net(xn, scale)
        B, _, J = xn.shape
        out = net(xn.permute(0, 2, 1).reshape(B * J, H, 1), scale.reshape(B * J, 1))
        return out.reshape(B, J)

    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    steps_per_epoch = math.ceil(len(train_w) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    def validation_rrmse() -> np.ndarray:
        """RRMSE per type, averaged over the series' validation stretches."""
        net.eval()
        scores = []
        with torch.inference_mode():
            for windows in val_w:
                xn, scale = _normalise(windows[:, :H], eps)
                pred = torch.clamp(forward(xn, scale), min=0.0) * scale
                scores.append(rrmse(pred.double().numpy(), windows[:, H].double().numpy()))
        net.train()
        return np.nanmean(np.array(scores), axis=0)

    history: dict[str, Any] = {"epoch": [], "train_loss": [], "val_rrmse": [], "seconds": []}
    best = (math.inf, copy.deepcopy(net.state_dict()), -1)
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="lstm", unit="epoch", disable=progress is not True, leave=False)
    net.train()
    for epoch in bar:
        perm = torch.randperm(len(train_w), generator=gen)
        losses = []
        for lo in range(0, len(perm), batch_size):
            pick = perm[lo : lo + batch_size]
            batch, level = train_w[pick], train_level[pick]
            x, y = batch[:, :H].clone(), batch[:, H]
            # Short-history augmentation: keep the last `keep` minutes, repeat the earliest kept one leftwards.
            padded = torch.rand(len(x), generator=gen) < pad_prob
            if padded.any():
                keep = torch.randint(1, H, (int(padded.sum()),), generator=gen)
                first = H - keep
                rows = x[padded]
                fill = rows[torch.arange(len(rows)), first]  # [n, J]
                left = torch.arange(H)[None, :] < first[:, None]
                x[padded] = torch.where(left[:, :, None], fill[:, None, :], rows)
            xn, scale = _normalise(x, eps)
            loss = torch.mean(((forward(xn, scale) * scale - y) / level) ** 2)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        val = validation_rrmse()
        score = float(np.nanmean(val))
        if score < best[0]:
            best = (score, copy.deepcopy(net.state_dict()), epoch)
        history["epoch"].append(epoch)
        history["train_loss"].append(float(np.mean(losses)))
        history["val_rrmse"].append([float(v) for v in val])
        history["seconds"].append(time.perf_counter() - start)
        record = {"epoch": epoch, "train_loss": history["train_loss"][-1], "val_rrmse_mean": score}
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", val_rrmse=f"{score:.4f}")
        if callable(progress):
            progress(record)
    net.load_state_dict(best[1])
    if pooled:
        for lstm, head in zip(predictor.net.lstms, predictor.net.heads):
            lstm.load_state_dict(net.lstms[0].state_dict())
            head.load_state_dict(net.heads[0].state_dict())
    predictor.net.eval()
    history.update(best_epoch=best[2], best_val_rrmse_mean=best[0], train_windows=len(train_w),
                   val_windows=sum(len(v) for v in val_w), train_seconds=time.perf_counter() - start)
    predictor.info = {"training_data": training_data, "best_epoch": best[2], "best_val_rrmse_mean": best[0], "epochs": epochs,
                      "train_windows": len(train_w), "learning_rate": learning_rate, "batch_size": batch_size,
                      "pad_prob": pad_prob, "val_fraction": val_fraction, "train_seconds": history["train_seconds"]}
    return predictor, history


# ------------------------------------------------------------------------------------------------ bundles, scoring

TYPER_FILE = "typer.json"


def save_forecaster(path: str | Path, predictor: Predictor, typer: Any, extra: dict[str, Any] | None = None) -> Path:
    """Save a predictor with the request typer that defines its types (and optional JSON-able ``extra``)."""
    path = predictor.save(path)
    (path / TYPER_FILE).write_text(json.dumps(typer.to_dict(), indent=2) + "\n")
    if extra is not None:
        (path / "training.json").write_text(json.dumps(extra, indent=2, default=float) + "\n")
    return path


def load_forecaster(path: str | Path) -> tuple[Predictor, Any]:
    """(predictor, :class:`~oserve_rl.workload.RequestTyper`) saved with :func:`save_forecaster`."""
    from oserve_rl.workload.typing import RequestTyper

    predictor = load_predictor(path)
    typer_path = Path(path) / TYPER_FILE
    try:
        typer = RequestTyper.from_dict(json.loads(typer_path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{Path(path)}: no {TYPER_FILE} (the request typer that defines the types)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{typer_path}: not a request typer ({exc})") from None
    if predictor.num_types is not None and predictor.num_types != typer.k:
        raise CheckpointError(f"{Path(path)}: predictor forecasts {predictor.num_types} types, typer has {typer.k}")
    return predictor, typer


def score_predictors(
    predictors: dict[str, Predictor], counts: np.ndarray, observed: np.ndarray | None, history_min: int, source: str = "series"
) -> dict[str, Any]:
    """One-step-ahead RRMSE per type (and of the total) of each predictor on ``counts``.

    Every predictor forecasts the same minutes: those with ``history_min``
    observed minutes before them in their observed stretch (so short-history
    behaviour does not enter the comparison). Raises :class:`ConfigError` if no
    stretch is longer than ``history_min``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    observed = np.ones(len(counts), dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    obs = np.concatenate(([False], observed, [False]))
    edges = np.flatnonzero(np.diff(obs.astype(np.int8)))
    stretches = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    usable = [(a, b) for a, b in stretches if b - a >= history_min + 1]
    if not usable:
        longest = max((b - a for a, b in stretches), default=0)
        raise ConfigError(
            f"{source}: {longest} observed minutes{' in its longest stretch' if len(stretches) > 1 else ''}; "
            f"forecast evaluation needs at least {history_min + 1} (a {history_min}-minute history + 1 minute to forecast)"
        )
    true = np.concatenate([counts[a + history_min : b] for a, b in usable])
    out: dict[str, Any] = {"minutes_scored": len(true), "mean_count_per_min": true.mean(axis=0).tolist(), "rrmse": {},
                           "rrmse_total": {}}
    for name, predictor in predictors.items():
        pred = np.concatenate([predictor.predict_series(counts[a:b], history_min) for a, b in usable])
        out["rrmse"][name] = rrmse(pred, true).tolist()
        out["rrmse_total"][name] = float(rrmse(pred.sum(axis=1), true.sum(axis=1)))
    return out
