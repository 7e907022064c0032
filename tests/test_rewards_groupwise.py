"""Groupwise and pairwise rewards (rewards/pairwise.py) and the declared scorer inputs (rewards/base.py):
win rates against closed forms and a plain loop, whole groups through real reward pools on local Ray, an
unscored comparison leaving its images unscored, and progress / latents reaching only the scorers that
declare them."""

import os
import sys

import numpy as np
import pytest
import torch

from rewards.base import (
    Progress,
    ScoreResult,
    ScorerInputError,
    call_scorer,
    prompt_groups,
    register_scorer,
    validate_groups,
)
from rewards.pairwise import (
    PairwiseScorer,
    Preferences,
    group_pairs,
    preference_probability,
    symmetrise,
    win_rates,
)
from rewards.pool import request_rows

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def loop_win_rates(groups, scores):
    """Reference: for each image, the mean over the others of its group of sigmoid(s_i - s_j)."""
    out = []
    for i, g in enumerate(groups):
        others = [j for j, h in enumerate(groups) if h == g and j != i]
        out.append(np.mean([1 / (1 + np.exp(scores[j] - scores[i])) for j in others]))
    return np.array(out)


# -- the math ------------------------------------------------------------------------------------------------

def test_win_rates_closed_form_order_sum_and_loop():
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 7, 7])
    scores = np.array([0.3, -1.0, 2.0, 0.5, 5.0, 4.0, 4.5, 1.0, 1.0])
    pairs = group_pairs(groups)
    assert len(pairs) == 6 + 3 + 1 and (groups[pairs[:, 0]] == groups[pairs[:, 1]]).all()  # never across groups
    reward, scored = win_rates(groups, pairs, preference_probability(scores, pairs))
    assert scored.all()
    np.testing.assert_allclose(reward, loop_win_rates(groups, scores), rtol=1e-12)
    for g in np.unique(groups):  # P(a>b) + P(b>a) = 1, so a group of G sums to G/2
        members = groups == g
        assert reward[members].sum() == pytest.approx(members.sum() / 2)
        assert (np.argsort(reward[members]) == np.argsort(scores[members])).all() or g == 7  # same order
    assert reward[7] == reward[8] == 0.5  # a tie is a coin flip
    # two images: P and 1 - P
    r2, _ = win_rates(np.array([0, 0]), np.array([[0, 1]]), np.array([0.8]))
    np.testing.assert_allclose(r2, [0.8, 0.2])


def test_a_failed_comparison_leaves_its_images_unscored_never_zero():
    groups = np.zeros(4, dtype=int)
    pairs = group_pairs(groups)
    p = np.full(len(pairs), 0.75)
    p[(pairs == [0, 1]).all(axis=1)] = np.nan
    reward, scored = win_rates(groups, pairs, p)
    assert scored.tolist() == [False, False, True, True] and np.isnan(reward[:2]).all()
    # image 2 beat 3 (0.75) and lost to 0 and 1 (1 - 0.75 each): its win rate still counts all three opponents
    assert reward[2] == pytest.approx((0.25 + 0.25 + 0.75) / 3)
    alone, alone_scored = win_rates(np.array([0, 0, 1]), np.array([[0, 1]]), np.array([0.6]))
    assert alone_scored.tolist() == [True, True, False] and np.isnan(alone[2])  # no opponent: no win rate


class _BiasedJudge:
    """An order-sensitive judge: P(first) = sigmoid(s_a - s_b) + bias (a constant position bias); a pair of
    rows `fail` is answered NaN."""

    symmetric = False

    def __init__(self, scores, bias=0.1, fail=None):
        self.scores, self.bias, self.fail = np.asarray(scores, dtype=float), bias, fail

    def prefer(self, images, prompts, metadata, pairs):
        p = np.clip(preference_probability(self.scores, pairs) + self.bias, 0, 1)
        if self.fail is not None:
            p[(pairs == self.fail).all(axis=1) | (pairs == self.fail[::-1]).all(axis=1)] = np.nan
        return Preferences(p, {"score": self.scores.copy()})


class _JudgedScorer(PairwiseScorer):
    name = "judged"

    def __init__(self, judge):
        self.judge = judge


