"""Group-relative advantages for the GRPO family, as pure tensor functions.

One formulation covers every strategy. Each scored image carries
  - a `reward_group` id: the images normalised together (Flow-GRPO: one prompt's G images;
    G2RPO: the G branches at one (step k, granularity lambda)), and
  - a `sample_id`: the trained sample its advantage adds to (Flow-GRPO: the image itself;
    G2RPO: the branch (k, b), so the z-scores of its |Lambda| images are summed, paper Eq. 12).
The advantage of a sample is clip(sum over its images of z(reward), +-adv_clip), with
z = (r - mean_group) / (std + eps) and std per group or over the whole batch (`global_std`). The std
is a named form (`STD_FORMS`): Flow-GRPO's population std + 1e-4 (flow_grpo/stat_tracking.py, np.std),
or the unbiased std + 1e-8 of DanceGRPO, MixGRPO and G2RPO (their train_*.py, torch.Tensor.std).
Groups whose rewards are all equal carry no signal: their z-scores are exactly 0, and they are
reported so the caller can drop them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch

StdMode = Literal["group", "global"]
StdForm = Literal["population", "unbiased"]
ADV_EPS = 1e-4  # Flow-GRPO's stat tracker adds 1e-4 to the std
ADV_CLIP = 5.0  # Flow-GRPO's adv_clip_max
# Delta degrees of freedom of each std form: np.std (Flow-GRPO) divides by n, torch.Tensor.std
# (DanceGRPO, MixGRPO, G2RPO) by n - 1.
STD_FORMS: dict[str, int] = {"population": 0, "unbiased": 1}


def _ddof(std_form: str) -> int:
    if std_form not in STD_FORMS:
        raise ValueError(f"unknown std_form {std_form!r}; expected one of {sorted(STD_FORMS)}")
    return STD_FORMS[std_form]


def _check_rewards(rewards: torch.Tensor, name: str = "rewards") -> torch.Tensor:
    if rewards.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(f"{name} has NaN or inf at indices {bad}")
    return rewards.double()


def _dense_ids(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary integer ids to 0..n-1 (in sorted order of the ids)."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    return inverse, len(uniq)


def group_stats(
    rewards: torch.Tensor, group_ids: torch.Tensor, ddof: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element mean, std (ddof 0 as np.std, ddof 1 as torch.Tensor.std) and size of the element's
    group. A one-element group has no unbiased std (NaN)."""
    dense, n = _dense_ids(group_ids)
    count = torch.zeros(n, dtype=rewards.dtype).index_add_(0, dense, torch.ones_like(rewards))
    mean = torch.zeros(n, dtype=rewards.dtype).index_add_(0, dense, rewards) / count
    dev2 = (rewards - mean[dense]) ** 2
    var = torch.zeros(n, dtype=rewards.dtype).index_add_(0, dense, dev2) / (count - ddof)
    return mean[dense], var.sqrt()[dense], count[dense]


