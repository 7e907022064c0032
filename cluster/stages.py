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
from rewards.base import ScoreResult
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


def score_in_process(results: Sequence[GroupResult], scorers: dict) -> list[Scored]:
    """Score each sampled group in this process with `scorers` (rewards.base.build_scorers)."""
    return [Scored(r, {name: scorer(*reward_inputs(r)) for name, scorer in scorers.items()}) for r in results]


def iteration_advantages(scored: list[Scored], cfg: ExperimentConfig) -> tuple[list[TrainGroup], dict]:
    """Advantages over the whole iteration at once (so `global` std sees every image); images with a
    masked reward are left out of their group, and samples left with no valid image are not trained."""
    names = [s.name for s in cfg.rewards.scorers]
    weights = cfg.rewards.weights()
    offset_g = offset_s = 0
    group_ids, sample_ids, per_reward, valid = [], [], {n: [] for n in names}, []
    for s in scored:
        r = s.result.rollout
        group_ids.append(r.reward_group + offset_g)
        sample_ids.append(r.image_sample_id + offset_s)
        for n in names:
            per_reward[n].append(torch.from_numpy(s.scores[n].reward))
        valid.append(torch.from_numpy(np.all([np.isfinite(s.scores[n].reward) for n in names], axis=0)))
        offset_g += r.num_reward_groups
        offset_s += r.num_samples
    group_ids, sample_ids, valid = torch.cat(group_ids), torch.cat(sample_ids), torch.cat(valid)
    rewards = {n: torch.cat(v).double() for n, v in per_reward.items()}
    rewards, weights = ADVANTAGE_INPUTS[cfg.rewards.combination](rewards, weights)
    rewards = {n: torch.as_tensor(r) for n, r in rewards.items()}
    lc = cfg.learner
    estimate = get_adv_est(cfg.algorithm.advantage_estimator)
    adv = estimate({n: r[valid] for n, r in rewards.items()}, group_ids[valid], sample_ids[valid], offset_s,
                   weights=weights, learner=lc)
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
        "reward/masked_images": float((~valid).sum()),
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
