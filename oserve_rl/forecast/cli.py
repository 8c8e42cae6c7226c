"""``python -m oserve_rl forecast train|eval``: OServe's per-type LSTM forecaster and its baselines.

Wire into a parent parser with :func:`add_subparsers` and dispatch with
:func:`forecast_main`, or run standalone: ``python -m oserve_rl.forecast.cli eval ...``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

from oserve_rl.errors import ConfigError, OServeError
from oserve_rl.forecast.predictors import EWMAPredictor, MovingAveragePredictor, train_lstm

DEFAULT_TRAIN_SCALES = "0.025,0.1,1"
DEFAULT_EVAL_SCALE = 0.1

EPILOG = """examples:
  python -m oserve_rl forecast train --source servegen:m-large --days 0-6 --out runs/forecast
  python -m oserve_rl forecast eval --predictor runs/forecast --source servegen:m-large --days 7-9
  python -m oserve_rl forecast eval --predictor runs/forecast --source servegen:m-large --days 7-9 --rate-scale 1
  python -m oserve_rl forecast eval --predictor runs/forecast --source azure-conv --json -
"""


def add_subparsers(subparsers) -> argparse.ArgumentParser:
    """Add ``forecast`` (with ``train`` and ``eval``) to an argparse sub-parser set; returns its parser."""
    fc = subparsers.add_parser(
        "forecast", help="per-type next-minute arrival forecasts (OServe's LSTMs and baselines)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train OServe's one-LSTM-per-type forecaster on ServeGen-derived per-minute counts and compare "
                    "it with EWMA, moving-average and last-value forecasts (RRMSE per request type).")
    fs = fc.add_subparsers(dest="forecast_cmd", metavar="COMMAND", required=True)
    lstm_defaults = _defaults(train_lstm)

    tr = fs.add_parser("train", help="fit the request typer and train the LSTMs", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fit a k-means request typer on lengths sampled from the source, build per-type "
                                   "per-minute count series (one per --rate-scale), train one LSTM per type and save "
                                   "predictor.json, weights.pt, typer.json and training.json to --out.")
    tr.add_argument("--source", required=True, help="servegen:m-large | servegen:m-small (or any trace name/path "
                                                    "long enough to train on)")
    tr.add_argument("--days", help="ServeGen days to train on, inclusive (default 0-6)")
    tr.add_argument("--types", type=int, default=4, help="number of request types (default 4)")
    tr.add_argument("--rate-scale",
                    help="ServeGen rate multiplier(s), comma-separated: one series per value, so one model serves "
                         f"small and large traffic (default {DEFAULT_TRAIN_SCALES}: ~5, ~20, ~200 req/s for m-large)")
    tr.add_argument("--dispersion", default="gamma", choices=["gamma", "poisson"],
                    help="per-minute arrival noise of the ServeGen series (default gamma: uses iat_cv)")
    # None: not given, train_lstm's own default applies (shown here from its signature, so help cannot go stale).
    tr.add_argument("--epochs", type=int, default=None,
                    help=f"training epochs (default {lstm_defaults['epochs']}; docs/forecast.md has the schedule)")
    tr.add_argument("--hidden-size", type=int, default=None,
                    help=f"LSTM hidden units per type (default {lstm_defaults['hidden_size']})")
    tr.add_argument("--training-data", default="pooled", choices=["pooled", "per-type"],
                    help="pooled (default): every type's LSTM learns from the windows of all types; per-type: "
                         "type j's LSTM sees type j only (OServe as written; generalises worse to later days)")
    tr.add_argument("--seed", type=int, default=0, help="seed for series, typer and training (default 0)")
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads, >= 1 (default 1)")
    tr.add_argument("--out", required=True, help="folder to write the predictor to")

    ev = fs.add_parser("eval", help="RRMSE per type of the LSTM and the baselines", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="One-step-ahead forecasts of every minute that has a full history, scored as "
                                   "RRMSE = sqrt(mean((pred - true)^2)) / mean(true) per type.")
    ev.add_argument("--predictor", required=True, help="folder written by 'forecast train'")
    ev.add_argument("--source", required=True, help="servegen:MODEL (with --days), or any trace name/path "
                                                    "(azure-conv, azure-code, a CSV/JSONL file)")
    ev.add_argument("--days", help="ServeGen days to score on, inclusive (default 7-9)")
    ev.add_argument("--rate-scale", type=float,
                    help=f"ServeGen rate multiplier (default {DEFAULT_EVAL_SCALE}: ~20 req/s for m-large)")
    ev.add_argument("--dispersion", default="gamma", choices=["gamma", "poisson"], help="as for train")
    ev.add_argument("--seed", type=int, default=0, help="seed of the ServeGen series (default 0)")
    ev.add_argument("--refit-typer", action="store_true",
                    help="type the source with k-means fitted on the source itself instead of the saved typer")
    ev.add_argument("--ewma-alpha", type=float, default=None,
                    help=f"EWMA smoothing in (0, 1] (default {_defaults(EWMAPredictor)['alpha']:g})")
    ev.add_argument("--ma-window", type=int, default=None,
                    help=f"moving-average window in minutes (default {_defaults(MovingAveragePredictor)['window']})")
    ev.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH ('-' = stdout, quiet)")
    return fc


def _defaults(fn: Any) -> dict[str, Any]:
    """Keyword defaults of a function or class constructor, for help texts that name them."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _check_at_least(flag: str, value: int | None, least: int, what: str) -> None:
    """A count flag that, when given (not None), must be an integer >= ``least``; 0 never means "the default"."""
    if value is not None and value < least:
        raise ConfigError(f"{flag} must be an integer >= {least} ({what}), got {value}")


