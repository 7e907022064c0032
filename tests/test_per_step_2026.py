"""GRPO-Guard and Flow-DPPO (algorithms/grpo_guard.py, algorithms/flow_dppo.py): their closed forms, and on
the tiny model that the sampler records each step's mean and the learner's first step is on-policy."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms import ALGORITHMS
from algorithms.losses import dppo_keep_mask, dppo_loss, guard_log_ratio
from cluster.config import REPO_ROOT, load_config
from learner.config import LearnerConfig
from learner.engine import free_port
from learner.worker import LearnerWorker, TrainGroup
from models.config import LoraSettings, ModelConfig, SamplingConfig
from models.sde import gaussian_kl_equal_std, gaussian_log_prob
from rollout.worker import GroupRequest, RolloutWorker


def _step(seed=0, n=64, d=(4, 8, 8), shift=0.05):
    """A batch of Gaussian steps: the old mean, the new mean (old + delta), the std and x_next drawn from the old."""
    gen = torch.Generator().manual_seed(seed)
    old_mean = torch.randn(n, *d, generator=gen, dtype=torch.float64)
    delta = shift * torch.randn(n, *d, generator=gen, dtype=torch.float64)
    std = (0.05 + torch.rand(n, generator=gen, dtype=torch.float64)).view(n, 1, 1, 1)
    eps = torch.randn(n, *d, generator=gen, dtype=torch.float64)
    return old_mean, old_mean + delta, std, old_mean + std * eps, eps, delta


# ----------------------------------------------------------------------------- GRPO-Guard


@pytest.mark.unit
def test_guard_log_ratio_is_the_noise_projected_mean_shift():
    """sigma_s log r + mse / (2 sigma_s) = mean_d(eps * delta) exactly, for x_next = mu_old + sigma_s eps."""
    old_mean, mean, std, x, eps, delta = _step()
    raw = gaussian_log_prob(x, mean, std) - gaussian_log_prob(x, old_mean, std)
    guard = guard_log_ratio(gaussian_log_prob(x, mean, std), gaussian_log_prob(x, old_mean, std), mean, old_mean, std)
    torch.testing.assert_close(guard, (eps * delta).flatten(1).mean(1), rtol=1e-9, atol=1e-12)
    # the raw log-ratio carries the bias -mse / (2 sigma_s^2) and the 1 / sigma_s scale that the guard removes
    mse = delta.pow(2).flatten(1).mean(1)
    torch.testing.assert_close(raw, guard / std.flatten() - mse / (2 * std.flatten() ** 2), rtol=1e-9, atol=1e-12)


@pytest.mark.unit
def test_guard_ratio_is_one_on_policy_and_centred_on_one_per_step_off_policy():
    old_mean, _, std, x, _, _ = _step()
    lp = gaussian_log_prob(x, old_mean, std)
    assert torch.equal(guard_log_ratio(lp, lp, old_mean, old_mean, std), torch.zeros_like(lp))
    # One step, one policy shift, many draws of x_next: the normalised log-ratio averages 0 (ratio ~1), the raw
    # one averages -KL < 0, the left shift that made clipping one-sided.
    n, d = 20000, (4, 4, 4)
    gen = torch.Generator().manual_seed(1)
    mu_old = torch.zeros(n, *d, dtype=torch.float64)
    delta = (0.1 * torch.randn(1, *d, generator=gen, dtype=torch.float64)).expand(n, *d)
    s = torch.full((n, 1, 1, 1), 0.2, dtype=torch.float64)
    x = mu_old + s * torch.randn(n, *d, generator=gen, dtype=torch.float64)
    new, old = gaussian_log_prob(x, mu_old + delta, s), gaussian_log_prob(x, mu_old, s)
    guard = guard_log_ratio(new, old, mu_old + delta, mu_old, s)
    kl = gaussian_kl_equal_std(mu_old + delta, mu_old, s)[0].item()
    assert abs(guard.mean().item()) < 4 * guard.std().item() / math.sqrt(n)
    assert (new - old).mean().item() == pytest.approx(-kl, rel=0.05) and kl > 0.1


# ----------------------------------------------------------------------------- Flow-DPPO


@pytest.mark.unit
def test_dppo_mask_drops_only_moves_outside_the_kl_bound_that_follow_the_advantage():
    ratio = torch.tensor([1.2, 0.8, 1.2, 0.8])
    adv = torch.tensor([10.0, -10.0, -8.0, 8.0])
    outside = torch.full((4,), 1e-3)
    assert dppo_keep_mask(ratio, adv, outside, 1e-5).tolist() == [False, False, True, True]  # corrective moves stay
    inside = torch.full((4,), 1e-6)
    assert dppo_keep_mask(ratio, adv, inside, 1e-5).all()  # inside the bound nothing is masked
    assert dppo_keep_mask(ratio, adv, torch.full((4,), 1e-5), 1e-5).tolist() == [False, False, True, True]  # >= tau


@pytest.mark.unit
def test_dppo_loss_on_policy_is_minus_the_mean_advantage_and_masked_rows_carry_no_gradient():
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    lp = torch.zeros(4, requires_grad=True)
    loss, diag = dppo_loss(lp, torch.zeros(4), adv, torch.zeros(4), threshold=1e-5)
    assert loss.item() == pytest.approx(-adv.mean().item()) and diag["policy/clipfrac"] == 0.0
    # rows 0 and 3 left the bound the way their advantage pushes (ratio > 1, A > 0): masked, no gradient
    lp = torch.tensor([0.2, 0.2, -0.2, 0.1], requires_grad=True)
    loss, diag = dppo_loss(lp, torch.zeros(4), adv, torch.tensor([1.0, 1.0, 1e-7, 1.0]), threshold=1e-5)
    loss.backward()
    assert lp.grad[0] == 0 and lp.grad[3] == 0 and lp.grad[1] != 0 and lp.grad[2] != 0
    assert diag["policy/clipfrac"] == 0.5
    # the kept rows keep their unclipped ratio: d/dlp of -A e^lp / N
    assert lp.grad[1].item() == pytest.approx(2.0 * math.exp(0.2) / 4)


# ----------------------------------------------------------------------------- through the workers (component)


@pytest.fixture(scope="module")
def cfgs(tiny_sd3_path):
    model = ModelConfig(path=tiny_sd3_path, resolution=32, guidance_scale=1.0, lora=LoraSettings(rank=4, alpha=8))
    return model, SamplingConfig(group_size=4, num_steps=4, eval_num_steps=4)


@pytest.mark.component
@pytest.mark.parametrize("name", ["grpo_guard", "flow_dppo"])
def test_the_sampler_records_step_means_and_the_first_step_is_on_policy(cfgs, name):
    model, sampling = cfgs
    algorithm = ALGORITHMS[name]()
    rollout = RolloutWorker(model, sampling, algorithm=algorithm, torch_threads=2)
    results = rollout.rollout([GroupRequest(i, p, {}, seed=10 + i, iteration=0)
                               for i, p in enumerate(["a red circle", "two blue squares"])])
    t = results[0].rollout.transitions
    assert t.mean is not None and t.mean.shape == t.next_latents.shape and len(t) == 4 * 4
    groups = [TrainGroup(r.request.prompt, r.rollout, torch.tensor([1.5, -0.5, 0.5, -1.5]),
                         torch.ones(4, dtype=torch.bool), 0, r.request.group_index) for r in results]
    learner = LearnerWorker(model, sampling, LearnerConfig(micro_batch_size=8, learning_rate=1e-2, clip_range=1e-2),
                            algorithm=algorithm, seed=0)
    learner.setup("127.0.0.1", free_port())
    metrics = learner.train(groups, iteration=0)
    assert metrics["learner/first_minibatch_ratio_mean"] == 1.0 and metrics["learner/first_minibatch_clipfrac"] == 0.0
    # Flow-GRPO without the means: nothing recorded (the payload stays as it was)
    plain = RolloutWorker(model, sampling, algorithm=ALGORITHMS["flow_grpo"](), torch_threads=2)
    assert plain.rollout([GroupRequest(0, "a red circle", {}, seed=10, iteration=0)])[0].rollout.transitions.mean is None


@pytest.mark.unit
@pytest.mark.parametrize("preset", ["shapes_grpo_guard", "shapes_flow_dppo"])
def test_presets_load_and_refuse_a_non_gaussian_log_prob(preset):
    cfg = load_config(REPO_ROOT / "configs" / f"{preset}.yaml")
    assert cfg.algorithm.records_step_means
    with pytest.raises(Exception, match="sampling.log_prob_form='gaussian'"):
        load_config(REPO_ROOT / "configs" / f"{preset}.yaml", ["sampling.log_prob_form=squared_error"])
