"""Intervals for the course's measurements: the prompt-level bootstrap.

Every figure in the alignment lessons is measured on a few hundred answers to a few dozen or a few
hundred prompts, so it carries noise: a rate on 200 prompts (one task family of the evaluation
protocol) has a standard error of up to 3.5 points, on 400 up to 2.5. Before saying "A beats B", we need an interval.

The **bootstrap** (Efron, 1979) gets one without formulas: pretend the measured prompts are the
population, draw a new set of the same size *with replacement*, recompute the figure, and repeat a
few thousand times; the middle 95 % of those figures is the interval. Two details matter here:

- **Resample prompts, not rows.** The answers or pairs that share a prompt are correlated (the
  same easy prompt gives several easy pairs). Drawing rows as if independent would give intervals
  that are too narrow; drawing whole prompts (a *cluster* bootstrap) keeps that correlation.
- **Pair the comparisons.** To compare two models measured on the same prompts, bootstrap the
  per-row *difference*: what the prompts have in common cancels, and the interval is much tighter
  than two separate intervals would suggest.

Left out: bias-corrected (BCa) intervals, and tests of many models at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def percent(self) -> str:
        """For rates: '64.0 % [59.1, 68.8]'."""
        return f"{100 * self.estimate:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def group_draws(groups: Sequence[Hashable], *, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, draws)``: each row's group number, and ``resamples`` draws of group numbers with
    replacement, one row per resample. A statistic recomputed on each drawn set of groups gives the
    bootstrap distribution. The same groups and seed give the same draws."""
    index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    ids = np.fromiter((index[g] for g in groups), dtype=int, count=len(groups))
    draws = np.random.default_rng(seed).integers(0, len(index), size=(resamples, len(index)))
    return ids, draws


def interval(estimate: float, resampled: Sequence[float], level: float = LEVEL) -> Interval:
    """``estimate`` with the middle ``level`` of its ``resampled`` values (a percentile interval)."""
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(resampled, dtype=float), [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high))


def bootstrap_mean(values: Sequence[float], groups: Sequence[Hashable] | None = None, *,
                   resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> Interval:
    """The mean of ``values`` with a bootstrap interval, resampling whole ``groups`` (e.g. prompts).

    Without ``groups`` each value is its own group. The same inputs and seed give the same interval.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("No values to average.")
    groups = range(values.size) if groups is None else groups
    if len(groups) != values.size:
        raise ValueError(f"{values.size} values but {len(groups)} group labels.")
    # 1. Sum and count per group: a resample of groups is then two lookups.
    ids, draws = group_draws(groups, resamples=resamples, seed=seed)
    sums, counts = np.bincount(ids, weights=values), np.bincount(ids).astype(float)
    # 2. Each resample's mean is the sum over its drawn groups over their count.
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    # 3. The middle ``level`` of those means.
    return interval(values.mean(), means, level)


def paired_difference(a: Sequence[float], b: Sequence[float], groups: Sequence[Hashable] | None = None,
                      **kwargs) -> Interval:
    """Mean of ``a - b`` row by row (both measured on the same rows), with its bootstrap interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"Paired measurements need the same rows: {a.shape} against {b.shape}.")
    return bootstrap_mean(a - b, groups, **kwargs)


def check_above_zero(difference: Interval, claim: str) -> None:
    """A sanity check on a measured difference: its whole 95 % interval lies above zero.

    Otherwise ``AssertionError`` with ``claim`` (what should have held) and the interval: a
    difference whose interval reaches zero could be the luck of which prompts were drawn.
    """
    if not difference.low > 0:
        raise AssertionError(f"{claim}: not shown. The difference is {difference} (95 % interval), "
                             "which does not exclude zero, so it could be noise.")
