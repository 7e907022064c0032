"""The stages between sampling and the update, as plain functions the driver (cluster/trainer.py) and the
in-process benchmarks share: a sampled group's reward inputs, scoring it in this process, the iteration's
advantages, its reward metrics, and the learner ranks' metrics averaged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cluster.config import ExperimentConfig
from cluster.metrics import reward_by_tag
from learner.advantages import get_adv_est, no_signal_mask
from learner.worker import TrainGroup
from rewards.base import Progress, ScoreResult, call_scorer
from rewards.combine import ADVANTAGE_INPUTS, combine
from rewards.pool import RewardBatch
from rollout.worker import GroupResult


@dataclass
class Scored:
    """One sampled group with its per-scorer rewards."""

    result: GroupResult
    scores: dict  # scorer -> ScoreResult


def reward_inputs(res: GroupResult) -> tuple:
    """(images, prompts, metadata) of a sampled group, as scorers and the reward pools take them."""
    n = res.num_images
    return res.images, [res.request.prompt] * n, [res.request.metadata] * n


def reward_context(res: GroupResult, iterations: int | None = None) -> dict:
    """What a scorer may declare it needs beyond the images (rewards/base.py): the group's reward groups, the
    training progress (None without `iterations`) and its final latents (an ObjectRef when a rollout actor put
    them, the tensor in-process, None when nobody asked). The reward pools pass each only to the scorers that
    declare it, so offering them costs nothing."""
    latents = res.latents
    if latents is None and res.rollout.final_latents is not None:
        latents = res.rollout.final_latents
    return {"groups": res.rollout.reward_group.numpy(),
            "progress": None if iterations is None else Progress(res.request.iteration, iterations),
            "latents": latents}


def score_in_process(results: Sequence[GroupResult], scorers: dict, iterations: int | None = None) -> list[Scored]:
    """Score each sampled group in this process with `scorers` (rewards.base.build_scorers)."""
    return [Scored(r, {name: call_scorer(scorer, *reward_inputs(r), **reward_context(r, iterations))
                       for name, scorer in scorers.items()}) for r in results]


MIN_SCORED_PER_GROUP = 2  # fewer scored images give no group-relative signal (one image is its own mean)


def enough_scored(group_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """valid, less the images of reward groups with fewer than MIN_SCORED_PER_GROUP valid images: such a
    group is dropped as a zero-variance group is, whatever learner.drop_zero_std_groups says, since its
    lone image's advantage of 0 would come from the images that failed, not from a comparison."""
    dense = torch.unique(group_ids, return_inverse=True)[1]
    counts = torch.zeros(int(dense.max()) + 1 if dense.numel() else 0, dtype=torch.long).index_add_(
        0, dense, valid.long())
    return valid & (counts[dense] >= MIN_SCORED_PER_GROUP)


def iteration_advantages(scored: list[Scored], cfg: ExperimentConfig) -> tuple[list[TrainGroup], dict]:
    """Advantages over the whole iteration at once (so `global` std sees every image). Unscored images
    (rewards/base.py: `ScoreResult.valid` False under any scorer) are left out of their group's mean and
    std; a group left with fewer than two scored images is dropped (`enough_scored`); a sample left with no
    valid image gets advantage 0 and `keep` False, so it is never trained (not trained as a zero).
    Scorers of weight 0 (watches) add nothing to any advantage, so their failures drop no image."""
    names = [s.name for s in cfg.rewards.scorers if s.weight > 0]
    weights = {n: w for n, w in cfg.rewards.weights().items() if w > 0}
    offset_g = offset_s = 0
    group_ids, sample_ids, per_reward, valid = [], [], {n: [] for n in names}, []
    for s in scored:
        r = s.result.rollout
        group_ids.append(r.reward_group + offset_g)
        sample_ids.append(r.image_sample_id + offset_s)
        for n in names:
            per_reward[n].append(torch.from_numpy(s.scores[n].reward))
        valid.append(torch.from_numpy(np.all([s.scores[n].valid for n in names], axis=0)))
        offset_g += r.num_reward_groups
        offset_s += r.num_samples
    group_ids, sample_ids, scored_images = torch.cat(group_ids), torch.cat(sample_ids), torch.cat(valid)
    valid = enough_scored(group_ids, scored_images)
    rewards = {n: torch.cat(v).double() for n, v in per_reward.items()}
    rewards, weights = ADVANTAGE_INPUTS[cfg.rewards.combination](rewards, weights)
    rewards = {n: torch.as_tensor(r) for n, r in rewards.items()}
    lc = cfg.learner
    estimate = get_adv_est(cfg.algorithm.advantage_estimator)
    if valid.any():
        adv = estimate({n: r[valid] for n, r in rewards.items()}, group_ids[valid], sample_ids[valid], offset_s,
                       weights=weights, learner=lc)
    else:  # nothing scored this iteration: no sample is trained (rewards.max_unscored_share decides on the run)
        adv = torch.zeros(offset_s)
    has_valid = torch.zeros(offset_s, dtype=torch.bool).index_fill_(0, sample_ids[valid], True)
    zero_std = no_signal_mask({n: r[valid] for n, r in rewards.items()}, group_ids[valid], weights)
    keep = has_valid.clone()
    if lc.drop_zero_std_groups:
        informative = torch.zeros(offset_s, dtype=torch.bool).index_fill_(0, sample_ids[valid][~zero_std], True)
        keep &= informative
    groups, start = [], 0
    for s in scored:
        n = s.result.rollout.num_samples
        groups.append(TrainGroup(s.result.request.prompt, s.result.rollout, adv[start : start + n].float(),
                                 keep[start : start + n], s.result.policy_version, s.result.request.group_index,
                                 bulk=s.result.bulk))
        start += n
    group_zero = zero_std.float().mean().item() if zero_std.numel() else 1.0
    return groups, {
        "advantage/abs_mean": adv[keep].abs().mean().item() if keep.any() else 0.0,
        "advantage/zero_std_fraction": group_zero,
        "advantage/samples_kept": float(keep.sum()),
        "reward/unscored_images": float((~scored_images).sum()),
        "advantage/groups_too_few_scored": float(len(set(group_ids.tolist()) - set(group_ids[valid].tolist()))),
    }


def reward_metrics(scored: list[Scored], cfg: ExperimentConfig) -> dict:
    """The iteration's reward metrics (rewards/pool.py names them), the weighted total and, for
    GenEval-style scorers, the accuracy (GenEval's `correct` verdict)."""
    names = [s.name for s in cfg.rewards.scorers]
    results = {n: ScoreResult.concat([s.scores[n] for s in scored]) for n in names}
    batch = RewardBatch(results, combine({n: r.reward for n, r in results.items()}, cfg.rewards.weights()))
    out = batch.metrics()
    total = batch.combined.reward[batch.combined.valid]
    out["reward/mean"] = float(total.mean()) if total.size else float("nan")
    out["reward/std"] = float(total.std()) if total.size else float("nan")
    correct = [out[k] for k in out if k.endswith("/correct")]
    if correct:
        out["reward/accuracy"] = correct[0]
    tags = [s.result.request.metadata.get("tag") for s in scored]
    out.update(reward_by_tag(batch.combined.reward, tags, [s.result.num_images for s in scored]))
    return out


def mean_over_ranks(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the ranks that report it. A rank whose share was only zero-weight
    padding reports no policy metrics; taking the keys from rank 0 alone dropped every other rank's."""
    keys = dict.fromkeys(k for metrics in per_rank for k in metrics)
    return {k: float(np.mean([m[k] for m in per_rank if k in m])) for k in keys}
