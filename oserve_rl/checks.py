"""Argument checks shared by the library's constructors: one ``ConfigError`` naming the owner, the argument and
what is valid; nothing is rounded, clamped or read from a bool."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from oserve_rl.errors import ConfigError


def check_number(where: str, name: str, value: Any, *, low: float | None = None, low_open: bool = False,
                 high: float | None = None, integer: bool = False, none_ok: bool = False) -> None:
    """``value`` must be a finite real (``integer``: a whole number) within ``[low, high]`` (``low_open``:
    ``> low``): else one ConfigError naming ``where`` (the owner, e.g. a policy), ``name`` and what is valid.
    Booleans, strings, NaN and infinities are refused; nothing is rounded or clamped."""
    if none_ok and value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        try:
            ok = math.isfinite(value) and (not integer or float(value).is_integer())
        except (TypeError, ValueError, OverflowError):
            ok = False
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if low is not None and high is not None:
            rule = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            rule = f"{'>' if low_open else '>='} {low:g}"
        else:
            rule = f"<= {high:g}" if high is not None else ""
        kind = "an integer" if integer else "a finite number"
        text = f"{kind} {rule}".strip() if integer else (f"{rule} (a finite number)" if rule else kind)
        also = " (or None)" if none_ok else ""
        raise ConfigError(f"{where}: {name} must be {text}{also}, got {value!r}")


def is_seed(value: Any) -> bool:
    """A numpy generator seed: a whole number >= 0 of an integer type (``2.0`` and ``True`` are not seeds)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0
