"""Uncertainty of rates measured on a handful of judged pairs (accuracy, win rate, refusal rate)."""

from __future__ import annotations

import math


def wilson_interval(successes: float, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default). Unlike p ± z·√(p(1−p)/n) it stays inside
    [0, 1] and is sensible at p = 0 or 1 and for small n. Ties counted as half a success are fine."""
    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
