"""Command line: ``python -m oserve_rl COMMAND`` (also installed as ``oserve-rl``).

    perf calibrate   fit the performance model to measured profiles (writes the packaged parameter file)
    perf validate    error of the model on held-out measured rows (markdown + CSV report)
    perf predict     predicted iteration times for a CSV of what-if points
    perf bench       decode-step estimates per second (vectorised and scalar)
    simulate         run a trace through a deployment on a cluster
    forecast train   train the per-type LSTM arrival predictor (forecast eval: RRMSE per type)
    bench env        Deploy-v0 environment steps per CPU-second
    export           a trained checkpoint (SB3, RLlib) to policy.onnx + policy.json, or a heuristic by name
    live run         drive a real vLLM cluster with an exported policy (live compare: simulator vs live)
"""

from __future__ import annotations

import argparse
import os
import sys

from oserve_rl.errors import OServeError

# Shown for a missing sub-command instead of argparse's dest ("cmd", "perf_cmd"), which users never typed.
COMMAND_METAVAR = "COMMAND"


def _perf_parser(sub) -> None:
    perf = sub.add_parser("perf", help="the calibrated GPU performance model",
                          description="Calibrate, validate and query the GPU performance model.")
    ps = perf.add_subparsers(dest="perf_cmd", metavar=COMMAND_METAVAR, required=True)
    cal = ps.add_parser("calibrate", help="fit efficiency curves to Vidur-layout profiles and write the parameter file",
                        description="Fit per-GPU efficiency curves (held-out TP 4 and codellama-34b excluded) and "
                                    "write oserve_rl/perf/data/calibration.json. Never edit that file by hand.")
    cal.add_argument("--data-dir", help="profiles in Vidur's layout (default: $OSERVE_CALIBRATION_DIR or "
                                        "../shared/calibration/vidur)")
    cal.add_argument("--extra-data-dir", action="append", default=[], metavar="DIR",
                     help="more profiles in Vidur's layout read with --data-dir's, e.g. a GPU measured with "
                          "scripts/profile_gpu.py (repeatable; its folder name must be a catalog GPU)")
    cal.add_argument("--out", help="where to write the parameter file (default: the packaged one)")
    val = ps.add_parser("validate", help="error of the model on held-out measured rows",
                        description="Compare the model with measured rows no fit has seen; prints a summary and "
                                    "writes validation.md, op_errors.csv, iteration_errors.csv.")
    val.add_argument("--data-dir", help="profiles in Vidur's layout (default: as for calibrate)")
    val.add_argument("--out", default="reports/perf", help="report folder (default: reports/perf)")
    pred = ps.add_parser("predict", help="predicted iteration time for each row of a CSV",
                         description="Input columns: gpu, model, tp, pp, phase (prefill|decode), batch_size, "
                                     "prompt_tokens (prefill: tokens per request), context_tokens (decode: context "
                                     "per sequence). Output adds predicted_ms: the whole prefill of the batch in one "
                                     "iteration, or one decode step of the batch.")
    pred.add_argument("--points", required=True, help="input CSV")
    pred.add_argument("--out", help="output CSV (default: print to stdout)")
    bench = ps.add_parser("bench", help="decode-step estimates per second",
                          description="Times vectorised and scalar decode-step estimates; prints estimates/s.")
    bench.add_argument("--n", type=int, default=2_000_000, help="points per vectorised call (default 2e6)")


def _perf_main(args) -> int:
    if args.perf_cmd == "calibrate":
        from pathlib import Path

        from oserve_rl.perf import fit

        inputs = fit.load_inputs(args.data_dir, extra_dirs=tuple(args.extra_data_dir))
        print(f"fitting on {inputs.data_dir} (held out: {inputs.holdout})", file=sys.stderr)
        doc = fit.calibrate(inputs, progress=lambda m: print(m, file=sys.stderr))
        path = fit.write_params(doc, Path(args.out) if args.out else fit.PARAMS_PATH)
        print(f"wrote {path}")
        return 0
    if args.perf_cmd == "validate":
        from oserve_rl.perf import validate

        validate.run(args.data_dir, args.out)
        return 0
    if args.perf_cmd == "predict":
        from oserve_rl.perf.predict import predict_points, read_points

        out = predict_points(read_points(args.points), source=args.points)
        if args.out:
            out.to_csv(args.out, index=False)
            print(f"wrote {len(out)} rows to {args.out}")
        else:
            print(out.to_csv(index=False), end="")
        return 0
    if args.perf_cmd == "bench":
        from oserve_rl.perf.bench import main as bench_main

        bench_main(args.n)
        return 0
    raise AssertionError(args.perf_cmd)


def _prog() -> str:
    """The name usage lines show: ``oserve-rl`` when run as the console script, else ``python -m oserve_rl``.

    Not argparse's default (the basename of ``sys.argv[0]``): under ``-m`` that is ``__main__.py``, and in
    tests it is the test runner.
    """
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "oserve-rl" if name.startswith("oserve-rl") else "python -m oserve_rl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", metavar=COMMAND_METAVAR, required=True)
    _perf_parser(sub)
    try:
        from oserve_rl.sim.cli import add_simulate_parser
    except ImportError:
        add_simulate_parser = None
    if add_simulate_parser:
        add_simulate_parser(sub)
    from oserve_rl.forecast.cli import add_subparsers as add_forecast

    add_forecast(sub)
    from oserve_rl.export.cli import add_parser as add_export
    from oserve_rl.live.cli import add_parser as add_live

    add_live(sub)

    add_export(sub)
    bench = sub.add_parser("bench", help="benchmarks (env)", description="Benchmarks that print speed figures.")
    bs = bench.add_subparsers(dest="bench_cmd", metavar=COMMAND_METAVAR, required=True)
    try:  # the env needs the [rl] extra (gymnasium)
        from oserve_rl.envs.bench import add_parser as add_env_bench
    except ImportError:
        add_env_bench = None
    if add_env_bench:
        add_env_bench(bs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "perf":
            return _perf_main(args)
        if args.cmd == "simulate":
            from oserve_rl.sim.cli import simulate_main

            return simulate_main(args)
        if args.cmd == "forecast":
            from oserve_rl.forecast.cli import forecast_main

            return forecast_main(args)
        if args.cmd == "live":
            from oserve_rl.live.cli import main as live_main

            return live_main(args)
        if args.cmd == "export":
            from oserve_rl.export.cli import main as export_main

            return export_main(args)
        if args.cmd == "bench":
            from oserve_rl.envs.bench import main as bench_main

            return bench_main(args)
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
