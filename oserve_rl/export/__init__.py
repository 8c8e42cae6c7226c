"""Exported policies: trained agents as ONNX graphs, heuristics as named parameter sets.

    python -m oserve_rl export runs/quickstart-maskable_ppo-s0 --out exports/quickstart --bench
    python -m oserve_rl export oserve --out exports/oserve --param hysteresis=0.05

Either writes ``DIR/policy.json`` (+ ``DIR/policy.onnx`` for agents).
Serving needs only numpy and onnxruntime:

    >>> from oserve_rl.export import load_exported
    >>> policy = load_exported("exports/quickstart")    # doctest: +SKIP
    >>> policy.act(obs)                                 # doctest: +SKIP

- :mod:`~oserve_rl.export.onnx_export`: ``export_checkpoint``, ``export_heuristic`` (needs torch, SB3 / Ray, onnx).
- :mod:`~oserve_rl.export.runtime`: ``load_exported``, ``ExportedPolicy``, ``bench_exported`` (numpy + onnxruntime).
- :mod:`~oserve_rl.export.cli`: the ``export`` subcommand.

See docs/export.md for the ``policy.json`` schema.
"""

from __future__ import annotations

from typing import Any

# Resolved on first use: importing this package must stay as light as the runtime (no torch for servers).
_LAZY = {
    "load_exported": "oserve_rl.export.runtime", "ExportedPolicy": "oserve_rl.export.runtime",
    "bench_exported": "oserve_rl.export.runtime", "FORMAT_VERSION": "oserve_rl.export.runtime",
    "export_checkpoint": "oserve_rl.export.onnx_export", "export_heuristic": "oserve_rl.export.onnx_export",
    "ExportResult": "oserve_rl.export.onnx_export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oserve_rl.export' has no attribute {name!r}")


__all__ = sorted(_LAZY)
