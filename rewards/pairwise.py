"""Pairwise rewards: an image's reward is its mean win probability against the other images of its group.

Pref-GRPO (Wang et al. 2025, arXiv 2508.20751) replaces a pointwise reward model's score by win rates within
the group: a pairwise judge compares every two images of a group and image i's reward is
    r_i = 1/(G-1) * sum_{j != i} P(i beats j),
so small score gaps that a z-score would blow up into large advantages (their "illusory advantage") become
bounded preferences in [0, 1]. With P(i beats j) + P(j beats i) = 1 the rewards of a group sum to G/2.

A judge (`PairwiseJudge`) answers P(first preferred) for index pairs of a batch; `PairwiseScorer` turns any
judge into a groupwise scorer (rewards/base.py: `groupwise = True`, so the reward pools send it whole groups
with their ids). A comparison the judge could not make (NaN) leaves both of its images unscored: a win rate over
fewer opponents is another quantity, and a failure is never a loss (never 0).

`pairwise_pickscore`: PickScore as the judge. Kirstain et al. 2023 (Pick-a-Pic) define the preference of image
a over b for a prompt as the softmax over the pair of s = logit_scale * cos(text, image), which is
sigmoid(s_a - s_b); that judge is symmetric, so each pair is scored once. A VLM judge with a position bias
(UnifiedReward's pairwise mode) sets `symmetric = False` and is asked in both orders, the two averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rewards.base import ScoreResult, prompt_groups, register_scorer, validate_batch, validate_groups
from rewards.pickscore import PICKSCORE_MODEL, PICKSCORE_PROCESSOR, PICKSCORE_SCALE, ClipPair


@dataclass(frozen=True)
class Preferences:
    """A judge's answer for P pairs of a batch of B images."""

    p_first: np.ndarray  # float [P]: P(first image of the pair preferred); NaN where the comparison failed
    diagnostics: Mapping[str, np.ndarray] = field(default_factory=dict)  # per image [B], logged per reward model
    errors: tuple[str, ...] = ()  # one-line reasons for failed comparisons


class PairwiseJudge(Protocol):
    """Compares two images of the same prompt. `symmetric`: P(a, b) = 1 - P(b, a) by construction (a score
    difference), so one order suffices; False for judges that read the pair in order (a VLM shown two images)."""

    symmetric: bool

    def prefer(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping],
               pairs: np.ndarray) -> Preferences:
        """P(images[a] preferred to images[b]) for each row (a, b) of pairs [P, 2] (same prompt in a pair)."""
        ...


def group_pairs(groups: np.ndarray) -> np.ndarray:
    """int [P, 2]: every unordered pair (i, j), i < j, of images in the same group, in row order."""
    i, j = np.triu_indices(len(groups), k=1)
    same = groups[i] == groups[j]
    return np.stack([i[same], j[same]], axis=1).astype(np.int64)


def symmetrise(p_ab: np.ndarray, p_ba: np.ndarray) -> np.ndarray:
    """P(a beats b) from both orders of an order-sensitive judge: the mean of P(a, b) and 1 - P(b, a), which
    cancels a constant position bias. NaN if either order failed."""
    return (p_ab + 1.0 - p_ba) / 2.0


