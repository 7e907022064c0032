"""learner/advantages.py: vectorised advantages against plain-loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.advantages import (
    PerPromptStatTracker,
    g2rpo_advantages,
    group_zscores,
    grpo_advantages,
    no_signal_mask,
    zero_std_mask,
)
from rewards.combine import weighted_sum

pytestmark = pytest.mark.unit


def _loop_zscores(rewards, groups, global_std=False, eps=1e-4):
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    for g in set(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        r = rewards[idx]
        std = rewards.std() if global_std else r.std()
        for i in idx:
            out[i] = 0.0 if r.max() == r.min() else (rewards[i] - r.mean()) / (std + eps)
    return out


@pytest.mark.parametrize("std_mode", ["group", "global"])
def test_zscores_match_loop(std_mode):
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(48, generator=g)
    groups = torch.randint(0, 6, (48,), generator=g)
    rewards[groups == 2] = 0.5  # a zero-std group
    ours = group_zscores(rewards, groups, std_mode=std_mode)
    ref = _loop_zscores(rewards.tolist(), groups.tolist(), global_std=std_mode == "global")
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours[groups == 2], torch.zeros(int((groups == 2).sum())))


def test_zero_std_mask_and_clip():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    assert zero_std_mask(rewards, groups).tolist() == [True] * 3 + [False] * 9
    adv = grpo_advantages(rewards, groups)
    # group 2: one success in six -> z = (1 - 1/6) / (sqrt(5)/6 + 1e-4) = 2.236..., within the clip
    assert adv[11].item() == pytest.approx((5 / 6) / (np.sqrt(5) / 6 + 1e-4), rel=1e-5)
    big = torch.tensor([0.0] * 99 + [1.0])
    assert grpo_advantages(big, torch.zeros(100, dtype=torch.long)).max().item() == 5.0


def test_g2rpo_advantages_match_loop():
    g = torch.Generator().manual_seed(1)
    k, lam, gsize = 4, 3, 6
    rewards = torch.rand(k, lam, gsize, generator=g)
    ours = g2rpo_advantages(rewards)
    ref = np.zeros((k, gsize))
    for i in range(k):
        for j in range(lam):
            # G2RPO (train_g2rpo_hps_clip.py): group_rewards.std(dim=0) + 1e-8, torch's unbiased std
            r = rewards[i, j].double().numpy()
            ref[i] += (r - r.mean()) / (r.std(ddof=1) + 1e-8)
    np.testing.assert_allclose(ours.numpy(), np.clip(ref, -5, 5), rtol=1e-5, atol=1e-6)


def test_advantage_sum_mode_sums_per_reward_advantages():
    g = torch.Generator().manual_seed(2)
    groups = torch.arange(4).repeat_interleave(5)
    ra, rb = torch.rand(20, generator=g), torch.rand(20, generator=g) * 10
    both = grpo_advantages({"a": ra, "b": rb}, groups, weights={"a": 1.0, "b": 0.5}, clip=100)
    ref = _loop_zscores(ra.tolist(), groups.tolist()) + 0.5 * _loop_zscores(rb.tolist(), groups.tolist())
    np.testing.assert_allclose(both.numpy(), ref, rtol=1e-5, atol=1e-5)
    # The weighted-sum mode normalises the combined reward instead, a different number.
    combined = grpo_advantages(torch.from_numpy(weighted_sum({"a": ra, "b": rb}, {"a": 1.0, "b": 0.5})), groups, clip=100)
    assert not torch.allclose(combined, both)


def test_sample_ids_sum_images_into_samples():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv = grpo_advantages(rewards, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), 2)
    assert torch.allclose(adv, torch.zeros(2), atol=1e-6)


def test_stat_tracker_groups_by_prompt_across_order():
    tracker = PerPromptStatTracker()
    prompts = ["a", "b", "a", "b", "a", "b"]
    rewards = np.array([1.0, 0.2, 0.0, 0.2, 0.5, 0.2])
    adv = tracker.update(prompts, rewards)
    ref = _loop_zscores(rewards, prompts)
    np.testing.assert_allclose(adv.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert tracker.stats()["prompts/unique_seen"] == 2.0


def test_bad_rewards_raise():
    with pytest.raises(ValueError, match=r"NaN or inf at indices \[1\]"):
        grpo_advantages(torch.tensor([0.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="weights name reward models"):
        grpo_advantages({"a": torch.zeros(2)}, torch.tensor([0, 0]), weights={"b": 1.0})
    with pytest.raises(ValueError, match=r"rewards\['b'\] has shape"):
        grpo_advantages({"a": torch.zeros(2), "b": torch.zeros(3)}, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="2 prompts but 3 rewards"):
        PerPromptStatTracker().update(["a", "b"], np.zeros(3))


@pytest.mark.parametrize("std_mode", ["group", "global"])
def test_unbiased_std_form_is_dancegrpos_formula(std_mode):
    # DanceGRPO / MixGRPO (train_grpo_flux.py): (r - mean) / (r.std() + 1e-8) per group of
    # num_generations, or over the gathered batch without --use_group; torch.std is unbiased.
    g = torch.Generator().manual_seed(3)
    rewards = torch.rand(24, generator=g, dtype=torch.float64)
    groups = torch.arange(4).repeat_interleave(6)
    ours = group_zscores(rewards, groups, std_mode=std_mode, eps=1e-8, std_form="unbiased")
    ref = torch.zeros(24, dtype=torch.float64)
    for i in range(4):
        r = rewards[6 * i : 6 * i + 6]
        std = rewards.std() if std_mode == "global" else r.std()
        ref[6 * i : 6 * i + 6] = (r - r.mean()) / (std + 1e-8)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5)
    population = group_zscores(rewards, groups, std_mode=std_mode, eps=1e-8)
    # The two forms differ by sqrt(n / (n - 1)) in the group mode: 1.095 for n = 6.
    assert not torch.allclose(ours, population)
    with pytest.raises(ValueError, match="std_form"):
        group_zscores(rewards, groups, std_form="sample")


def test_no_signal_mask_looks_at_every_weighted_reward_model():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    first = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])  # group 0 constant under the first model
    second = torch.tensor([0.2, 0.5, 0.1, 0.3, 0.3, 0.3])  # ... but not under the second
    assert no_signal_mask({"a": first, "b": second}, groups).tolist() == [False] * 6
    # A reward model of weight 0 (a watch, never trained on) carries no signal.
    assert no_signal_mask({"a": first, "b": second}, groups, {"a": 1.0, "b": 0.0}).tolist() == [True] * 3 + [False] * 3
    both_constant = {"a": first, "b": torch.tensor([0.2, 0.2, 0.2, 0.3, 0.3, 0.4])}
    assert no_signal_mask(both_constant, groups).tolist() == [True] * 3 + [False] * 3
    # advantage_sum gives group 0 a non-zero advantage exactly where the mask says it has signal.
    adv = grpo_advantages({"a": first, "b": second}, groups)
    assert adv[:3].abs().sum() > 0


def test_iteration_drops_only_samples_without_signal_under_advantage_sum():
    """The trainer's zero-std mask uses every weighted reward model: a group whose first scorer is constant
    but whose second varies is trained; a group constant under both is dropped (Flow-GRPO's filter)."""
    from cluster.config import load_config
    from cluster.stages import Scored, iteration_advantages
    from models.types import Rollout, Transitions
    from rewards.base import ScoreResult
    from rollout.worker import GroupRequest, GroupResult
    from tests.tiny_models import FLOWGRPO

    cfg = load_config(FLOWGRPO, ["rewards.combination=advantage_sum", "learner.drop_zero_std_groups=true"])
    cfg.rewards.scorers[1].weight = 1.0  # both scorers trained on
    names = [s.name for s in cfg.rewards.scorers]
    g = 4
    empty = Transitions(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long), torch.zeros(0, 1),
                        *(torch.zeros(0) for _ in range(3)), *(torch.zeros(0, dtype=torch.long) for _ in range(2)))
    rollout = Rollout("flow_grpo", empty, torch.zeros(g, 1), torch.zeros(g, dtype=torch.long), torch.arange(g), g,
                      "flow_grpo", 0.7, 0, 0)  # fmt: skip
    scored = []
    for i, (first, second) in enumerate([([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]), ([0, 0, 0, 0], [0.5] * 4)]):
        result = GroupResult(GroupRequest(i, f"p{i}", {}, i, 0), rollout, np.zeros((g, 1, 1, 3), np.uint8), 0, "a", 0.0)
        scored.append(Scored(result, {names[0]: ScoreResult(np.array(first, float)),
                                      names[1]: ScoreResult(np.array(second, float))}))  # fmt: skip
    groups, metrics = iteration_advantages(scored, cfg)
    assert groups[0].keep.all() and not groups[1].keep.any()
    assert groups[0].advantages.abs().sum() > 0
    assert metrics["advantage/zero_std_fraction"] == 0.5
