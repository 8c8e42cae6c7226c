"""``python -m oserve_rl export``: a trained agent to ONNX + policy.json, or a heuristic to policy.json.

Wiring (oserve_rl/__main__.py): ``add_parser(subparsers)`` in ``build_parser``
and ``main(args) -> int`` for ``args.cmd == "export"``. Standalone:
``python -m oserve_rl.export.cli ...`` (same arguments).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from oserve_rl.errors import ConfigError, OServeError

DESCRIPTION = """\
Export a policy for serving: DIR/policy.json (+ DIR/policy.onnx for trained agents).

CHECKPOINT is an SB3 model.zip (PPO or MaskablePPO), a run directory holding one,
an RLlib checkpoint (RUN/checkpoint, RUN/best_module or RUN), or the name of a
heuristic (oserve, vllm_reload, brute_force, threshold_autoscaler) with --param.
The run's config.yaml fixes the env the policy acts in; it is copied into policy.json.

examples:
  python -m oserve_rl export runs/quickstart-maskable_ppo-s0/model.zip --out exports/quickstart --bench
  python -m oserve_rl export runs/quickstart_rllib-ppo-s0/checkpoint --out exports/rllib
  python -m oserve_rl export oserve --out exports/oserve --param hysteresis=0.05 --param amortise_s=900
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a trained agent (ONNX) or a heuristic for serving",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file/directory, or a heuristic name")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (policy.json, policy.onnx)")
    p.add_argument("--kind", choices=["ppo", "maskable_ppo", "rllib"],
                   help="checkpoint kind (default: detected from config.yaml and the checkpoint)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="heuristic parameter (repeatable; VALUE is YAML: 0.05, true, null, slo)")
    p.add_argument("--env-config", metavar="YAML",
                   help="heuristics: record the env it runs on (a train config or env options YAML)")
    p.add_argument("--ppo-mask", choices=["keep", "argmax"], default="keep",
                   help="plain PPO: a masked argmax becomes keep (default; what the env executed in training "
                        "and evaluation), or take the best allowed action")
    p.add_argument("--verify", type=int, default=1000, metavar="N",
                   help="random observations on which onnxruntime must match the original framework "
                        "(default 1000; 0 skips)")
    p.add_argument("--bench", action="store_true",
                   help="print milliseconds per decision in onnxruntime (and in the original framework)")
    return p


def _parse_params(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE, e.g. --param hysteresis=0.05")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


# Annotation names (a policy constructor's, as text: the agents use ``from __future__ import annotations``)
# -> what a --param value parsed as YAML must be, and how to say so. bool is excluded from the numbers:
# YAML's true would otherwise pass as 1.
_PARAM_KINDS: dict[str, tuple[str, Any]] = {
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "None": ("null", lambda v: v is None),
}


def _check_param_types(name: str, params: dict[str, Any]) -> None:
    """Each --param value against the heuristic constructor's annotation, so that ``hysteresis=abc`` is
    reported as "must be a number" rather than as the comparison that fails inside the constructor.

    Parameters the constructor does not name, or annotated with types not in ``_PARAM_KINDS``, are left to
    the constructor (make_policy reports unknown names with the valid ones)."""
    import inspect

    from oserve_rl.agents import policy_class

    cls = policy_class(name)
    signature = inspect.signature(cls.__init__).parameters
    for key, value in params.items():
        param = signature.get(key)
        if param is None or param.annotation is inspect.Parameter.empty:
            continue
        annotation = param.annotation if isinstance(param.annotation, str) else getattr(
            param.annotation, "__name__", str(param.annotation))
        kinds = [k.strip() for k in annotation.replace("NoneType", "None").split("|")]
        if not all(k in _PARAM_KINDS for k in kinds) or any(_PARAM_KINDS[k][1](value) for k in kinds):
            continue
        expected = " or ".join(_PARAM_KINDS[k][0] for k in kinds)
        default = "" if param.default is inspect.Parameter.empty else f", default {param.default!r}"
        raise ConfigError(f"--param {key}: {cls.name}'s {key} must be {expected} ({annotation}{default}), got "
                          f"{value!r} (VALUE is read as YAML: 0.05, 20, true, null, slo)")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from oserve_rl.errors import CheckpointError

    target = Path(args.checkpoint)
    if not target.exists():
        from oserve_rl.agents import policy_names

        if args.checkpoint.strip().lower().replace("-", "_") not in policy_names():
            from oserve_rl.export.onnx_export import exportable_heuristics

            raise CheckpointError(f"{args.checkpoint!r} is neither an existing checkpoint path nor a heuristic "
                                  f"(heuristics: {', '.join(exportable_heuristics())})")
        return _heuristic(args)
    if args.param or args.env_config:
        raise ConfigError("--param and --env-config apply to heuristic exports only; a checkpoint's parameters "
                          "and env come from its run directory")
    from oserve_rl.export.onnx_export import export_checkpoint

    res = export_checkpoint(target, args.out, args.kind, ppo_mask=args.ppo_mask, verify=args.verify)
    spec = res.spec
    print(f"exported {spec['policy']['algo']} ({spec['onnx']['mask']['rule']}) from {spec['provenance']['checkpoint']}")
    print(f"  {Path(args.out) / 'policy.onnx'} (opset {spec['onnx']['opset']}, inputs: "
          f"{', '.join(spec['onnx']['inputs'])})")
    print(f"  {Path(args.out) / 'policy.json'} (env_version {spec['env_version']}, "
          f"space {spec['env']['space_hash']}, {spec['actions']['n']} actions)")
    if res.agreement is not None:
        print(f"  round trip: {res.agreement[0]}/{res.agreement[1]} random observations give the same action")
    if args.bench:
        _bench(res)
    return 0


def _heuristic(args: argparse.Namespace) -> int:
    from pathlib import Path

    from oserve_rl.export.onnx_export import export_heuristic

    if args.kind or args.bench:
        raise ConfigError(f"--kind and --bench apply to checkpoints; {args.checkpoint!r} is a heuristic")
    params = _parse_params(args.param)
    _check_param_types(args.checkpoint, params)
    spec = export_heuristic(args.checkpoint, args.out, params, env_config=args.env_config)
    h = spec["heuristic"]
    params = ", ".join(f"{k}={v}" for k, v in h["params"].items())
    print(f"exported heuristic {h['name']} ({params}) to {Path(args.out) / 'policy.json'}")
    return 0


def _bench(res: Any) -> None:
    import time

    from oserve_rl.export.runtime import bench_exported, sample_observations

    policy = res.policy
    r = bench_exported(policy, n=2000)
    obs = sample_observations(policy, 200, seed=1)
    singles = [{k: v[i] for k, v in obs.items()} for i in range(200)]
    for o in singles[:10]:
        res.reference_act(o)
    t0 = time.perf_counter()
    for o in singles:
        res.reference_act(o)
    ref_ms = (time.perf_counter() - t0) / len(singles) * 1e3
    print(f"  onnxruntime: {r['act_ms']:.3f} ms per decision (ExportedPolicy.act, checks included), "
          f"{r['session_ms']:.3f} ms bare session, {r['batch_ms_per_decision'] * 1e3:.1f} us per decision in a "
          f"batch of {r['decisions']}")
    print(f"  original framework: {ref_ms:.3f} ms per decision (1 torch thread)")


def run(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m oserve_rl.export.cli``): errors as one ``error:`` line, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m oserve_rl")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["export", *(sys.argv[1:] if argv is None else argv)])
    try:
        return main(args)
    except OServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