def win_rates(groups: np.ndarray, pairs: np.ndarray, p_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reward [B], scored [B]): r_i = mean over the other images j of i's group of P(i beats j), where a row
    (a, b) of `pairs` gives P(a beats b) = p_first and P(b beats a) = 1 - p_first (Pref-GRPO's win rate with
    soft wins). An image is scored only when all its comparisons succeeded (p_first finite) and it has an
    opponent; elsewhere the reward is NaN."""
    size = len(groups)
    ok = np.isfinite(p_first)
    a, b = pairs[:, 0], pairs[:, 1]
    wins = np.zeros(size)
    np.add.at(wins, a[ok], p_first[ok])
    np.add.at(wins, b[ok], 1.0 - p_first[ok])
    failed = np.zeros(size, dtype=bool)
    failed[a[~ok]] = True
    failed[b[~ok]] = True
    _, dense, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    opponents = sizes[dense] - 1
    scored = ~failed & (opponents > 0)
    return np.where(scored, wins / np.maximum(opponents, 1), np.nan), scored


class PairwiseScorer:
    """A groupwise scorer from a pairwise judge (`self.judge`): reward = win rate within the group;
    diagnostics: the judge's per-image ones."""

    name = "pairwise"
    groupwise = True
    judge: PairwiseJudge

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None,
                 groups: np.ndarray | None = None) -> ScoreResult:
        metadata = validate_batch(images, prompts, metadata)
        groups = validate_groups(prompt_groups(prompts) if groups is None else groups, len(prompts))
        pairs = group_pairs(groups)
        answer = self._ask(images, prompts, metadata, pairs)
        p_first, errors = answer.p_first, list(answer.errors)
        if not self.judge.symmetric:
            reverse = self._ask(images, prompts, metadata, pairs[:, ::-1])
            p_first, errors = symmetrise(p_first, reverse.p_first), errors + list(reverse.errors)
        reward, scored = win_rates(groups, pairs, p_first)
        if (~np.isfinite(p_first)).any():
            errors.insert(0, f"{int((~np.isfinite(p_first)).sum())} of {len(pairs)} comparisons failed; their "
                          "images are unscored")
        alone = int((np.unique(groups, return_counts=True)[1] == 1).sum())
        if alone:
            errors.insert(0, f"{alone} image(s) alone in their group: no opponent, no win rate")
        return ScoreResult(reward, answer.diagnostics, scored, tuple(errors))

    def _ask(self, images, prompts, metadata, pairs: np.ndarray) -> Preferences:
        answer = self.judge.prefer(images, prompts, metadata, pairs)
        p = np.asarray(answer.p_first, dtype=np.float64)
        if p.shape != (len(pairs),):
            raise RuntimeError(f"pairwise judge {type(self.judge).__name__} answered {p.shape} for {len(pairs)} pairs")
        if ((p < 0) | (p > 1)).any():  # NaN compares False: failures pass, out-of-range numbers are a judge bug
            raise RuntimeError(f"pairwise judge {type(self.judge).__name__} answered probabilities outside [0, 1]")
        return Preferences(p, answer.diagnostics, tuple(answer.errors))


def preference_probability(scores: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """P(a preferred to b) = softmax over (s_a, s_b) = sigmoid(s_a - s_b), Pick-a-Pic's preference model."""
    diff = scores[pairs[:, 0]] - scores[pairs[:, 1]]
    return 0.5 * (1.0 + np.tanh(diff / 2.0))  # sigmoid, without overflow for large gaps


class ClipPreferenceJudge:
    """PickScore (or any CLIPModel) as a pairwise judge: one embedding per image, then every pair from the
    score differences. Diagnostic per image: `pickscore`, Flow-GRPO's pointwise logit_scale * cos / 26."""

    symmetric = True

    def __init__(self, clip: ClipPair):
        self.clip = clip

    def prefer(self, images, prompts, metadata, pairs) -> Preferences:
        scores = self.clip.logit_scale() * self.clip.cosine(images, prompts)  # Pick-a-Pic's s(x, y)
        return Preferences(preference_probability(scores, pairs), {"pickscore": scores / PICKSCORE_SCALE})


@register_scorer("pairwise_pickscore")
class PairwisePickScore(PairwiseScorer):
    """Pref-GRPO's win rate with PickScore's preference probability as the judge."""

    name = "pairwise_pickscore"

    def __init__(self, model: str = PICKSCORE_MODEL, processor: str | None = PICKSCORE_PROCESSOR,
                 device: str = "auto", dtype: str = "float32", num_threads: int = 1):
        """model: CLIPModel folder or hub id; processor: the CLIP processor's (None: the model's own folder)."""
        self.judge = ClipPreferenceJudge(ClipPair(model, processor, device, dtype, num_threads))
