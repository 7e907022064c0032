"""The algorithm units' sampling strategies (algorithms/, through models/sampling.py) and models/schedule.py
with closed-form and tiny-network velocities, on CPU."""

from __future__ import annotations

import math
from typing import Literal

import pydantic
import pytest
import torch

from algorithms import ALGORITHMS, register_algorithm
from algorithms.g2rpo import g2rpo_nfe
from algorithms.mix_grpo import (
    mix_grpo_decay_window_start,
    mix_grpo_flash_nfe,
    mix_grpo_random_window_start,
    mix_grpo_window_start,
)
from algorithms.per_step import PerStepAlgorithm
from cluster.config import ExperimentConfig
from models.config import SamplingConfig
from models.sampling import (
    Recorder,
    all_rows,
    eval_sample,
    initial_noise,
    integrate,
    recompute_log_probs,
    sample_group,
    trajectory_nfe,
    trajectory_rollout,
)
from models.schedule import (
    check_sigmas,
    compressed_tail,
    granular_grid,
    scheduler_sigmas,
    sd3_sigmas,
    sigma_schedule,
)
from models.sde import ode_step

pytestmark = pytest.mark.unit

LATENT = (2, 2, 2)


def gaussian_velocity(mu: float = 0.5, s0: float = 0.8):
    """Exact v(x, sigma) = E[eps - x0 | x_sigma] for data x0 ~ N(mu, s0^2) elementwise; sigma per row."""

    def v(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        var = (1 - s) ** 2 * s0**2 + s**2
        r = x - (1 - s) * mu
        return s / var * r - (mu + (1 - s) * s0**2 / var * r)

    return v


class TinyNet(torch.nn.Module):
    """A small random network v(x, sigma): per-row MLP on the flattened latent and sigma."""

    def __init__(self) -> None:
        super().__init__()
        d = math.prod(LATENT)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, d))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), sigma[:, None]], 1)).view_as(x)


