"""Several reward models -> what the advantage code consumes. Rewards only; the advantage math
(per-reward z-scores summed for 'advantage_sum') lives in learner/advantages.py.

- weighted_sum (Flow-GRPO's multi-reward): r = sum_i w_i r_i per image, before advantages.
- advantage_sum (DanceGRPO, MixGRPO, G2RPO): the learner needs the per-reward scores [R, B] and the
  weights [R]; it forms advantages per reward and sums w_i A_i.
An image unscored (NaN, rewards/base.py) under any reward is invalid in the combined reward.

`weighted_sum` is the one weighted reward sum of the project: the metrics, the reward pools' combined
reward and the advantage stage's weighted_sum mode (cluster/stages.py) all call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CombinedRewards:
    """names [R]; weights [R]; matrix [R, B] per-reward scores; reward [B] = sum_i w_i matrix[i] (NaN where
    any score is NaN); valid [B] = every reward finite for that image."""

    names: tuple[str, ...]
    weights: np.ndarray
    matrix: np.ndarray
    reward: np.ndarray
    valid: np.ndarray


def score_matrix(scores: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Stack per-reward scores [B] into [R, B] in `names` order (names must match the scores' keys)."""
    if set(names) != set(scores):
        raise ValueError(f"score_matrix: rewards {sorted(scores)} do not match the configured {list(names)}")
    rows = [np.asarray(scores[n], dtype=np.float64) for n in names]
    sizes = {r.shape for r in rows}
    if len(sizes) != 1 or len(rows[0].shape) != 1:
        raise ValueError(f"score_matrix: every reward must be [B] with one B, got shapes "
                         f"{ {n: r.shape for n, r in zip(names, rows, strict=True)} }")
    return np.stack(rows)


def _sum_rows(weights: Sequence[float], matrix: np.ndarray) -> np.ndarray:
    """0 + w_0 r_0 + w_1 r_1 + ... in float64, term by term in reward order: no matrix product, whose
    fused or reordered accumulation can differ in the last bit, so the sum is the same whoever computes it."""
    total = 0
    for w, row in zip(weights, matrix, strict=True):
        total = total + float(w) * row
    return np.asarray(total, dtype=np.float64)


def weighted_sum(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """sum_i w_i r_i per image, in the order of `weights`; NaN stays NaN (a masked score masks the image).
    Scores may be numpy arrays or CPU torch tensors (read as float64); the result is a float64 array."""
    names = list(weights)
    return _sum_rows([weights[n] for n in names], score_matrix(scores, names))


def combine(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> CombinedRewards:
    """Both views at once: the learner picks `reward` (weighted_sum) or `matrix` + `weights` (advantage_sum)."""
    names = tuple(weights)
    matrix = score_matrix(scores, names)
    w = np.asarray([weights[n] for n in names], dtype=np.float64)
    return CombinedRewards(names, w, matrix, _sum_rows(w, matrix), np.isfinite(matrix).all(axis=0))


# rewards.combination -> what the advantage estimator gets from several reward models: (scores by name,
# weights) -> (rewards by name, weights). Flow-GRPO sums the rewards first and normalises the sum;
# DanceGRPO, MixGRPO and G2RPO normalise each reward on its own and sum the weighted advantages.
ADVANTAGE_INPUTS = {
    "weighted_sum": lambda scores, weights: ({"combined": weighted_sum(scores, weights)}, {"combined": 1.0}),
    "advantage_sum": lambda scores, weights: (dict(scores), dict(weights)),
}
