"""Efficiency curves: piecewise-linear in log2 of a problem size, clamped at the ends.

A curve is its knot positions (log2 units) and values (efficiencies in (0, 1],
stored as logits so a fit cannot leave that range).
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def interp_log2(size, knots_log2, values):
    """Values of the curve at ``size`` (not log), linear between knots, flat outside."""
    return np.interp(np.log2(np.maximum(np.asarray(size, dtype=np.float64), 1.0)), knots_log2, values)


def smooth_max(a, b, p: float):
    """A differentiable max(a, b) (the p-norm): the roofline's kink softened."""
    return (a**p + b**p) ** (1.0 / p)