def zero_std_mask(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """True for every element whose group's rewards are all equal (no learning signal)."""
    rewards = _check_rewards(rewards)
    dense, n = _dense_ids(group_ids)
    lo = torch.full((n,), float("inf"), dtype=rewards.dtype).scatter_reduce(0, dense, rewards, "amin")
    hi = torch.full((n,), float("-inf"), dtype=rewards.dtype).scatter_reduce(0, dense, rewards, "amax")
    return (hi == lo)[dense]


def no_signal_mask(
    rewards: Mapping[str, torch.Tensor], group_ids: torch.Tensor, weights: Mapping[str, float] | None = None
) -> torch.Tensor:
    """True for every element whose group has equal rewards under every reward model that carries weight:
    its advantage is exactly 0 whatever the multi-reward mode. (With 'advantage_sum' a group whose first
    reward model is constant may still carry signal from another one.)"""
    weights = dict(weights or {})
    weighted = [name for name in rewards if weights.get(name, 1.0) != 0]
    mask = torch.ones(group_ids.shape[0], dtype=torch.bool)
    for name in weighted:
        mask &= zero_std_mask(rewards[name], group_ids)
    return mask


def group_zscores(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    std_mode: StdMode = "group",
    eps: float = ADV_EPS,
    std_form: StdForm = "population",
) -> torch.Tensor:
    """z = (r - group mean) / (std + eps); std of the group, or of the whole batch when std_mode='global',
    in the named `std_form` ('population' or 'unbiased').

    Elements of zero-std groups get exactly 0 (not a rounding residue divided by eps).
    """
    rewards = _check_rewards(rewards)
    if rewards.shape != group_ids.shape:
        raise ValueError(f"group_ids shape {tuple(group_ids.shape)} differs from rewards shape {tuple(rewards.shape)}")
    ddof = _ddof(std_form)
    mean, std, _ = group_stats(rewards, group_ids, ddof)
    if std_mode == "global":
        std = rewards.std(correction=ddof).expand_as(rewards)
    elif std_mode != "group":
        raise ValueError(f"unknown std_mode {std_mode!r}; expected 'group' or 'global'")
    z = (rewards - mean) / (std + eps)
    return torch.where(zero_std_mask(rewards, group_ids), torch.zeros_like(z), z).float()


def sum_to_samples(values: torch.Tensor, sample_ids: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Sum per-image values into their trained samples (G2RPO: over granularities)."""
    if sample_ids.min() < 0 or sample_ids.max() >= num_samples:
        raise ValueError(f"sample_ids must lie in [0, {num_samples}), got range [{sample_ids.min()}, {sample_ids.max()}]")
    return torch.zeros(num_samples, dtype=values.dtype).index_add_(0, sample_ids, values)


def grpo_advantages(
    rewards: torch.Tensor | Mapping[str, torch.Tensor],
    reward_group: torch.Tensor,
    sample_id: torch.Tensor | None = None,
    num_samples: int | None = None,
    *,
    weights: Mapping[str, float] | None = None,
    std_mode: StdMode = "group",
    eps: float = ADV_EPS,
    clip: float = ADV_CLIP,
    std_form: StdForm = "population",
) -> torch.Tensor:
    """Advantages of the trained samples: clip(sum over reward models and over a sample's images of
    weight * z-score, +-clip).

    `rewards` is one [N] tensor, or a dict name -> [N] for the 'advantage_sum' multi-reward mode
    (DanceGRPO, MixGRPO, G2RPO: each reward model is normalised on its own, then summed). Without
    sample ids every image is its own sample.
    """
    per_reward = rewards if isinstance(rewards, Mapping) else {"reward": rewards}
    if not per_reward:
        raise ValueError("no rewards given")
    weights = dict(weights or {})
    unknown = set(weights) - set(per_reward)
    if unknown:
        raise ValueError(f"weights name reward models that have no rewards: {sorted(unknown)}")
    n = reward_group.shape[0]
    if sample_id is None:
        sample_id, num_samples = torch.arange(n), n
    elif num_samples is None:
        num_samples = int(sample_id.max()) + 1
    total = torch.zeros(num_samples)
    for name, r in per_reward.items():
        if r.shape != (n,):
            raise ValueError(f"rewards[{name!r}] has shape {tuple(r.shape)}, expected ({n},)")
        z = group_zscores(r, reward_group, std_mode=std_mode, eps=eps, std_form=std_form)
        total += weights.get(name, 1.0) * sum_to_samples(z, sample_id, num_samples)
    return total.clamp(-clip, clip)


# ----------------------------------------------------------------------------- the estimator registry

# An estimator maps the iteration's rewards (one [N] tensor per reward model, or {"combined": [N]}), each
# image's reward group and sample id, the sample count and the reward weights to the samples' advantages
# [num_samples], reading its settings from the learner config section (as verl's `register_adv_est`).
AdvantageEstimator = Callable[..., torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_adv_est(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    def wrap(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return wrap


def get_adv_est(name: str) -> AdvantageEstimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"advantage estimator {name!r} is not registered; known: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name]


@register_adv_est("grpo")
def grpo_estimator(rewards: Mapping[str, torch.Tensor], reward_group: torch.Tensor, sample_id: torch.Tensor,
                   num_samples: int, *, weights: Mapping[str, float], learner) -> torch.Tensor:
    """`grpo_advantages` with the learner section's std mode and form, eps and clip: every algorithm of the
    project so far (G2RPO's (k, lambda) groups and branch samples come from its strategy's record)."""
    return grpo_advantages(rewards, reward_group, sample_id, num_samples, weights=weights, std_mode=learner.std_mode,
                           clip=learner.adv_clip, eps=learner.adv_eps, std_form=learner.adv_std)


@register_adv_est("centred")
def centred_estimator(rewards: Mapping[str, torch.Tensor], reward_group: torch.Tensor, sample_id: torch.Tensor,
                      num_samples: int, *, weights: Mapping[str, float], learner) -> torch.Tensor:
    """The group-centred reward sum over reward models of weight * (r - mean_group), not divided by a std
    nor clipped: arXiv 2602.04663's 'exact' advantage before its scale (the unit applies the scale). A
    group of equal rewards gets exactly 0."""
    total = torch.zeros(num_samples, dtype=torch.float64)
    for name, r in rewards.items():
        r = _check_rewards(r, f"rewards[{name!r}]")
        mean, _, _ = group_stats(r, reward_group)
        total += weights.get(name, 1.0) * sum_to_samples(r - mean, sample_id, num_samples)
    return total.float()


def g2rpo_advantages(
    rewards: torch.Tensor, *, eps: float = 1e-8, clip: float = ADV_CLIP, std_form: StdForm = "unbiased"
) -> torch.Tensor:
    """G2RPO multi-granularity advantages in the paper's layout: rewards [K, L, G] (step k, granularity
    lambda, branch b) -> [K, G], z-scored within each (k, lambda) group of G branches and summed over lambda
    (weight 1). The registered "grpo" estimator computes the same from G2RPO's record (reward group
    (k, lambda), sample (k, b)); tests/test_advantages.py checks the two agree.
    The defaults are G2RPO's (train_g2rpo_hps_clip.py: group_rewards.std(dim=0) + 1e-8)."""
    if rewards.ndim != 3:
        raise ValueError(f"rewards must be [K, L, G], got shape {tuple(rewards.shape)}")
    k, n_lambda, g = rewards.shape
    kk, ll, bb = torch.meshgrid(torch.arange(k), torch.arange(n_lambda), torch.arange(g), indexing="ij")
    adv = grpo_advantages(
        rewards.flatten(), reward_group=(kk * n_lambda + ll).flatten(), sample_id=(kk * g + bb).flatten(),
        num_samples=k * g, eps=eps, clip=clip, std_form=std_form,
    )
    return adv.view(k, g)


