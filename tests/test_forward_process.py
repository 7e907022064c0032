"""The forward-process family (DiffusionNFT, AWM): the losses against closed forms, the rollout strategy,
the seeded re-noising draws, the config errors, and the learner worker in-process on a tiny random SD3
pipeline (a real DeepSpeed engine, one gloo rank)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from algorithms import ALGORITHMS
from algorithms.losses import adaptive_x0_loss, fm_log_likelihood, nft_loss, nft_optimality
from cluster.config import ConfigError, load_config
from learner.config import LearnerConfig
from learner.engine import free_port
from learner.forward_process import old_policy_decay, training_draws
from learner.worker import LearnerWorker, TrainGroup
from models.config import LoraSettings, ModelConfig, SamplingConfig
from models.sampling import sample_group
from models.schedule import sd3_sigmas
from rollout.worker import GroupRequest, RolloutWorker
from tests.tiny_models import FLOWGRPO

SHAPE = (4, 2, 3, 3)


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    v_old = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    target = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    sigma = torch.rand(SHAPE[0], generator=g, dtype=torch.float64) * 0.8 + 0.1
    return v_old, target, sigma


def _grad(loss_of_v, v0):
    v = v0.clone().requires_grad_(True)
    loss_of_v(v).backward()
    return v.grad


# ----------------------------------------------------------------------------- closed forms (unit)


@pytest.mark.unit
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_nft_gradient_at_the_old_policy_vanishes_exactly_when_r_is_one_half(beta):
    v_old, target, sigma = _tensors()
    for adv, zero in ((0.0, True), (1.0, False), (-2.5, False)):
        advantages = torch.full((SHAPE[0],), adv, dtype=torch.float64)
        grad = _grad(lambda v, a=advantages: nft_loss(v, v_old, target, sigma, a, beta=beta, adv_clip=5.0)[0], v_old)
        # zero up to float64 rounding of (1 -+ beta) v_old +- beta v; clearly non-zero otherwise
        assert (grad.abs().max().item() < 1e-14) is zero, (adv, grad.abs().max())


@pytest.mark.unit
@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_nft_with_r_one_is_the_adaptively_weighted_flow_matching_gradient(beta):
    v_old, target, sigma = _tensors(1)
    adv_clip = 5.0
    advantages = torch.full((SHAPE[0],), adv_clip, dtype=torch.float64)  # r = 1
    assert torch.equal(nft_optimality(advantages, adv_clip), torch.ones(SHAPE[0], dtype=torch.float64))
    nft = _grad(lambda v: nft_loss(v, v_old, target, sigma, advantages, beta=beta, adv_clip=adv_clip)[0], v_old)
    # plain flow matching ||v - (eps - x0)||^2 at t, weighted by s^2 / sg(s mean|v - target|), times adv_clip
    s = sigma.view(-1, 1, 1, 1)
    weight = (s * (v_old - target)).abs().mean(dim=(1, 2, 3), keepdim=True)
    fm = _grad(lambda v: (adv_clip * (s**2 * (v - target) ** 2) / weight).mean(dim=(1, 2, 3)).mean(), v_old)
    torch.testing.assert_close(nft, fm, rtol=1e-10, atol=1e-12)


@pytest.mark.unit
def test_adaptive_x0_loss_is_the_x0_error_over_its_mean_absolute_value():
    v, target, sigma = _tensors(2)
    x0 = torch.randn(SHAPE, dtype=torch.float64)
    eps = target + x0
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    err = (x_t - s * v) - x0  # x0_hat - x0 as the NVlabs code forms it
    expected = (err**2).mean(dim=(1, 2, 3)) / err.abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(adaptive_x0_loss(v, target, sigma), expected)


@pytest.mark.unit
def test_awm_ratio_is_one_on_policy_and_the_gradient_is_advantage_weighted_matching():
    v_old, target, sigma = _tensors(3)
    learner = LearnerConfig(clip_range=0.2, beta=0.0)
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    v = v_old.clone().requires_grad_(True)
    loss, diag = ALGORITHMS["awm"]().loss(v, v_old, target, sigma, advantages, learner=learner)
    assert diag["policy/ratio_mean"] == 1.0 and diag["policy/ratio_std"] == 0.0 and diag["policy/clipfrac"] == 0.0
    loss.backward()
    # at ratio 1: d/dv of -mean(A * exp(logp - logp_old)) = -mean(A * d logp / dv), logp = -mean (v - target)^2
    n = target[0].numel()
    expected = (advantages.view(-1, 1, 1, 1) * 2 * (v_old - target) / n) / SHAPE[0]
    torch.testing.assert_close(v.grad, expected)


@pytest.mark.unit
def test_the_forward_process_units_take_their_own_settings_and_the_learners_shared_ones():
    """DiffusionNFT: nft_beta from the unit, adv_clip and the KL weight from the learner section; AWM: its
    weighting from the unit, the clip range and KL weight from the learner section."""
    v_old, target, sigma = _tensors(5)
    v, v_ref = v_old + 0.01 * target, v_old - 0.02 * target
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    learner = LearnerConfig(clip_range=0.2, beta=0.5, adv_clip=2.0)
    loss, _ = ALGORITHMS["diffusion_nft"](nft_beta=0.1).loss(v, v_old, target, sigma, advantages, learner=learner,
                                                             v_ref=v_ref)
    ref, _ = nft_loss(v, v_old, target, sigma, advantages, beta=0.1, adv_clip=2.0, v_ref=v_ref, kl_beta=0.5)
    assert torch.equal(loss, ref)
    awm = ALGORITHMS["awm"](weighting="ghuber", ghuber_power=0.5)
    loss, diag = awm.loss(v, v_old, target, sigma, advantages, learner=learner, v_ref=v_ref)
    ratio = torch.exp(fm_log_likelihood(v, target, sigma, "ghuber", 0.5) - fm_log_likelihood(v_old, target, sigma, "ghuber", 0.5))
    kl = ((v - v_ref) ** 2).mean(dim=(1, 2, 3))
    expected = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2)).mean() + 0.5 * kl.mean()
    torch.testing.assert_close(loss, expected)
    assert diag["policy/kl"] == pytest.approx(kl.mean().item())


@pytest.mark.unit
def test_fm_log_likelihood_weightings():
    v, target, sigma = _tensors(4)
    mse = ((v - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(fm_log_likelihood(v, target, sigma), -mse)
    torch.testing.assert_close(fm_log_likelihood(v, target, sigma, "t"), -mse * sigma)
    torch.testing.assert_close(fm_log_likelihood(v, target, sigma, "ghuber", 1.0), -mse * sigma, rtol=1e-8, atol=1e-9)


@pytest.mark.unit
def test_old_policy_decay_follows_the_nvlabs_schedules():
    assert [old_policy_decay(s, 0, 1e-3, 0.5) for s in (0, 100, 500, 2000)] == [0.0, 0.1, 0.5, 0.5]
    assert old_policy_decay(74, 75, 0.0075, 0.999) == 0.0
    assert old_policy_decay(175, 75, 0.0075, 0.999) == pytest.approx(0.75)
    assert old_policy_decay(10_000, 75, 0.0075, 0.999) == 0.999


@pytest.mark.unit
def test_training_draws_are_seeded_per_seed_iteration_group_and_sample():
    schedule = sd3_sigmas(10, 3.0)[:-1]
    a = training_draws(0, 3, 1, 2, schedule, 4, (2, 3))
    assert torch.equal(a[0], training_draws(0, 3, 1, 2, schedule, 4, (2, 3))[0])
    assert torch.equal(a[1], training_draws(0, 3, 1, 2, schedule, 4, (2, 3))[1])
    assert a[0].unique().numel() == 4 and all(s in schedule for s in a[0])  # distinct schedule points
    for other in ((1, 3, 1, 2), (0, 4, 1, 2), (0, 3, 0, 2), (0, 3, 1, 3)):
        assert not torch.equal(a[1], training_draws(*other, schedule, 4, (2, 3))[1]), other
    with pytest.raises(ValueError, match="algorithm.train_timesteps"):
        training_draws(0, 0, 0, 0, schedule, 11, (2, 3))


# ----------------------------------------------------------------------------- the rollout strategy


@pytest.mark.unit
@pytest.mark.parametrize("solver", ["ode", "dpm", "sde"])
def test_forward_process_rollout_keeps_final_samples_only(solver):
    cfg = ALGORITHMS["diffusion_nft"](solver=solver), SamplingConfig(group_size=3, num_steps=5)
    sigmas = sd3_sigmas(5, 3.0)
    velocity = lambda x, s: -x  # noqa: E731
    noise = lambda n, g: torch.randn((n, 2, 4, 4), generator=g)  # noqa: E731
    r = sample_group(*cfg, velocity, noise, sigmas, generator=torch.Generator().manual_seed(0))
    assert len(r.transitions) == 0 and r.final_latents.shape == (3, 2, 4, 4) and r.nfe == 15
    assert r.learner_needs_final  # the data plane ships the final samples: the learner trains on them
    again = sample_group(*cfg, velocity, noise, sigmas, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.final_latents, again.final_latents)


@pytest.mark.unit
def test_forward_process_solvers_differ_and_sde_explores():
    sigmas = sd3_sigmas(6, 3.0)
    velocity = lambda x, s: x * 0.5 - 0.1  # noqa: E731
    noise = lambda n, g: torch.randn((n, 1, 2, 2), generator=g)  # noqa: E731

    def final(solver, seed=0):
        cfg = ALGORITHMS["awm"](solver=solver), SamplingConfig(group_size=2, num_steps=6)
        return sample_group(*cfg, velocity, noise, sigmas, generator=torch.Generator().manual_seed(seed)).final_latents

    ode, dpm, sde = final("ode"), final("dpm"), final("sde")
    assert not torch.allclose(ode, dpm) and not torch.allclose(ode, sde)


# ----------------------------------------------------------------------------- config errors


def _named(key: str) -> str:
    """A pattern for an error naming `key`; pydantic names a unit's own field under the unit's tag
    (algorithm.<name>.<field>), the units' checks and the layout migration as the key is written."""
    section, field = key.split(".", 1)
    return rf"{section}\.(\w+\.)?{field}" if section == "algorithm" else key.replace(".", r"\.")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.timestep_fraction=0.5", "algorithm.timestep_fraction"),
        ("algorithm.window_size=3", "algorithm.window_size"),
        ("algorithm.kl_form=exact", "algorithm.kl_form"),
        ("algorithm.train_timesteps=0", "algorithm.train_timesteps"),
        ("algorithm.train_timesteps=11", "algorithm.train_timesteps"),
        ("algorithm.nft_beta=1.5", "algorithm.nft_beta"),
        ("algorithm.nft_beta=0", "algorithm.nft_beta"),
        ("sampling.strategy=flow_grpo", "sampling.strategy"),  # the layout before the algorithm section
        ("sampling.timestep_fraction=0.5", "algorithm.timestep_fraction"),  # ... named at its new place
        ("learner.zero_stage=3", "learner.zero_stage"),
    ],
)
@pytest.mark.parametrize("preset", ["shapes_nft", "shapes_awm"])
def test_forward_process_presets_reject_per_step_options_naming_the_key(preset, override, key):
    from cluster.config import REPO_ROOT

    with pytest.raises(ConfigError, match=_named(key)):
        load_config(REPO_ROOT / "configs" / f"{preset}.yaml", [override])