def _check_train_args(args) -> None:
    """Ranges of train's flags, checked before any series is built (that takes seconds to minutes)."""
    _check_at_least("--types", args.types, 1, "request types")
    _check_at_least("--epochs", args.epochs, 1, "training epochs")
    _check_at_least("--hidden-size", args.hidden_size, 1, "LSTM hidden units")
    _check_at_least("--threads", args.threads, 1, "torch CPU threads")
    _check_at_least("--seed", args.seed, 0, "a numpy seed")


def _check_eval_args(args) -> None:
    """Ranges of eval's flags, checked before the predictor is loaded and the series built."""
    _check_at_least("--seed", args.seed, 0, "a numpy seed")
    _check_at_least("--ma-window", args.ma_window, 1, "minutes")
    if args.rate_scale is not None and not (0 < args.rate_scale < float("inf")):
        raise ConfigError(f"--rate-scale must be a positive number, got {args.rate_scale:g}")
    if args.ewma_alpha is not None and not 0 < args.ewma_alpha <= 1:
        raise ConfigError(f"--ewma-alpha must be in (0, 1], got {args.ewma_alpha}")


def _parse_scales(text: str) -> list[float]:
    try:
        scales = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        scales = []
    if not scales or not all(s > 0 and s < float("inf") for s in scales):
        raise ConfigError(f"--rate-scale {text!r}: expected positive numbers, comma-separated (e.g. 0.1 or 0.025,0.1,1)")
    return scales


def _servegen_model(args, days: str, rate_scale: Any) -> str | None:
    """The ServeGen model of ``--source`` (filling --days/--rate-scale defaults), or None for other traces."""
    if args.source.startswith("servegen:"):
        # "is None", not "or": a given --rate-scale 0 must reach its range check, not become the default.
        args.days = days if args.days is None else args.days
        args.rate_scale = rate_scale if args.rate_scale is None else args.rate_scale
        return args.source.split(":", 1)[1]
    for flag, value in (("--days", args.days), ("--rate-scale", args.rate_scale)):
        if value is not None:
            raise ConfigError(f"{flag} applies to servegen:MODEL sources only, not to {args.source!r}")
    return None