def noise_fn(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn((n, *LATENT), generator=generator)


SAMPLING_KEYS = set(SamplingConfig.model_fields)


def cfg_for(name: str, **kw) -> tuple:
    """(algorithm unit, sampling config) for `name` at its paper's sizes, `kw` overriding either section's
    keys; validated as a whole experiment config, so the unit's cross-section checks run."""
    base = {
        "flow_grpo": {"num_steps": 10, "group_size": 24},
        "flow_grpo_fast": {"num_steps": 10, "group_size": 6, "window_size": 3, "window_range": (1, 5)},
        "dance_grpo": {
            "num_steps": 16,
            "group_size": 12,
            "sde_kind": "dance",
            "noise_level": 0.3,
            "timestep_fraction": 0.6,
        },
        "mix_grpo": {"num_steps": 25, "group_size": 12, "window_size": 4, "window_every": 25},
        "g2rpo": {
            "num_steps": 16,
            "group_size": 12,
            "steps": list(range(8)),
            "granularities": [1, 2],
        },
        "diffusion_nft": {"num_steps": 6, "group_size": 4, "train_timesteps": 3},
    }[name]
    merged = {**base, **kw}
    sampling = {k: v for k, v in merged.items() if k in SAMPLING_KEYS}
    algorithm = {"name": name, **{k: v for k, v in merged.items() if k not in SAMPLING_KEYS}}
    images = 2 * max(1, sampling.get("group_size", 8))
    cfg = ExperimentConfig.model_validate({"algorithm": algorithm, "sampling": sampling,
                                           "data": {"images_per_iteration": images}})
    return cfg.algorithm, cfg.sampling


def run(cfg: tuple, v=None, seed: int = 0, iteration: int = 0):
    unit, sampling = cfg
    sigmas = sd3_sigmas(sampling.num_steps, sampling.shift)
    gen = torch.Generator().manual_seed(seed)
    return sample_group(unit, sampling, v or gaussian_velocity(), noise_fn, sigmas, generator=gen, iteration=iteration)


CASES = [
    ("flow_grpo", {}),
    ("flow_grpo", {"sde_kind": "cps", "timestep_fraction": 0.5}),
    ("flow_grpo_fast", {}),
    ("flow_grpo_fast", {"sde_kind": "cps", "log_prob_form": "squared_error"}),
    ("dance_grpo", {}),
    ("mix_grpo", {}),
    ("mix_grpo", {"flash": True}),
    ("g2rpo", {}),
    ("g2rpo", {"sde_kind": "cps", "steps": [0, 3, 14]}),
]


# ----------------------------------------------------------------------------- on-policy log-probs


@pytest.mark.parametrize("strategy,kw", CASES)
def test_recorded_log_probs_equal_recomputed(strategy, kw):
    """On-policy, the learner's recomputation reproduces the sampling log-probs exactly (ratio 1)."""
    v = gaussian_velocity()
    r = run(cfg_for(strategy, **kw), v, iteration=30)
    assert len(r.transitions) > 0 and r.transitions.log_prob.dtype == torch.float32
    assert torch.equal(recompute_log_probs(v, r), r.transitions.log_prob)


@pytest.mark.parametrize("strategy", ["flow_grpo", "mix_grpo", "g2rpo"])
def test_recorded_log_probs_match_with_a_network(strategy):
    net = TinyNet()
    r = run(cfg_for(strategy, group_size=4), net)
    torch.testing.assert_close(recompute_log_probs(net, r), r.transitions.log_prob, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- NFE


def test_nfe_closed_forms_paper_configurations():
    assert trajectory_nfe(10, 24) == 240
    assert trajectory_nfe(16, 12) == 192
    assert trajectory_nfe(25, 12) == 300
    assert g2rpo_nfe(16, range(8), [1, 2], 12) == 1792
    assert g2rpo_nfe(16, range(8), [1, 2, 3], 12) == 2188


@pytest.mark.parametrize(
    "strategy,kw,nfe,calls",
    [
        ("flow_grpo", {}, 240, 10),
        ("dance_grpo", {}, 192, 16),
        ("mix_grpo", {}, 300, 25),
        ("g2rpo", {}, 1792, 16),
        ("g2rpo", {"granularities": [1, 2, 3]}, 2188, 16),
    ],
)
def test_measured_nfe_and_calls(strategy, kw, nfe, calls):
    r = run(cfg_for(strategy, **kw))
    assert (r.nfe, r.velocity_calls) == (nfe, calls)


@pytest.mark.parametrize("iteration", [0, 25 * 7, 25 * 20])
def test_mix_grpo_flash_nfe(iteration):
    cfg = cfg_for("mix_grpo", flash=True)
    r = run(cfg, iteration=iteration)
    start = mix_grpo_window_start(iteration, 25, 4, 1, 25)
    expected = mix_grpo_flash_nfe(25, 12, start, 4, 0.4)
    assert r.nfe == expected <= 300 and r.velocity_calls == expected // 12  # 300: nothing left to compress


# ----------------------------------------------------------------------------- G2RPO


def test_granular_grid():
    s = sd3_sigmas(16)
    torch.testing.assert_close(granular_grid(s, 1, 2), torch.cat([s[:3], s[3:15:2], torch.zeros(1)]))
    torch.testing.assert_close(granular_grid(s, 0, 2), torch.cat([s[:2], s[2::2]]))
    assert torch.equal(granular_grid(s, 4, 1), s)
    for k in range(15):
        for lam in (1, 2, 3, 5):
            grid = granular_grid(s, k, lam)
            check_sigmas(grid, ends_at_zero=True)
            assert grid.numel() - 1 - (k + 1) == math.ceil((16 - k - 1) / lam)


def test_g2rpo_branches_share_the_anchor_and_differ_after():
    v = gaussian_velocity()
    cfg = cfg_for("g2rpo", group_size=3, steps=[0, 2, 5], granularities=[1, 3])
    r = run(cfg, v, seed=3)
    sigmas = sd3_sigmas(16)
    t = r.transitions
    # The anchor: a plain Euler run from the same noise reproduces every shared input bit-for-bit.
    x = noise_fn(1, torch.Generator().manual_seed(3))
    anchor = [x]
    for i in range(16):
        x = ode_step(v(x, sigmas[i : i + 1]), x, sigmas[i].item(), sigmas[i + 1].item())
        anchor.append(x)
    assert torch.equal(r.anchor_latents, anchor[-1])
    assert t.inputs.shape[0] == 3 and len(t) == 9
    for ki, k in enumerate([0, 2, 5]):
        rows = (t.step == k).nonzero().flatten()
        assert torch.equal(t.input_id[rows], torch.full((3,), ki))
        assert torch.equal(t.inputs[ki : ki + 1], anchor[k])
        assert torch.equal(t.sample_id[rows], ki * 3 + torch.arange(3))
        nxt = t.next_latents[rows]
        assert not torch.equal(nxt[0], nxt[1]) and not torch.equal(nxt[1], nxt[2])
        assert not torch.equal(nxt[0], anchor[k + 1][0])
        # Each image is the branch's x_{k+1} taken by Euler along the granular grid.
        for li, lam in enumerate([1, 3]):
            grid = granular_grid(sigmas, k, lam)
            y = nxt
            for p in range(k + 1, grid.numel() - 1):
                y = ode_step(v(y, grid[p].expand(3)), y, grid[p].item(), grid[p + 1].item())
            img = (r.reward_group == ki * 2 + li).nonzero().flatten()
            assert torch.equal(r.final_latents[img], y)
            assert torch.equal(r.image_sample_id[img], ki * 3 + torch.arange(3))
            assert torch.equal(r.image_info["branch_step"][img], torch.full((3,), k))
            assert torch.equal(r.image_info["granularity"][img], torch.full((3,), lam))


def test_g2rpo_reward_groups_and_samples():
    r = run(cfg_for("g2rpo"))
    g, n_lambda = 12, 2
    assert r.final_latents.shape[0] == 8 * n_lambda * g and r.num_samples == 8 * g
    for idx in [0, 13, 100, 191]:
        ki, li, b = idx // (n_lambda * g), (idx // g) % n_lambda, idx % g
        assert r.reward_group[idx] == ki * n_lambda + li and r.image_sample_id[idx] == ki * g + b
    # Every sample collects one image per granularity.
    assert torch.equal(torch.bincount(r.image_sample_id), torch.full((96,), n_lambda))


# ----------------------------------------------------------------------------- windows and subsets


def test_mix_grpo_window_positions_and_roll_back():
    starts = [mix_grpo_window_start(it, 25, 4, 1, 25) for it in range(0, 25 * 23, 25)]
    assert starts == list(range(21)) + [0, 1]
    assert [mix_grpo_window_start(it, 25, 4, 1, 25) for it in (0, 24, 25, 49, 50)] == [0, 0, 1, 1, 2]
    assert [mix_grpo_window_start(it, 10, 3, 2, 1) for it in range(6)] == [0, 2, 4, 6, 0, 2]
    assert all(s + 3 <= 9 for s in (mix_grpo_window_start(it, 10, 3, 2, 1) for it in range(20)))


def test_mix_grpo_random_window_as_grpo_states():
    """grpo_states.py 'random': cur_timestep = rng.integers(0, max_timesteps - group_size + 1), max_timesteps
    = T - 2, i.e. a start uniform over [0, T - 2 - w]; here the same for every actor at an iteration."""
    starts = [mix_grpo_random_window_start(it, 25, 4) for it in range(400)]
    assert set(starts) == set(range(0, 25 - 2 - 4 + 1))
    assert starts == [mix_grpo_random_window_start(it, 25, 4) for it in range(400)]
    cfg = cfg_for("mix_grpo", window_strategy="random", group_size=2)
    for it in (3, 4):
        steps = sorted(set(run(cfg, iteration=it, seed=it).transitions.step.tolist()))
        assert steps == list(range(starts[it], starts[it] + 4))
    with pytest.raises(pydantic.ValidationError, match="window_strategy 'random'"):
        cfg_for("mix_grpo", window_strategy="random", num_steps=6, window_size=5)


def _grpo_states_decay(iterations, max_timesteps, every, every_min, stride):
    """grpo_states.py GRPOTrainingStates with sample_strategy 'decay', prog_overlap: the window start at each
    iteration (get_current_timesteps, then update_iteration)."""
    cur, in_group, out = 0, 0, []
    for _ in range(iterations):
        out.append(cur)
        in_group += 1
        progress = cur / max_timesteps
        current = max(every_min, int(every * (1 - progress) + every_min * progress))
        if in_group >= current:
            in_group, cur = 0, cur + stride
    return out


def test_mix_grpo_decay_window_stays_at_each_position_as_grpo_states():
    # T = 25, w = 4, tau = 25, tau_min = 25 // 4 = 6: the reference's positions 0..17 (whole windows) are
    # visited for the same numbers of iterations; here the window then rolls back (theirs runs on to 23).
    ref = _grpo_states_decay(1000, 25 - 2, 25, 6, 1)
    ours = [mix_grpo_decay_window_start(it, 25, 4, 1, 25) for it in range(1000)]
    whole = [i for i, start in enumerate(ref) if start <= 25 - 1 - 4]
    assert ours[: len(whole)] == ref[: len(whole)]
    assert ours[len(whole)] == 0
    assert ours.count(0) > ours.count(10) > ours.count(20)  # fewer iterations as the window moves later


@pytest.mark.parametrize("flash", [False, True])
def test_mix_grpo_trains_exactly_the_window(flash):
    r = run(cfg_for("mix_grpo", flash=flash), iteration=25 * 6)
    t = r.transitions
    assert sorted(set(t.step.tolist())) == [6, 7, 8, 9] and len(t) == 4 * 12
    # ODE before the window from one shared noise: all rows reach the window identical.
    first = t.latents[t.step == 6]
    assert torch.equal(first, first[:1].expand_as(first))


def test_flow_grpo_fast_only_the_window_is_stochastic():
    v = gaussian_velocity()
    cfg = cfg_for("flow_grpo_fast", same_latent=True)
    r = run(cfg, v, seed=5)
    t, sigmas = r.transitions, sd3_sigmas(10)
    steps = sorted(set(t.step.tolist()))
    start = steps[0]
    assert steps == list(range(start, start + 3)) and 1 <= start <= 5 - 3 and len(t) == 3 * 6
    # Before the window: deterministic from the shared noise, so every row's window input is identical.
    first = t.latents[t.step == start]
    assert torch.equal(first, first[:1].expand_as(first))
    # After the window: Euler from the window's last sample.
    y = t.next_latents[t.step == start + 2]
    for i in range(start + 3, 10):
        y = ode_step(v(y, sigmas[i].expand(6)), y, sigmas[i].item(), sigmas[i + 1].item())
    assert torch.equal(r.final_latents, y)


def test_flow_grpo_fast_window_lies_inside_the_range():
    """flow_grpo's pipeline_with_logprob_fast: start = random.randint(lo, hi - w), window [start, start + w),
    so with range (0, T // 2) = (0, 5) and w = 3 the window starts at 0, 1 or 2 and never passes step 4."""
    starts = set()
    for seed in range(40):
        r = run(cfg_for("flow_grpo_fast", window_size=3, window_range=(0, 5), group_size=2), seed=seed)
        steps = sorted(set(r.transitions.step.tolist()))
        assert steps == list(range(steps[0], steps[0] + 3)) and steps[-1] <= 4
        starts.add(steps[0])
    assert starts == {0, 1, 2}


def test_flow_grpo_records_the_first_fraction_with_distinct_noise():
    r = run(cfg_for("flow_grpo", group_size=4, timestep_fraction=0.35))
    t = r.transitions
    assert t.step.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert not torch.equal(t.latents[0], t.latents[1])  # a different initial noise per member
    # CPS: the final step to sigma = 0 has zero variance, so it is the (unrecorded) Euler step.
    r = run(cfg_for("flow_grpo", group_size=4, sde_kind="cps"))
    assert sorted(set(r.transitions.step.tolist())) == list(range(9))


def test_dance_grpo_shared_noise_and_trained_subset():
    calls = []

    def counting_noise(n, generator):
        calls.append(n)
        return noise_fn(n, generator)

    cfg = cfg_for("dance_grpo")
    gen = torch.Generator().manual_seed(0)
    r = sample_group(*cfg, gaussian_velocity(), counting_noise, sd3_sigmas(16), generator=gen)
    assert calls == [1]
    t = r.transitions
    # DanceGRPO's train_grpo_flux.py: timesteps[:, :-1] (T - 1 = 15 steps), randperm per sample, the first
    # int(15 * 0.6) = 9 of it trained; the last step (index 15) never.
    n_train = int((16 - 1) * 0.6)
    for b in range(12):
        steps = t.step[t.sample_id == b]
        assert len(steps) == n_train == 9 and len(set(steps.tolist())) == n_train
    assert int(t.step.max()) <= 14
    step0 = t.latents[t.step == 0]
    assert len(step0) and torch.equal(step0, step0[:1].expand_as(step0))
    assert r.sde_kind == "dance" and r.noise_level == 0.3


def test_dance_grpo_image_is_the_last_steps_data_prediction():
    """DanceGRPO's run_sample_step returns pred_original = latents - sigma * model_output of its last step
    for decoding, not the noisy SDE sample z."""
    seen = []
    v = gaussian_velocity()

    def recording(x, sigma):
        seen.append((x.clone(), sigma.clone()))
        return v(x, sigma)

    sigmas = sd3_sigmas(16)
    r = sample_group(*cfg_for("dance_grpo"), recording, noise_fn, sigmas, generator=torch.Generator().manual_seed(0))
    x_last, sigma_last = seen[-1]
    assert torch.all(sigma_last == sigmas[15]) and r.nfe == 16 * 12
    expected = x_last - sigma_last.view(-1, 1, 1, 1) * v(x_last, sigma_last)
    torch.testing.assert_close(r.final_latents, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- eval sampler


def test_eval_sampler_is_deterministic_plain_euler():
    v, sigmas = gaussian_velocity(), sd3_sigmas(40)
    a = eval_sample(v, noise_fn, sigmas, seeds=[7, 8, 9])
    b = eval_sample(v, noise_fn, sigmas, seeds=[7, 8, 9])
    assert torch.equal(a, b) and not torch.equal(a, eval_sample(v, noise_fn, sigmas, seeds=[7, 8, 10]))
    x = torch.cat([noise_fn(1, torch.Generator().manual_seed(s)) for s in (7, 8, 9)])
    for i in range(40):
        x = x + (sigmas[i + 1] - sigmas[i]) * v(x, sigmas[i].expand(3))
    torch.testing.assert_close(a, x, rtol=0, atol=1e-6)


def test_an_eval_image_depends_on_its_own_seed_only():
    """Image j of a prompt is the same whether 1 or 3 images are sampled with it: the pairing of two
    evaluations (cluster.evaluation) relies on it."""
    v, sigmas = gaussian_velocity(), sd3_sigmas(10)
    three = eval_sample(v, noise_fn, sigmas, seeds=[7, 8, 9])
    torch.testing.assert_close(eval_sample(v, noise_fn, sigmas, seeds=[8]), three[1:2], rtol=0, atol=1e-6)


def test_same_seed_same_rollout():
    a, b = run(cfg_for("g2rpo"), seed=11), run(cfg_for("g2rpo"), seed=11)
    assert torch.equal(a.final_latents, b.final_latents) and torch.equal(
        a.transitions.log_prob, b.transitions.log_prob
    )


# ----------------------------------------------------------------------------- schedules and bad input


def test_sd3_sigmas_closed_form():
    s = sd3_sigmas(4, shift=3.0)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(s, (3 * t / (1 + 2 * t)).float())
    assert s[0] == 1 and s[-1] == 0
    torch.testing.assert_close(sd3_sigmas(5, shift=1.0), torch.linspace(1, 0, 6))


@pytest.mark.parametrize("num_steps,shift", [(10, 3.0), (40, 3.0), (16, 1.0), (25, 5.0), (1, 3.0)])
def test_scheduler_sigmas_are_diffusers_set_timesteps_grid(num_steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    torch.testing.assert_close(scheduler_sigmas(num_steps, shift), scheduler.sigmas.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sigma_schedule("scheduler", num_steps, shift), scheduler.sigmas.float(), rtol=0, atol=1e-6)


def test_the_two_grids_differ_where_flow_grpo_trains():
    # Flow-GRPO (T = 10, timestep_fraction 0.99) trains steps 0..8: on the scheduler's grid step 8 starts at
    # 0.278 and the untrained step 9 at 0.0089; the linear-shift grid has 0.429 and 0.25 there.
    sched, linear = scheduler_sigmas(10), sd3_sigmas(10)
    assert sched[8].item() == pytest.approx(0.2780, abs=1e-4) and sched[9].item() == pytest.approx(0.0089, abs=1e-4)
    assert linear[8].item() == pytest.approx(3 / 7, abs=1e-6) and linear[9].item() == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError, match="unknown sigma schedule"):
        sigma_schedule("karras", 10, 3.0)


def _mixgrpo_post_grid(num_steps, shift, last_sde_index, ratio):
    """MixGRPO sampling_utils.run_sample_step (dpm_apply_strategy 'post'), written from the reference."""
    points = int(max((num_steps - last_sde_index) * ratio, 1))
    t_start = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)[last_sde_index + 1].item()
    t = torch.linspace(t_start, 0, points, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


@pytest.mark.parametrize("start", [0, 5, 17])
def test_compressed_tail_is_mixgrpos_reinterpolated_grid(start):
    s = sd3_sigmas(25)
    ref = _mixgrpo_post_grid(25, 3.0, start + 4 - 1, 0.4)  # window of 4 ending at start + 3
    after = start + 4
    tail = compressed_tail(s, after, ref.numel() - 1, 3.0)
    torch.testing.assert_close(tail, ref, rtol=0, atol=1e-6)
    assert tail[0] == s[after] and tail[-1] == 0
    assert torch.allclose(compressed_tail(s, 3, 22, 3.0), s[3:], atol=1e-6)  # no compression: the grid itself


@pytest.mark.parametrize("iteration", [0, 25 * 7, 25 * 20])
def test_mix_grpo_flash_takes_mixgrpos_number_of_tail_steps(iteration):
    # For T = 25, w = 4, ratio 0.4 at window start 0: n = 21 steps after the window, the reference
    # re-interpolates int(22 * 0.4) = 8 points = 7 DPM steps (int(21 * 0.4) = 8 steps would be one too many).
    r = run(cfg_for("mix_grpo", flash=True), iteration=iteration)
    start = mix_grpo_window_start(iteration, 25, 4, 1, 25)
    tail_steps = _mixgrpo_post_grid(25, 3.0, start + 3, 0.4).numel() - 1
    assert r.velocity_calls == start + 4 + max(1, tail_steps)
    if iteration == 0:
        assert r.velocity_calls == 4 + 7


@pytest.mark.parametrize(
    "sigmas,match",
    [
        ([1.0, 0.5, 0.5, 0.0], "strictly decreasing"),
        ([0.2, 0.5, 0.0], "strictly decreasing"),
        ([1.2, 0.5, 0.0], r"\[0, 1\]"),
        ([1.0, 0.5, -0.1], r"\[0, 1\]"),
        ([1.0], "at least 2"),
    ],
)
def test_bad_schedules_name_the_parameter(sigmas, match):
    with pytest.raises(ValueError, match=f"sigmas.*{match}"):
        check_sigmas(torch.tensor(sigmas))


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        sd3_sigmas(0)
    with pytest.raises(ValueError, match="shift"):
        sd3_sigmas(10, shift=0.0)
    cfg = cfg_for("flow_grpo")
    with pytest.raises(ValueError, match="sigmas must end at sigma=0"):
        sample_group(*cfg, gaussian_velocity(), noise_fn, sd3_sigmas(11)[:-1], generator=torch.Generator())
    with pytest.raises(ValueError, match="num_steps"):
        sample_group(*cfg, gaussian_velocity(), noise_fn, sd3_sigmas(12), generator=torch.Generator())
    with pytest.raises(ValueError, match="iteration"):
        sample_group(*cfg, gaussian_velocity(), noise_fn, sd3_sigmas(10), generator=torch.Generator(), iteration=-1)
    with pytest.raises(ValueError, match="granularity"):
        granular_grid(sd3_sigmas(10), 2, 0)
    with pytest.raises(ValueError, match="k "):
        granular_grid(sd3_sigmas(10), 9, 1)


@pytest.mark.parametrize(
    "name,kw,field",
    [
        ("flow_grpo", {"group_size": 1}, "sampling.group_size"),
        ("g2rpo", {"steps": []}, "algorithm.steps"),
        ("g2rpo", {"granularities": []}, "algorithm.granularities"),
        ("g2rpo", {"granularities": [0, 1]}, "algorithm.granularities"),
        ("g2rpo", {"num_steps": 10, "steps": [9]}, "algorithm.steps"),
        ("g2rpo", {"steps": [1, 1]}, "algorithm.steps"),
        ("mix_grpo", {"num_steps": 10, "window_size": 10}, "algorithm.window_size"),
        ("flow_grpo_fast", {"num_steps": 10, "window_size": 3, "window_range": (2, 4)}, "algorithm.window_range"),
        ("flow_grpo_fast", {"window_range": (3, 3)}, "algorithm.window_range"),
        ("flow_grpo_fast", {"num_steps": 4, "window_size": 5, "window_range": (0, 4)}, "algorithm.window_size"),
        ("dance_grpo", {"sde_kind": "flow_grpo"}, "sampling.sde_kind"),
        ("flow_grpo", {"num_steps": 10, "timestep_fraction": 0.05}, "algorithm.timestep_fraction"),
        ("dance_grpo", {"num_steps": 10, "timestep_fraction": 0.1}, "algorithm.timestep_fraction"),
        # a field's own bound: pydantic names it under the unit's tag (algorithm.<name>.<field>)
        ("mix_grpo", {"flash_compress_ratio": 0.0}, r"algorithm\.(mix_grpo\.)?flash_compress_ratio"),
    ],
)
def test_bad_config_names_the_field(name, kw, field):
    """A bad setting is an error naming its key, whether its own bound or a check against the other
    sections (the unit's `check`, run when the whole experiment config validates)."""
    with pytest.raises(pydantic.ValidationError, match=field):
        cfg_for(name, **kw)


@pytest.mark.parametrize(
    "args,name",
    [
        ((-1, 25, 4, 1, 25), "iteration"),
        ((0, 25, 0, 1, 25), "window_size"),
        ((0, 25, 25, 1, 25), "window_size"),
        ((0, 25, 4, 0, 25), "stride"),
        ((0, 25, 4, 1, 0), "every"),
    ],
)
def test_bad_window_arguments_name_the_parameter(args, name):
    with pytest.raises(ValueError, match=name):
        mix_grpo_window_start(*args)


def test_registry():
    assert set(ALGORITHMS) == {"flow_grpo", "flow_grpo_fast", "dance_grpo", "mix_grpo", "g2rpo", "diffusion_nft", "awm",
                               "grpo_guard", "flow_dppo", "elbo_pg", "dgpo"}

    class Duplicate(ALGORITHMS["g2rpo"]):  # its `name` default is still 'g2rpo'
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_algorithm(Duplicate)
    assert ALGORITHMS["g2rpo"].__name__ == "G2RPO"  # the refused class did not replace it


class _LastStepOnly(PerStepAlgorithm):
    """A unit outside the registry (a test must not add to the global list): the SDE on the last step
    only, trained, the rest Euler."""

    name: Literal["last_step_only"] = "last_step_only"

    def sample(self, sampling, velocity, init_noise, sigmas, generator, iteration):
        g, num_steps = sampling.group_size, sigmas.numel() - 1
        x = initial_noise(init_noise, g, self.same_latent(sampling), generator)
        modes = ["ode"] * (num_steps - 1) + ["sde"]
        recorder = Recorder()
        final = integrate(velocity, x, sigmas, modes, all_rows(modes, range(num_steps), g), recorder, sampling,
                          generator)
        return trajectory_rollout(self.name, sampling, velocity, recorder, final)


def test_a_unit_samples_through_sample_group_without_registering():
    """sample_group takes any unit: its `sample` is the strategy, and the machinery counts NFE and
    validates the record."""
    unit, sampling = _LastStepOnly(), SamplingConfig(group_size=3, num_steps=5)
    assert "last_step_only" not in ALGORITHMS
    v = gaussian_velocity()
    r = run((unit, sampling), v, seed=2)
    assert r.strategy == "last_step_only" and r.transitions.step.tolist() == [4] * 3
    assert (r.nfe, r.velocity_calls) == (trajectory_nfe(5, 3), 5)
    assert torch.equal(recompute_log_probs(v, r), r.transitions.log_prob)


def test_g2rpo_unsorted_steps_keep_the_mapping():
    v = gaussian_velocity()
    r = run(cfg_for("g2rpo", group_size=2, steps=[5, 0], granularities=[2]), v)
    t = r.transitions
    assert torch.equal(t.step[t.sample_id < 2], torch.full((2,), 5))
    assert torch.equal(r.image_info["branch_step"][r.image_sample_id < 2], torch.full((2,), 5))
    assert torch.equal(recompute_log_probs(v, r), t.log_prob)
