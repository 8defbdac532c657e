"""How sure a number is: the 95% Wilson interval of an accuracy measured on n test images."""
from __future__ import annotations

import math

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(lower, upper) bounds, in percent, of the Wilson score interval for `accuracy` percent correct
    out of `n` trials. Unlike the normal approximation it stays inside [0, 100] and is sound at 0% and
    100%, which robust accuracies often are."""
    if n <= 0 or accuracy is None or not math.isfinite(accuracy):
        return math.nan, math.nan
    p = accuracy / 100.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if p == 0 else max(0.0, centre - half)  # exact at the ends, where round-off would stray
    high = 1.0 if p == 1 else min(1.0, centre + half)
    return 100.0 * low, 100.0 * high
