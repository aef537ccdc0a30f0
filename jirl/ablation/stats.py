"""The statistics of an ablation over seeds: per-arm intervals and paired differences.

Every arm of an ablation trains once per seed (the model's initialization, the data order and
augmentation, dropout; the data set itself fixed). For each metric:
  * `interval`: mean, sample standard deviation and the two-sided Student t interval of the mean
    over seeds (n - 1 degrees of freedom).
  * `paired_difference`: arm minus reference, seed by seed (the same seed in both arms: the
    same initialization and data order, so what varies with the seed cancels), and the t interval
    of the mean difference (n - 1 degrees of freedom, n = seeds both arms ran). `verdict` calls a
    difference "better" or "worse" only when that interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
NO_DIFFERENCE = "no difference measured"


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """{n, mean, std, low, high}: the mean of `values` and its two-sided Student t interval
    (std with ddof=1; std, low and high are None for fewer than two values)."""
    x = np.asarray(values, np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("an interval needs at least one value")
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "low": None, "high": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def verdict(low: float | None, high: float | None, lower_is_better: bool) -> str:
    """"better" / "worse" for an interval of (arm - reference) that excludes zero, else
    `NO_DIFFERENCE`; which sign is better follows the metric."""
    if low is None or high is None or low <= 0 <= high:
        return NO_DIFFERENCE
    above = low > 0
    return "worse" if above == lower_is_better else "better"


def paired_difference(arm: Mapping[int, float], reference: Mapping[int, float],
                      lower_is_better: bool, confidence: float = CONFIDENCE) -> dict:
    """The interval of arm - reference over the seeds both ran ({seed: value} each), with the
    seeds used and the verdict."""
    seeds = sorted(set(arm) & set(reference))
    if not seeds:
        raise ValueError("the two arms share no seed: a paired difference needs the same seeds")
    diff = interval([arm[s] - reference[s] for s in seeds], confidence)
    return {**diff, "seeds": seeds, "verdict": verdict(diff["low"], diff["high"], lower_is_better)}