@pytest.mark.unit
@pytest.mark.parametrize("override", ["algorithm.nft_beta=0.5", "algorithm.solver=dpm", "algorithm.old_policy=ema"])
def test_per_step_presets_reject_forward_process_options(override):
    with pytest.raises(ConfigError, match=_named(override.split("=")[0])):
        load_config(FLOWGRPO, [override])


@pytest.mark.unit
def test_an_old_layout_with_a_per_step_loss_and_the_forward_process_strategy_is_an_error(tmp_path):
    """Before the algorithm section, sampling.strategy 'forward_process' went with the losses diffusion_nft and
    awm only: with grpo_clip it names no algorithm."""
    old = tmp_path / "old.yaml"
    old.write_text("sampling: {strategy: forward_process}\nlearner: {loss: grpo_clip}\n")
    with pytest.raises(ConfigError, match=r"sampling\.strategy 'forward_process' with learner\.loss 'grpo_clip' "
                                          r"names no algorithm; set `algorithm\.name`"):
        load_config(old)


# ----------------------------------------------------------------------------- the learner worker (component)


PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


@pytest.fixture(scope="module")
def cfgs(tiny_sd3_path):
    model = ModelConfig(path=tiny_sd3_path, resolution=32, guidance_scale=1.0, lora=LoraSettings(rank=4, alpha=8))
    sampling = SamplingConfig(group_size=4, num_steps=4, eval_num_steps=6)
    return model, sampling


