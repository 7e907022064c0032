"""Intervals for evaluation accuracies, stratified by tag, for one evaluation and for the paired
difference of two. GenEval reports `overall` as the mean of its per-tag accuracies, so every bootstrap
keeps the tags fixed and recomputes the same mean of means in each replicate. Two intervals:

- `ci` (fixed prompts): each tag's images are resampled, the prompt set kept as it is (for one
  evaluation this is the binomial interval of each tag). This is the noise of the benchmark as it is
  defined, a fixed prompt set evaluated with random seeds (GenEval's 553 prompts; the shapes test
  split's 42), and the one two checkpoints are compared with: it shrinks as images are added, so the
  evaluation can be sized to a target. (Resampling within each prompt instead would need several
  images per prompt: with one, a prompt's variance cannot be seen and the interval collapses.)
- `ci_prompts` (two-stage: prompts, then images within each drawn prompt): also covers which prompts
  the split happens to hold, i.e. how far the number could move on other prompts of the same kind.
  With 2-4 prompts in a tag that differ a lot (measured on the shipped model: 'four circles' 0.00 and
  'two circles' 0.75), it stays wide whatever the number of images, and it counts the seed noise about
  twice when prompts do not differ: it is reported, not sized to.

A paired comparison resamples the per-image differences of two evaluations with the same prompts and
seeds, so the noise both share (which prompt, which initial noise) cancels. Pure numpy, seeded: the
same inputs give the same interval in every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20261129
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A mean with its percentile-bootstrap 95% interval."""

    value: float
    low: float
    high: float

    @property
    def halfwidth(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def _tag_replicates(values: np.ndarray, prompt_index: np.ndarray, rng: np.random.Generator, n_boot: int,
                    resample_prompts: bool) -> np.ndarray:
    """[n_boot] replicates of one tag's mean image value: its prompts (drawn with replacement when
    `resample_prompts`, else each once), then for each as many of its images as it has, with
    replacement (prompts may hold different numbers of images: a replicate averages all drawn images,
    as the point estimate does)."""
    prompts = np.unique(prompt_index)
    per_prompt = [values[prompt_index == p] for p in prompts]
    sizes = np.array([len(v) for v in per_prompt])
    padded = np.full((len(prompts), sizes.max()), np.nan)
    for i, v in enumerate(per_prompt):
        padded[i, : len(v)] = v
    if resample_prompts:  # stage 1
        drawn = rng.integers(len(prompts), size=(n_boot, len(prompts)))
    else:
        drawn = np.broadcast_to(np.arange(len(prompts)), (n_boot, len(prompts)))
    n = sizes[drawn]  # [n_boot, P] images of each drawn prompt
    img = (rng.random((n_boot, len(prompts), sizes.max())) * n[..., None]).astype(np.int64)  # stage 2
    picked = padded[drawn[..., None], img]  # [n_boot, P, max_size]
    mask = np.arange(sizes.max())[None, None, :] < n[..., None]
    return np.where(mask, picked, 0.0).sum(axis=(1, 2)) / mask.sum(axis=(1, 2))


def tag_means(values: np.ndarray, tags: np.ndarray) -> dict[str, float]:
    """Mean value per tag (sorted by tag name) and `overall`, their unweighted mean (GenEval's)."""
    out = {str(t): float(values[tags == t].mean()) for t in sorted(set(tags.tolist()))}
    out["overall"] = float(np.mean(list(out.values())))
    return out


def bootstrap(values: Sequence[float], prompt_index: Sequence[int], tags: Sequence[str], *,
              resample_prompts: bool = False, n_boot: int = BOOTSTRAP_SAMPLES,
              seed: int = BOOTSTRAP_SEED) -> dict[str, Estimate]:
    """Per-tag and `overall` means of per-image `values` (a verdict in {0, 1}, or a paired difference)
    with percentile-bootstrap 95% intervals, stratified by tag: the tag's images resampled (fixed
    prompts), or its prompts first and then each drawn prompt's images (`resample_prompts`)."""
    values = np.asarray(values, dtype=np.float64)
    prompt_index, tags = np.asarray(prompt_index), np.asarray(tags, dtype=object)
    if not (len(values) == len(prompt_index) == len(tags)) or len(values) == 0:
        raise ValueError(f"bootstrap: {len(values)} values, {len(prompt_index)} prompt indices, {len(tags)} tags")
    if not np.all(np.isfinite(values)):
        raise ValueError("bootstrap: values must be finite (score every image, or drop it before)")
    point = tag_means(values, tags)
    rng = np.random.default_rng(seed)
    names = [t for t in point if t != "overall"]
    # With the prompts fixed, a tag's images are one pool (one pseudo-prompt) to resample.
    strata = prompt_index if resample_prompts else np.zeros_like(prompt_index)
    reps = {t: _tag_replicates(values[tags == t], strata[tags == t], rng, n_boot, resample_prompts) for t in names}
    reps["overall"] = np.mean([reps[t] for t in names], axis=0)
    return {k: Estimate(point[k], *np.percentile(reps[k], [2.5, 97.5]).tolist()) for k in point}


def worst_case_halfwidths(images_per_tag: dict[str, int]) -> dict[str, float]:
    """95% half-widths of each tag's accuracy and of `overall` for a fixed prompt set at p = 1/2 (the
    widest a binomial gets), from the image counts alone: what a configuration can promise before
    anything is sampled (`ci`, not `ci_prompts`)."""
    out = {t: Z95 * 0.5 / np.sqrt(n) for t, n in images_per_tag.items()}
    out["overall"] = Z95 * np.sqrt(sum(0.25 / n for n in images_per_tag.values())) / len(images_per_tag)
    return {k: float(v) for k, v in out.items()}


def verdict(name: str, est: Estimate, unit: str = "") -> str:
    """One line in words: is the difference distinguishable from zero at 95%?"""
    span = f"{est.value:+.3f} (95% CI {est.low:+.3f} to {est.high:+.3f}){unit}"
    if est.low > 0:
        return f"{name}: {span}: a real gain (the interval lies above zero)"
    if est.high < 0:
        return f"{name}: {span}: a real loss (the interval lies below zero)"
    return f"{name}: {span}: not distinguishable from zero"