def test_pairwise_scorer_asks_both_orders_of_a_biased_judge_and_reports_failures():
    assert symmetrise(np.array([0.7]), np.array([0.5]))[0] == pytest.approx(0.6)  # (P(a,b) + 1 - P(b,a)) / 2
    scores = [0.0, 0.2, -0.3]  # within the clip range, so the bias cancels exactly
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    result = _JudgedScorer(_BiasedJudge(scores))(images, ["p"] * 3, None)
    np.testing.assert_allclose(result.reward, loop_win_rates([0, 0, 0], scores), rtol=1e-12)
    np.testing.assert_array_equal(result.diagnostics["score"], scores)
    failed = _JudgedScorer(_BiasedJudge(scores, fail=[1, 2]))(images, ["p"] * 3, None)
    assert failed.valid.tolist() == [True, False, False] and "1 of 3 comparisons failed" in failed.errors[0]
    assert np.isnan(failed.reward[1:]).all()


def test_pairwise_pickscore_on_a_tiny_clip(tmp_path):
    from rewards.base import build_scorer
    from tests.test_rewards_models import save_tiny_clip

    scorer = build_scorer("pairwise_pickscore", model=save_tiny_clip(tmp_path / "clip"), processor=None, device="cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    prompts = ["a red circle"] * 4 + ["two blue squares"] * 2
    groups = np.array([0, 0, 0, 0, 1, 1])
    result = scorer(images, prompts, None, groups=groups)
    again = scorer(images, prompts, None, groups=groups)
    np.testing.assert_array_equal(result.reward, again.reward)  # deterministic
    assert result.valid.all() and result.reward[:4].sum() == pytest.approx(2.0) and result.reward[4:].sum() == pytest.approx(1.0)
    s = result.diagnostics["pickscore"] * 26.0  # logit_scale * cos: the preference model's scores
    np.testing.assert_allclose(result.reward, loop_win_rates(groups, s), rtol=1e-9)
    assert (np.argsort(result.reward[:4]) == np.argsort(s[:4])).all()
    by_prompt = scorer(images, prompts, None)  # no groups: one group per run of a prompt
    np.testing.assert_allclose(by_prompt.reward, result.reward)


# -- requests and declared inputs ------------------------------------------------------------------------------

def test_requests_hold_whole_groups():
    assert request_rows(10, 4) == [(0, 4), (4, 8), (8, 10)]  # pointwise: fixed slices
    groups = np.array([0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 4, 4, 4, 4])
    rows = request_rows(len(groups), 4, groups)
    assert rows == [(0, 4), (4, 8), (8, 14)]  # packed up to 4; the group of 6 goes whole, alone
    for start, stop in rows:  # no group is cut
        assert start == 0 or groups[start] != groups[start - 1]
        assert stop == len(groups) or groups[stop] != groups[stop - 1]
    with pytest.raises(ScorerInputError, match="consecutive"):
        validate_groups([0, 1, 0], 3)
    assert prompt_groups(["a", "a", "b", "a"]).tolist() == [0, 0, 1, 2]  # runs: a repeated prompt is not split


class Recorder:
    """Records what it was handed. reward: the size of each image's group as this call saw it (so a split
    group shows); diagnostics: the extra keywords received, the progress and each row's latent sum. Its
    subclasses declare inputs, as a scorer class does."""

    name = "recorder"

    def __init__(self, fail_group=None):
        self.fail_group = fail_group

    def __call__(self, images, prompts, metadata, **extras):
        n = len(prompts)
        out = {"extras": np.full(n, float(len(extras))), "request_size": np.full(n, float(n))}
        reward = np.zeros(n)
        if "groups" in extras:
            groups = extras["groups"]
            reward = np.array([float((groups == g).sum()) for g in groups])
        if "progress" in extras:
            out["fraction"] = np.full(n, extras["progress"].fraction)
        if "latents" in extras:
            out["latent_sum"] = extras["latents"].flatten(1).sum(1).double().numpy()
        scored = None if self.fail_group is None else extras["groups"] != self.fail_group
        return ScoreResult(reward, out, scored)


class GroupedRecorder(Recorder):
    groupwise = True


class InformedRecorder(Recorder):
    wants_progress = True
    wants_latents = True


register_scorer("plain")(Recorder)
register_scorer("grouped")(GroupedRecorder)
register_scorer("grouped_fail")(GroupedRecorder)
register_scorer("informed")(InformedRecorder)


def test_call_scorer_hands_on_only_what_is_declared():
    images, prompts = np.zeros((2, 4, 4, 3), dtype=np.uint8), ["a", "b"]
    latents = torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3)
    plain = call_scorer(Recorder(), images, prompts, None, groups=[0, 0], progress=Progress(1, 4), latents=latents)
    assert plain.diagnostics["extras"].tolist() == [0, 0]
    informed = call_scorer(type("Both", (GroupedRecorder, InformedRecorder), {})(), images, prompts, None,
                           progress=Progress(1, 4), latents=latents)
    assert informed.reward.tolist() == [1, 1]  # no groups given: one per run of a prompt
    assert informed.diagnostics["fraction"].tolist() == [0.25, 0.25]
    assert informed.diagnostics["latent_sum"].tolist() == [3.0, 12.0]
    with pytest.raises(ValueError, match="outside"):
        Progress(4, 4)