class PerPromptStatTracker:
    """Flow-GRPO's per-prompt statistics: advantages of a batch grouped by prompt text, so a prompt's
    group may be split across rollout actors and still be normalised together. Keeps a per-prompt
    history of rewards (for logging how often a prompt has been seen and its running mean)."""

    def __init__(self, *, std_mode: StdMode = "group", eps: float = ADV_EPS, clip: float = ADV_CLIP):
        self.std_mode, self.eps, self.clip = std_mode, eps, clip
        self.history: dict[str, list[float]] = defaultdict(list)

    def update(self, prompts: Sequence[str], rewards: torch.Tensor | np.ndarray) -> torch.Tensor:
        rewards = torch.as_tensor(np.asarray(rewards), dtype=torch.float64)
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"{len(prompts)} prompts but {rewards.shape[0]} rewards")
        index: dict[str, int] = {}
        group_ids = torch.tensor([index.setdefault(p, len(index)) for p in prompts])
        for p, r in zip(prompts, rewards.tolist(), strict=True):
            self.history[p].append(r)
        return grpo_advantages(rewards, group_ids, std_mode=self.std_mode, eps=self.eps, clip=self.clip)

    def stats(self) -> dict[str, float]:
        seen = [len(v) for v in self.history.values()]
        return {
            "prompts/unique_seen": float(len(seen)),
            "prompts/mean_times_seen": float(np.mean(seen)) if seen else 0.0,
        }
