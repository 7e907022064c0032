"""ELBO policy gradient and DGPO (algorithms/elbo_pg.py, algorithms/dgpo.py): their closed forms, the shared
and stratified re-noising draws, and on the tiny model that the learner's first step is on-policy and DGPO's
group pass gives the weight 1/2 where the policy is the reference."""

from __future__ import annotations

import pytest
import torch

from algorithms import ALGORITHMS
from algorithms.losses import (
    dgpo_group_weights,
    dgpo_loss,
    dsm_loss,
    elbo_log_likelihood,
    elbo_pg_loss,
    soft_clip,
)
from cluster.config import REPO_ROOT, load_config
from learner.advantages import get_adv_est
from learner.config import LearnerConfig
from learner.engine import free_port
from learner.forward_process import training_draws
from learner.worker import LearnerWorker, TrainGroup
from models.config import LoraSettings, ModelConfig, SamplingConfig
from models.schedule import sd3_sigmas
from rollout.worker import GroupRequest, RolloutWorker


def _rows(seed=0, n=12, d=(4, 6, 6)):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, *d, generator=gen, dtype=torch.float64)
    target = torch.randn(n, *d, generator=gen, dtype=torch.float64)
    sigma = 0.1 + 0.8 * torch.rand(n, generator=gen, dtype=torch.float64)
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    return v, target, sigma, adv


# ----------------------------------------------------------------------------- ELBO policy gradient


@pytest.mark.unit
def test_epg_gradient_on_policy_is_the_flow_matching_gradient_weighted_by_the_advantage():
    """With rho = 1, d(-A ELBO)/dv = A s^2 / sg(mean |s (v - target)|) d mse(v, target)/dv: the
    flow-matching gradient, weighted by the advantage and the paper's adaptive normaliser."""
    v, target, sigma, adv = _rows()
    v = v.requires_grad_()
    loss, diag = elbo_pg_loss(elbo_log_likelihood(v, target, sigma), elbo_log_likelihood(v.detach(), target, sigma), adv)
    (grad,) = torch.autograd.grad(loss, v)
    s = sigma.view(-1, 1, 1, 1)
    mae = (s * (v.detach() - target)).abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    d = v[0].numel()
    fm_grad = 2.0 * (v.detach() - target) / d  # d mean_d (v - target)^2 / dv
    expected = adv.view(-1, 1, 1, 1) * s**2 / mae * fm_grad / v.shape[0]
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
    assert diag["policy/ratio_mean"] == 1.0 and diag["policy/ratio_std"] == 0.0


@pytest.mark.unit
def test_pepg_weight_vanishes_where_the_log_ratio_equals_the_advantage():
    v, target, sigma, adv = _rows(1)
    v = v.requires_grad_()
    elbo = elbo_log_likelihood(v, target, sigma)
    loss, _ = elbo_pg_loss(elbo, elbo.detach() - adv, adv, proximal=True)  # log rho = A exactly
    (grad,) = torch.autograd.grad(loss, v)
    assert grad.abs().max() < 1e-12
    # EPG at the same ratio keeps a gradient, scaled by rho = exp(A)
    loss, _ = elbo_pg_loss(elbo_log_likelihood(v, target, sigma), elbo.detach() - adv, adv)
    assert torch.autograd.grad(loss, v)[0].abs().max() > 1e-3


@pytest.mark.unit
def test_centred_advantage_and_soft_clip():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = get_adv_est("centred")({"r": rewards}, groups, torch.arange(8), 8, weights={"r": 1.0}, learner=LearnerConfig())
    assert torch.equal(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))
    a = torch.linspace(-20, 20, 41, dtype=torch.float64)
    clipped = soft_clip(a, 3.0)
    assert clipped.abs().max() < 3.0 and torch.allclose(soft_clip(torch.tensor([1e-4]), 3.0), torch.tensor([1e-4]))
    assert torch.all(clipped[1:] > clipped[:-1])  # monotone: the order of the advantages is kept