def _train(args) -> int:
    import numpy as np

    from oserve_rl.forecast.predictors import save_forecaster
    from oserve_rl.forecast.series import servegen_length_sample, servegen_type_counts, trace_type_counts
    from oserve_rl.workload import RequestTyper, load_trace

    _check_train_args(args)
    model = _servegen_model(args, "0-6", DEFAULT_TRAIN_SCALES)
    scales = _parse_scales(args.rate_scale) if model else []
    started = time.perf_counter()
    series, metas = [], []
    if model:
        lengths = servegen_length_sample(model, args.days, seed=args.seed)
        typer = RequestTyper.fit(lengths, k=args.types, seed=args.seed)
        for i, scale in enumerate(scales):
            counts, meta = servegen_type_counts(model, typer, days=args.days, rate_scale=scale,
                                                dispersion=args.dispersion, seed=args.seed + i)
            series.append((counts, meta.observed))
            metas.append(meta.to_dict())
    else:
        trace = load_trace(args.source, seed=args.seed)
        typer = RequestTyper.fit(trace, k=args.types, seed=args.seed)
        counts, meta = trace_type_counts(trace, typer)
        series.append((counts, meta.observed))
        metas.append(meta.to_dict())
    print(f"typer: {', '.join(metas[0]['type_names'])}", file=sys.stderr)
    print(f"series: {len(series)} x {len(series[0][0])} minutes ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    opts: dict[str, Any] = {"seed": args.seed, "threads": args.threads, "training_data": args.training_data}
    if args.epochs is not None:
        opts["epochs"] = args.epochs
    if args.hidden_size is not None:
        opts["hidden_size"] = args.hidden_size
    predictor, history = train_lstm(series, **opts)
    predictor.info.update(source=args.source, days=args.days, rate_scales=scales, dispersion=args.dispersion)
    out = save_forecaster(args.out, predictor, typer, extra={"series": metas, "history": history,
                                                             "args": {k: v for k, v in vars(args).items() if k != "func"}})
    best = history["val_rrmse"][history["best_epoch"]]
    print(f"best epoch {history['best_epoch']} of {len(history['epoch'])}: validation RRMSE per type "
          f"{', '.join(f'{v:.3f}' for v in best)} (mean {np.nanmean(best):.3f}); "
          f"trained in {history['train_seconds']:.0f} s")
    print(f"wrote {out}")
    return 0


def evaluate(args) -> dict[str, Any]:
    """The ``eval`` command's results as a dict (also what ``--json`` writes)."""
    from oserve_rl.forecast.predictors import LastValuePredictor, load_forecaster, score_predictors
    from oserve_rl.forecast.series import servegen_type_counts, trace_type_counts, type_names
    from oserve_rl.workload import RequestTyper, load_trace

    _check_eval_args(args)
    saved, typer = load_forecaster(args.predictor)
    model = _servegen_model(args, "7-9", DEFAULT_EVAL_SCALE)
    if model:
        if args.refit_typer:
            from oserve_rl.forecast.series import servegen_length_sample

            typer = RequestTyper.fit(servegen_length_sample(model, args.days, seed=args.seed), k=typer.k, seed=args.seed)
        counts, meta = servegen_type_counts(model, typer, days=args.days, rate_scale=args.rate_scale,
                                            dispersion=args.dispersion, seed=args.seed)
        label = f"{args.source} days {args.days}, rate scale {args.rate_scale:g}"
    else:
        trace = load_trace(args.source, seed=args.seed)
        if args.refit_typer:
            typer = RequestTyper.fit(trace, k=typer.k, seed=args.seed)
        counts, meta = trace_type_counts(trace, typer)
        label = args.source
    baselines = {
        "ewma": EWMAPredictor(**({"alpha": args.ewma_alpha} if args.ewma_alpha is not None else {})),
        "moving-average": MovingAveragePredictor(**({"window": args.ma_window} if args.ma_window is not None else {})),
        "last-value": LastValuePredictor(),
    }
    predictors = {("lstm" if saved.name == "lstm" else f"saved {saved.name}"): saved, **baselines}
    history_min = getattr(saved, "history_min", saved.min_history_min)
    scores = score_predictors(predictors, counts, meta.observed, history_min, source=label)
    return {
        "source": label,
        "predictor_dir": str(args.predictor),
        "types": list(type_names(typer)),
        "typer": "refitted on the source" if args.refit_typer else "saved with the predictor",
        "series": meta.to_dict(),
        "predictors": {name: repr(p) for name, p in predictors.items()},
        **scores,
    }


def format_table(result: dict[str, Any]) -> str:
    """RRMSE per type (percent) as a plain-text table."""
    from tabulate import tabulate

    header = ["predictor", *result["types"], "total"]
    rows = [["mean count/min", *[f"{v:.1f}" for v in result["mean_count_per_min"]],
             f"{sum(result['mean_count_per_min']):.1f}"]]
    for name, per_type in result["rrmse"].items():
        rows.append([name, *[f"{100 * v:.2f} %" if v == v else "n/a" for v in per_type],
                     f"{100 * result['rrmse_total'][name]:.2f} %"])
    return tabulate(rows, headers=header, tablefmt="github", disable_numparse=True)


def _eval(args) -> int:
    result = evaluate(args)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(f"RRMSE of next-minute forecasts, {result['source']} ({result['minutes_scored']} minutes scored)")
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def forecast_main(args) -> int:
    """Run a parsed ``forecast`` command (OServeError propagates: the caller prints it)."""
    if args.forecast_cmd == "train":
        return _train(args)
    if args.forecast_cmd == "eval":
        return _eval(args)
    raise AssertionError(args.forecast_cmd)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``main(["eval", "--predictor", ...])``; errors print one line and return 2."""
    parser = argparse.ArgumentParser(prog="python -m oserve_rl.forecast.cli")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_subparsers(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["forecast"]:
        argv = ["forecast", *argv]
    args = parser.parse_args(argv)
    try:
        return forecast_main(args)
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
