"""How sure a number is: the 95% interval of an accuracy measured on n test images, by one training
run (the Wilson interval: test-set sampling only) or by several seeds on the same test images (an
interval that also covers the spread between training runs)."""
from __future__ import annotations

import math

from scipy import stats

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


def seed_interval(accuracies, n: int, z: float = Z95) -> tuple[float, float]:
    """(lower, upper), in percent, of a 95% interval for the accuracy a cell's recipe gives in
    expectation over training runs and test sets, from one accuracy per seed, each measured on the
    same n test images.

    One seed: the Wilson interval (it covers test-set sampling only). Several: the seeds' mean plus or
    minus a t quantile times sqrt(s^2 / K + q (1 - q) / m). s^2 / K is the seed-to-seed variance of the
    mean of K seeds; q (1 - q) / m (Agresti-Coull: q and m shifted by z^2 / 2 and z^2 so that 0% and
    100% keep a width) is the test-set sampling variance, not divided by K because every seed is scored
    on the same images. The t quantile's degrees of freedom come from the two parts (Welch-Satterthwaite:
    K - 1 when the seeds dominate, the normal quantile when test sampling does)."""
    values = [a for a in accuracies if a is not None and math.isfinite(a)]
    k = len(values)
    if k == 0 or n <= 0:
        return math.nan, math.nan
    if k == 1:
        return wilson_interval(values[0], n, z)
    p = sum(values) / k / 100.0
    m = n + z * z
    q = (p * n + z * z / 2) / m
    seed_var = sum((v / 100.0 - p) ** 2 for v in values) / (k - 1) / k
    test_var = q * (1 - q) / m
    df = math.inf if seed_var == 0 else (seed_var + test_var) ** 2 * (k - 1) / seed_var ** 2
    half = (z if math.isinf(df) else stats.t.ppf(stats.norm.cdf(z), df)) * math.sqrt(seed_var + test_var)
    return 100.0 * max(0.0, p - half), 100.0 * min(1.0, p + half)