@pytest.mark.unit
def test_stratified_shared_and_truncated_draws():
    schedule = sd3_sigmas(10, 3.0)[:-1]
    for it in range(20):
        sigma, _ = training_draws(0, it, 2, None, schedule, 3, (2,), stratified=True)
        # one timestep from each third (indices 0-3, 4-6, 7-9) of the schedule
        idx = [int((schedule == s).nonzero()[0]) for s in sigma.double()]
        assert 0 <= idx[0] <= 3 and 4 <= idx[1] <= 6 and 7 <= idx[2] <= 9, idx
        sigma, _ = training_draws(0, it, 2, 5, schedule, 4, (2,), fraction=0.7)  # the 7 noisiest
        assert set(sigma.tolist()) <= set(schedule[:7].float().tolist()) and len(set(sigma.tolist())) == 4
    # the group's shared draws are one set whatever the sample; per-sample draws differ between samples
    assert torch.equal(training_draws(0, 1, 2, None, schedule, 3, (2, 3))[1],
                       training_draws(0, 1, 2, None, schedule, 3, (2, 3))[1])
    assert not torch.equal(training_draws(0, 1, 2, 0, schedule, 3, (2, 3))[1],
                           training_draws(0, 1, 2, 1, schedule, 3, (2, 3))[1])


# ----------------------------------------------------------------------------- DGPO


@pytest.mark.unit
def test_dgpo_at_the_reference_weighs_one_half_and_equal_rewards_give_no_loss():
    v, target, sigma, adv = _rows(2)
    block, size = torch.zeros(12, dtype=torch.long), torch.full((12,), 12.0)
    dsm = dsm_loss(v, target)
    w = dgpo_group_weights(dsm, dsm, adv, block, size, beta_dpo=100.0)
    assert torch.equal(w, torch.full((12,), 0.5, dtype=torch.float64))
    loss, _ = dgpo_loss(v, target, adv, w, dsm, clip_range=1.0, sigma=sigma)
    torch.testing.assert_close(loss, 0.5 * (adv * dsm).mean())
    vg = v.clone().requires_grad_()
    loss, _ = dgpo_loss(vg, target, torch.zeros(12, dtype=torch.float64), w, dsm, clip_range=1.0, sigma=sigma)
    assert loss.item() == 0.0 and torch.autograd.grad(loss, vg)[0].abs().max() == 0.0


@pytest.mark.unit
def test_dgpo_loss_vanishes_once_the_group_preference_is_met():
    """Positives fitting far better than the reference and negatives far worse: w -> 0, no loss, no gradient;
    the opposite (violated) gives w -> 1."""
    v, target, sigma, _ = _rows(3)
    adv = torch.tensor([1.0, -1.0] * 6, dtype=torch.float64)
    dsm = dsm_loss(v, target)
    block, size = torch.zeros(12, dtype=torch.long), torch.full((12,), 12.0)
    met = dgpo_group_weights(dsm, dsm + adv, adv, block, size, beta_dpo=100.0)  # dsm_i - ref_i = -A_i
    violated = dgpo_group_weights(dsm, dsm - adv, adv, block, size, beta_dpo=100.0)
    assert met.max() < 1e-40 and violated.min() > 1 - 1e-12
    vg = v.clone().requires_grad_()
    loss, _ = dgpo_loss(vg, target, adv, met, dsm, clip_range=1.0, sigma=sigma)
    assert abs(loss.item()) < 1e-40 and torch.autograd.grad(loss, vg)[0].abs().max() < 1e-40


@pytest.mark.unit
def test_dgpo_gradient_is_the_group_dpo_gradient_scaled():
    """grad of -log sigmoid(-x) with x = (beta / G) sum A (dsm - dsm_ref), through dsm, equals beta N / G times
    the gradient of mean_i w A_i dsm_i at w = sigmoid(x) detached (one group, N = G rows)."""
    v, target, sigma, adv = _rows(4)
    ref = dsm_loss(v + 0.1 * torch.randn_like(v), target)
    beta, g = 10.0, 12.0
    va, vb = v.clone().requires_grad_(), v.clone().requires_grad_()
    x = beta / g * (adv * (dsm_loss(va, target) - ref)).sum()
    (grad_dpo,) = torch.autograd.grad(-torch.nn.functional.logsigmoid(-x), va)
    w = dgpo_group_weights(dsm_loss(v, target), ref, adv, torch.zeros(12, dtype=torch.long), torch.full((12,), g), beta)
    loss, _ = dgpo_loss(vb, target, adv, w, dsm_loss(v, target), clip_range=1e9, sigma=sigma)
    (grad,) = torch.autograd.grad(loss, vb)
    torch.testing.assert_close(grad_dpo, beta * 12 / g * grad, rtol=1e-9, atol=1e-15)