def _rollout(cfgs) -> RolloutWorker:
    """A rollout worker sampling the forward-process family's final samples (Euler ODE)."""
    return RolloutWorker(*cfgs, algorithm=ALGORITHMS["diffusion_nft"](solver="ode"), torch_threads=2)


def _learner(cfgs, algorithm, **learner):
    model, sampling = cfgs
    worker = LearnerWorker(model, sampling, LearnerConfig(micro_batch_size=6, learning_rate=1e-2, **learner),
                           algorithm=algorithm, seed=0)
    worker.setup("127.0.0.1", free_port())
    return worker


def _groups(rollout: RolloutWorker, iteration: int = 0) -> list[TrainGroup]:
    reqs = [GroupRequest(i, p, {}, seed=100 + i, iteration=iteration) for i, p in enumerate(PROMPTS)]
    out = []
    for res in rollout.rollout(reqs):
        r = res.rollout
        adv = torch.tensor([1.5, -0.5, 0.5, -1.5])
        out.append(TrainGroup(res.request.prompt, r, adv, torch.ones(r.num_samples, dtype=torch.bool),
                              res.policy_version, res.request.group_index))
    return out


@pytest.mark.component
def test_awm_first_step_is_on_policy_and_nft_keeps_an_ema_sampling_policy(cfgs, tmp_path):
    groups = _groups(_rollout(cfgs))
    awm = _learner(cfgs, ALGORITHMS["awm"](train_timesteps=3), clip_range=0.2, beta=0.01)
    m = awm.train(groups, iteration=0)
    assert m["policy/ratio_mean"] == 1.0 and m["policy/clipfrac"] == 0.0 and m["learner/transitions"] == 24
    assert all(np.array_equal(awm.export_sampling_weights()[k], v) for k, v in awm.export_weights().items())

    nft = _learner(cfgs, ALGORITHMS["diffusion_nft"](old_policy="ema", old_policy_decay_rate=0.25, train_timesteps=2))
    start = nft.export_weights()
    nft.train(groups, iteration=0)  # after 1 step decay 0.25: old = 0.25 * start + 0.75 * trained
    trained, old = nft.export_weights(), nft.export_sampling_weights()
    for k in trained:
        np.testing.assert_allclose(old[k], 0.25 * start[k] + 0.75 * trained[k], rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(old[k], trained[k]) for k in trained)
    nft.save_checkpoint(str(tmp_path))
    nft.train(groups, iteration=1)
    nft.load_checkpoint(str(tmp_path))
    assert all(np.array_equal(nft.export_sampling_weights()[k], v) for k, v in old.items())


