"""How worker processes start (evaluate.py ``--jobs``, train.py ``--vec-env subproc``)."""

from __future__ import annotations

import multiprocessing


def worker_start_method() -> str:
    """``forkserver`` where the platform has it: workers start from a clean interpreter, not a fork of one
    with torch's threads running. ``spawn`` elsewhere (Windows has no forkserver)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