@pytest.fixture(scope="module")
def ray_local(local_ray):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this file
    return ray


@pytest.mark.system
def test_pools_send_whole_groups_and_declared_inputs_only(ray_local):
    from rewards.config import RewardsConfig, ScorerConfig
    from rewards.pool import RewardPools

    def scorer(name):
        return ScorerConfig(name=name, batch_size_per_request=4, num_cpus_per_actor=0.5, timeout_s=60)

    cfg = RewardsConfig(scorers=[scorer("grouped"), scorer("plain"), scorer("informed"), scorer("grouped_fail")])
    pools = RewardPools(cfg, factories={"grouped": GroupedRecorder, "plain": Recorder, "informed": InformedRecorder,
                                        "grouped_fail": lambda: GroupedRecorder(fail_group=2)})
    try:
        assert pools.pools["grouped"].inputs == {"groupwise": True, "wants_progress": False, "wants_latents": False}
        groups = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 3])  # sizes 3, 5, 2, 1; requests of up to 4 images
        n = len(groups)
        images = np.zeros((n, 8, 8, 3), dtype=np.uint8)
        prompts = [f"p{g}" for g in groups]
        latents = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 2, 3).contiguous()
        context = {"groups": groups, "progress": Progress(3, 12), "latents": latents}
        for by_ref in (False, True):  # an array, and the object-store refs a rollout actor hands on
            args = (ray_local.put(images), prompts) if by_ref else (images, prompts)
            extra = {**context, "latents": ray_local.put(latents)} if by_ref else context
            handles = pools.submit(*args, None, **extra)
            assert [(r.rows or (0, 0)) for r in handles["grouped"].requests] == \
                ([(0, 3), (3, 8), (8, 11)] if by_ref else [(0, 0)] * 3)
            results = pools.gather(handles).results
            sizes = np.bincount(groups)[groups]
            np.testing.assert_array_equal(results["grouped"].reward, sizes)  # every group seen whole
            assert results["grouped"].diagnostics["extras"].tolist() == [1.0] * n  # groups only
            assert results["plain"].diagnostics["extras"].tolist() == [0.0] * n  # nothing extra
            informed = results["informed"].diagnostics
            assert informed["extras"].tolist() == [2.0] * n and (informed["fraction"] == 0.25).all()
            np.testing.assert_array_equal(informed["latent_sum"], 6.0 * np.arange(n))  # each image its own latents
            failed = results["grouped_fail"]
            assert failed.valid.tolist() == (groups != 2).tolist() and np.isnan(failed.reward[groups == 2]).all()
        assert pools.pools["grouped_fail"].unscored_total == {"reported": 4}
    finally:
        pools.shutdown()


@pytest.mark.system
def test_the_driver_ships_latents_and_progress_to_the_scorer_that_declares_them(ray_local, tiny_sd3_path, tmp_path,
                                                                                monkeypatch):
    """Trainer.rollout -> reward: the rollout actor puts each group's final latents in the object store because a
    configured scorer declares wants_latents, and that scorer gets them, with the iteration's progress."""
    from cluster.trainer import Trainer
    from rewards.pool import RewardPools
    from tests.test_system import _config

    cfg = _config(tiny_sd3_path, tmp_path, **{"rewards.scorers": "[{name: informed}, {name: plain, weight: 0}]",
                                              "cluster.num_learner_ranks": 1, "iterations": 4})
    factories = {"informed": InformedRecorder, "plain": Recorder}  # by value: the actors cannot import this file
    monkeypatch.setattr("cluster.trainer.RewardPools", lambda rewards: RewardPools(rewards, factories=factories))
    with Trainer(cfg) as trainer:
        results, pending = trainer.rollout(trainer.submit_rollout(2))
        scored = trainer.reward(results, pending)
    for group in scored:
        assert group.result.latents is not None  # put by the rollout actor for the declaring scorer
        informed, plain = group.scores["informed"].diagnostics, group.scores["plain"].diagnostics
        assert (informed["extras"] == 2).all() and (informed["fraction"] == 2 / 4).all()
        assert np.isfinite(informed["latent_sum"]).all() and len(set(informed["latent_sum"].round(4))) > 1
        assert (plain["extras"] == 0).all()
