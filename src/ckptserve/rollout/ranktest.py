"""The one-sided Mann-Whitney U test, normal approximation, with tie and continuity corrections.

Used by the canary to ask "are the canary's rewards worse than the incumbent's?" without assuming
rewards are normal. For samples x (the canary's) and y (the incumbent's):

    U    = #{(x_i, y_j): x_i > y_j} + 1/2 #{x_i = y_j}      (from the ranks of the pooled sample)
    mean = n_x n_y / 2
    sd   = sqrt(n_x n_y / 12 * ((n + 1) - sum(t^3 - t) / (n (n - 1))))   t: sizes of tied groups
    z    = (U - mean + 1/2) / sd                              continuity-corrected toward the mean
    p    = Phi(z)                                             small when x tends to be below y

It agrees with `scipy.stats.mannwhitneyu(x, y, alternative="less", method="asymptotic")`. With
every value tied (sd = 0) there is no evidence either way: z = 0 and p = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["UTest", "mann_whitney_less"]


@dataclass(frozen=True, slots=True)
class UTest:
    """The figures of one test: U of the first sample, its null mean and sd, z, the one-sided
    p-value that the first sample is stochastically less than the second, and the sizes."""

    u: float
    mean: float
    sd: float
    z: float
    p: float
    n_x: int
    n_y: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mann_whitney_less(x: Sequence[float], y: Sequence[float]) -> UTest:
    """Test whether `x` tends to be smaller than `y` (one-sided Mann-Whitney U).

    Raises:
        ValueError: a sample is empty.

    Example:
        test = mann_whitney_less(canary_rewards, incumbent_rewards)
        worse = test.p < 0.05
    """
    n_x, n_y = len(x), len(y)
    if not n_x or not n_y:
        raise ValueError(f"both samples need values (got {n_x} and {n_y})")
    pooled = sorted([(float(v), 0) for v in x] + [(float(v), 1) for v in y])
    n = n_x + n_y
    rank_sum_x = 0.0
    ties = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        t = j - i + 1
        rank = (i + j) / 2 + 1  # the average of ranks i+1 .. j+1
        rank_sum_x += rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        ties += t**3 - t
        i = j + 1
    u = rank_sum_x - n_x * (n_x + 1) / 2
    mean = n_x * n_y / 2
    variance = n_x * n_y / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    sd = math.sqrt(max(variance, 0.0))
    if sd == 0:
        return UTest(u, mean, 0.0, 0.0, 1.0, n_x, n_y)
    z = (u - mean + 0.5) / sd
    p = 0.5 * math.erfc(-z / math.sqrt(2))
    return UTest(u, mean, sd, z, p, n_x, n_y)