@pytest.mark.unit
def test_dgpo_clip_drops_the_gradient_of_rows_that_moved_past_the_range():
    v, target, sigma, _ = _rows(5, n=4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    dsm = dsm_loss(v, target)
    # ratio exp(dsm_old - dsm): row 0 above 1 + c (A > 0: clipped), row 1 inside; row 2 below 1 - c (A <= 0:
    # clipped), row 3 inside
    dsm_old = dsm + torch.tensor([0.5, 0.0, -0.5, 0.0], dtype=torch.float64)
    vg = v.clone().requires_grad_()
    loss, diag = dgpo_loss(vg, target, adv, torch.full((4,), 0.5, dtype=torch.float64), dsm_old, clip_range=0.1,
                           sigma=sigma)
    (grad,) = torch.autograd.grad(loss, vg)
    per_row = grad.flatten(1).abs().amax(1)
    assert per_row[0] == 0 and per_row[2] == 0 and per_row[1] > 0 and per_row[3] > 0
    assert diag["policy/clipfrac"] == 0.5


# ----------------------------------------------------------------------------- through the workers (component)


@pytest.fixture(scope="module")
def cfgs(tiny_sd3_path):
    model = ModelConfig(path=tiny_sd3_path, resolution=32, guidance_scale=1.0, lora=LoraSettings(rank=4, alpha=8))
    return model, SamplingConfig(group_size=4, num_steps=4, eval_num_steps=4)


def _groups(model, sampling, algorithm):
    rollout = RolloutWorker(model, sampling, algorithm=algorithm, torch_threads=2)
    results = rollout.rollout([GroupRequest(i, p, {}, seed=10 + i, iteration=0)
                               for i, p in enumerate(["a red circle", "two blue squares"])])
    return [TrainGroup(r.request.prompt, r.rollout, torch.tensor([1.5, -0.5, 0.5, -1.5]),
                       torch.ones(4, dtype=torch.bool), 0, r.request.group_index) for r in results]


@pytest.mark.component
def test_elbo_first_step_is_on_policy_with_the_current_sampling_policy(cfgs):
    model, sampling = cfgs
    algorithm = ALGORITHMS["elbo_pg"](old_policy="current", train_timesteps=2)
    learner = LearnerWorker(model, sampling, LearnerConfig(micro_batch_size=4, learning_rate=1e-2), algorithm=algorithm,
                            seed=0)
    learner.setup("127.0.0.1", free_port())
    metrics = learner.train(_groups(model, sampling, algorithm), iteration=0)
    assert metrics["learner/first_minibatch_ratio_mean"] == 1.0 and metrics["learner/first_minibatch_ratio_std"] == 0.0
    assert metrics["learner/transitions"] == 2 * 4 * 2


@pytest.mark.component
def test_dgpo_group_pass_weighs_one_half_at_the_base_and_moves_after_an_update(cfgs):
    """LoRA starts at the base (B = 0): every group's dsm equals the reference's, x = 0, w = 1/2 exactly."""
    model, sampling = cfgs
    algorithm = ALGORITHMS["dgpo"](train_timesteps=2, timestep_fraction=0.75)
    learner = LearnerWorker(model, sampling, LearnerConfig(micro_batch_size=3, learning_rate=1e-2), algorithm=algorithm,
                            seed=0)
    learner.setup("127.0.0.1", free_port())
    groups = _groups(model, sampling, algorithm)
    first = learner.train(groups, iteration=0)
    assert first["policy/dgpo_weight_mean"] == 0.5
    second = learner.train(groups, iteration=1)
    assert second["policy/dgpo_weight_mean"] != 0.5


@pytest.mark.unit
@pytest.mark.parametrize("preset", ["shapes_elbo", "shapes_dgpo"])
def test_presets_load_and_dgpo_refuses_several_steps_per_iteration(preset):
    cfg = load_config(REPO_ROOT / "configs" / f"{preset}.yaml")
    assert cfg.algorithm.learner_plan == "forward_process"
    if preset == "shapes_dgpo":
        with pytest.raises(Exception, match="optimizer_steps_per_iteration"):
            load_config(REPO_ROOT / "configs" / f"{preset}.yaml", ["learner.optimizer_steps_per_iteration=2"])
        with pytest.raises(Exception, match="the 7 noisiest steps"):  # 0.7 of 10 steps
            load_config(REPO_ROOT / "configs" / f"{preset}.yaml", ["algorithm.train_timesteps=8"])