@pytest.mark.component
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_cfg_free_sampling_is_one_transformer_row_per_latent_for_every_strategy(cfgs, guidance):
    model, _ = cfgs
    algorithms = {  # name: (the unit's settings, the sampling it needs)
        "flow_grpo": ({}, {}), "flow_grpo_fast": ({"window_range": (0, 2)}, {}), "dance_grpo": ({}, {"sde_kind": "dance"}),
        "mix_grpo": ({}, {}), "g2rpo": ({"steps": [0, 1]}, {}), "diffusion_nft": ({"solver": "dpm"}, {}),
    }  # fmt: skip
    worker = RolloutWorker(model.model_copy(update={"guidance_scale": guidance}),
                           SamplingConfig(group_size=2, num_steps=4), torch_threads=2)
    rows = []
    worker.policy.transformer.register_forward_hook(lambda mod, args, kwargs, out: rows.append(
        kwargs["hidden_states"].shape[0]), with_kwargs=True)
    for name, (settings, sampling) in algorithms.items():
        worker.algorithm = ALGORITHMS[name](**settings)
        worker.sampling = SamplingConfig(group_size=2, num_steps=4, **sampling)
        rows.clear()
        (res,) = worker.rollout([GroupRequest(0, PROMPTS[0], {}, seed=1, iteration=0)])
        # guidance 1 trains and samples CFG-free: no unconditional half, the model is the whole policy
        assert sum(rows) == res.rollout.nfe * (1 if guidance == 1.0 else 2), name


def test_the_sampling_policy_ema_on_the_device_rounds_as_the_host_numpy_ema_did():
    """The EMA moved from host NumPy to device tensors (issue 32): same bits, for bf16 and fp32 weights."""
    from learner.forward_process import ema_step, snapshot

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        live = {"a": torch.randn(257, generator=gen).to(dtype), "b": torch.randn(3, 5, generator=gen).to(dtype)}
        old = snapshot(live)
        host = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy().copy() for k, v in live.items()}
        for decay in (0.0, 0.3, 0.999):
            for v in live.values():
                v.add_(torch.randn(v.shape, generator=gen).to(dtype))
            ema_step(old, live, decay)
            for name, v in live.items():  # the code this replaced, verbatim
                value = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
                host[name] = (decay * host[name] + (1.0 - decay) * value).astype(value.dtype)
            for name in live:
                assert np.array_equal(old[name].numpy(), host[name]), (dtype, decay, name)


def test_swapped_in_runs_the_block_with_the_other_weights_and_restores_the_live_ones_bit_for_bit():
    from learner.forward_process import swapped_in

    live = {"w": torch.randn(64).to(torch.bfloat16), "v": torch.randn(8)}
    before = {k: t.clone() for k, t in live.items()}
    other = {"w": torch.randn(64), "v": torch.randn(8)}
    seen = {}
    with pytest.raises(RuntimeError, match="inside"):
        with swapped_in(live, other):
            seen = {k: t.clone() for k, t in live.items()}
            raise RuntimeError("inside")
    assert torch.equal(seen["w"], other["w"].to(torch.bfloat16)) and torch.equal(seen["v"], other["v"])
    for k in live:
        assert torch.equal(live[k], before[k])
