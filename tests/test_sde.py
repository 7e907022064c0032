"""models/sde.py against closed forms, torch.distributions and diffusers' schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from models.sde import (
    SDE_KINDS,
    dpm_solver_2m_step,
    gaussian_kl_equal_std,
    kl_to_reference,
    ode_step,
    sde_step,
)

pytestmark = pytest.mark.unit


def _gaussian_velocity(mu: float, s0: float):
    """Exact v(x, sigma) = E[eps - x0 | x_sigma] for data x0 ~ N(mu, s0^2) (elementwise)."""

    def v(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        m = (1 - sigma) * mu
        var = (1 - sigma) ** 2 * s0**2 + sigma**2
        e_eps = sigma / var * (x - m)
        e_x0 = mu + (1 - sigma) * s0**2 / var * (x - m)
        return e_eps - e_x0

    return v


def _sigmas(n: int, shift: float = 1.0) -> list[float]:
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    s = shift * t / (1 + (shift - 1) * t)
    return s.tolist()


@pytest.mark.parametrize("kind", SDE_KINDS)
def test_log_prob_equals_torch_normal(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g)
    v = torch.randn(4, 3, 5, 5, generator=g)
    sigma, sigma_next = torch.tensor([1.0, 0.8, 0.5, 0.3]), torch.tensor([0.9, 0.6, 0.4, 0.1])
    out = sde_step(v, x, sigma, sigma_next, noise_level=0.7, kind=kind, generator=g)
    ref = torch.distributions.Normal(out.mean, out.std.expand_as(out.mean)).log_prob(out.prev_sample)
    torch.testing.assert_close(out.log_prob, ref.flatten(1).mean(1))
    assert out.log_prob.shape == (4,)


@pytest.mark.parametrize("kind", SDE_KINDS)
def test_given_prev_sample_is_evaluated_not_redrawn(kind):
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    drawn = sde_step(v, x, 0.7, 0.5, noise_level=0.5, kind=kind, generator=g)
    again = sde_step(v, x, 0.7, 0.5, noise_level=0.5, kind=kind, prev_sample=drawn.prev_sample)
    assert torch.equal(again.prev_sample, drawn.prev_sample)
    assert torch.equal(again.log_prob, drawn.log_prob)
    other = sde_step(v + 0.1, x, 0.7, 0.5, noise_level=0.5, kind=kind, prev_sample=drawn.prev_sample)
    assert torch.equal(other.prev_sample, drawn.prev_sample)
    assert not torch.allclose(other.log_prob, drawn.log_prob)


def test_gradient_flows_through_mean_only():
    x = torch.randn(2, 8)
    v = torch.randn(2, 8, requires_grad=True)
    out = sde_step(v, x, 0.6, 0.4, noise_level=0.7, prev_sample=torch.randn(2, 8).requires_grad_())
    out.log_prob.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["flow_grpo", "dance"])
def test_noise_level_zero_is_euler(kind):
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    out = sde_step(v, x, 0.5, 0.3, noise_level=0.0, kind=kind)
    torch.testing.assert_close(out.prev_sample, ode_step(v, x, 0.5, 0.3))
    torch.testing.assert_close(out.prev_sample, x + (0.3 - 0.5) * v)


def test_cps_noise_zero_is_euler():
    # With s = 0 CPS reduces to (1 - sigma_next) x0_hat + sigma_next eps_hat = the Euler step.
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    out = sde_step(v, x, 0.5, 0.3, noise_level=0.0, kind="cps")
    torch.testing.assert_close(out.prev_sample, ode_step(v, x, 0.5, 0.3))


def test_flow_grpo_formula_against_expanded_code_form():
    """The Flow-GRPO code writes the mean as x (1 + s^2 dt / (2 sigma)) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt."""
    x, v = torch.randn(2, 6), torch.randn(2, 6)
    sigma, sigma_next, a = 0.75, 0.55, 0.7
    out = sde_step(v, x, sigma, sigma_next, noise_level=a)
    s = a * math.sqrt(sigma / (1 - sigma))
    dt = sigma_next - sigma
    mean = x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.std.flatten(), torch.full((2,), s * math.sqrt(-dt)))


def test_flow_grpo_sigma_one_uses_next_sigma_in_denominator():
    x, v = torch.randn(1, 4), torch.randn(1, 4)
    out = sde_step(v, x, 1.0, 0.9, noise_level=0.7)
    assert torch.allclose(out.diffusion.flatten(), torch.tensor([0.7 * math.sqrt(1.0 / 0.1)]))
    assert torch.isfinite(out.prev_sample).all()


def test_euler_matches_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ours = x.clone()
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(2, 4, 8, 8, generator=g)
        x = sched.step(v, t, x, return_dict=False)[0]
        ours = ode_step(v, ours, float(sched.sigmas[i]), float(sched.sigmas[i + 1]))
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def _run_sde(kind: str, a: float, n_steps: int, n: int = 200_000, mu=1.5, s0=0.5, shift=1.0, seed=0):
    velocity = _gaussian_velocity(mu, s0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float32)
    sig = _sigmas(n_steps, shift)
    for s, s_next in zip(sig[:-1], sig[1:], strict=True):
        v = velocity(x, s)
        if kind == "cps" and s_next == 0.0:
            x = ode_step(v, x, s, s_next)  # the CPS step to sigma = 0 is deterministic
        else:
            x = sde_step(v, x, s, s_next, noise_level=a, kind=kind, generator=g).prev_sample
    return x.mean().item(), x.std().item()


@pytest.mark.parametrize("a", [0.3, 0.7, 1.0])
def test_flow_grpo_sde_preserves_the_data_marginal(a):
    mean, std = _run_sde("flow_grpo", a, n_steps=200)
    assert abs(mean - 1.5) < 0.01, mean
    assert abs(std - 0.5) < 0.01, std


def test_cps_preserves_coefficients_given_the_true_x0():
    """CPS keeps x_next = (1 - sigma_next) x0 + sigma_next * (unit Gaussian) exactly when x0_hat, eps_hat
    are the true x0 and eps (an oracle velocity): the 'coefficient-preserving' property it is named for."""
    g = torch.Generator().manual_seed(0)
    n, sigma, sigma_next = 200_000, 0.8, 0.5
    x0, eps = torch.full((n, 1), 2.0), torch.randn(n, 1, generator=g)
    x = (1 - sigma) * x0 + sigma * eps
    out = sde_step(eps - x0, x, sigma, sigma_next, noise_level=0.7, kind="cps", generator=g)
    assert abs(out.prev_sample.mean().item() - (1 - sigma_next) * 2.0) < 0.005
    assert abs(out.prev_sample.std().item() - sigma_next) < 0.005


def test_cps_marginal_with_posterior_mean_velocity_is_reported():
    """With the exact marginal velocity (posterior means) CPS keeps the data mean but, because every step
    re-noises a fixed fraction sin(a pi / 2) of sigma_next around the shrunk posterior mean, its std falls
    short of the data's by an amount that grows with a and does not vanish with more steps (measured:
    0.495 at a=0.1, 0.482 at a=0.3, 0.457 at a=0.5, 0.421 at a=0.7 for a true 0.5, 200 steps)."""
    stds = []
    for a in (0.1, 0.7):
        mean, std = _run_sde("cps", a, n_steps=200)
        assert abs(mean - 1.5) < 0.01, mean
        stds.append(std)
    assert abs(stds[0] - 0.5) < 0.01
    assert 0.40 < stds[1] < 0.44


def test_sde_without_score_correction_fails_the_marginal_check():
    """The marginal check can fail: plain Euler-Maruyama with the same noise but no drift correction
    inflates the variance far beyond the tolerance used above."""
    velocity = _gaussian_velocity(1.5, 0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 1, generator=g)
    sig = _sigmas(200)
    for s, s_next in zip(sig[:-1], sig[1:], strict=True):
        out = sde_step(velocity(x, s), x, s, s_next, noise_level=0.7, generator=g)
        x = x + (s_next - s) * velocity(x, s) + (out.prev_sample - out.mean)
    assert abs(x.std().item() - 0.5) > 0.05


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_dance_sde_marginal_is_reported(eta):
    """The Dance SDE (constant eta) is the reverse-time SDE with a constant diffusion, so in continuous time
    it preserves the marginal too; at 200 steps we measured std 0.4979 (eta 0.3) and 0.5008 (eta 1.0)."""
    mean, std = _run_sde("dance", eta, n_steps=200)
    assert abs(mean - 1.5) < 0.01, mean
    assert abs(std - 0.5) < 0.01, std


def test_dpm_solver_matches_diffusers():
    from diffusers import DPMSolverMultistepScheduler

    n = 8
    sched = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", algorithm_type="dpmsolver++",
        solver_order=2, flow_shift=1.0, lower_order_final=True, final_sigmas_type="zero",
    )
    sched.set_timesteps(n)
    sig = [float(s) for s in sched.sigmas]
    velocity = _gaussian_velocity(1.5, 0.5)
    g = torch.Generator().manual_seed(0)
    x_ref = torch.randn(64, 1, 2, 2, generator=g) * sig[0] + (1 - sig[0]) * 1.5
    x = x_ref.clone()
    prev_x0, prev_sigma = None, None
    for i, t in enumerate(sched.timesteps):
        x_ref = sched.step(velocity(x_ref, sig[i]), t, x_ref, return_dict=False)[0]
        x, x0 = dpm_solver_2m_step(velocity(x, sig[i]), x, sig[i], sig[i + 1], prev_x0=prev_x0, sigma_prev=prev_sigma)
        prev_x0, prev_sigma = x0, sig[i]
    torch.testing.assert_close(x, x_ref, rtol=1e-4, atol=1e-4)


def test_dpm_solver_beats_euler_on_few_steps():
    velocity = _gaussian_velocity(1.5, 0.5)
    g = torch.Generator().manual_seed(0)
    x_e = x_d = torch.randn(100_000, 1, generator=g)
    sig = _sigmas(6, shift=3.0)
    prev_x0 = prev_s = None
    for s, s_next in zip(sig[:-1], sig[1:], strict=True):
        x_e = ode_step(velocity(x_e, s), x_e, s, s_next)
        x_d, x0 = dpm_solver_2m_step(velocity(x_d, s), x_d, s, s_next, prev_x0=prev_x0, sigma_prev=prev_s)
        prev_x0, prev_s = x0, s
    err_e = abs(x_e.std().item() - 0.5) + abs(x_e.mean().item() - 1.5)
    err_d = abs(x_d.std().item() - 0.5) + abs(x_d.mean().item() - 1.5)
    assert err_d < err_e


def test_kl_zero_for_equal_means_and_closed_form_otherwise():
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    out = sde_step(v, x, 0.6, 0.4, noise_level=0.7)
    assert torch.equal(kl_to_reference(out, out.mean, "exact"), torch.zeros(3))
    shifted = out.mean + 0.2
    exact = kl_to_reference(out, shifted, "exact")
    code = kl_to_reference(out, shifted, "flow_grpo")
    torch.testing.assert_close(exact, (0.04 / (2 * out.std**2)).flatten())
    torch.testing.assert_close(code, (0.04 / (2 * out.diffusion**2)).flatten())
    # The code form drops the -dt = 0.2 factor of the variance.
    torch.testing.assert_close(code, exact * 0.2)
    p = torch.distributions.Normal(out.mean, out.std.expand_as(out.mean))
    q = torch.distributions.Normal(shifted, out.std.expand_as(out.mean))
    torch.testing.assert_close(exact, torch.distributions.kl_divergence(p, q).mean(1))
    torch.testing.assert_close(gaussian_kl_equal_std(out.mean, shifted, out.std), exact)


@pytest.mark.parametrize(
    "sigma,sigma_next,match",
    [(1.2, 0.5, "sigma must lie in"), (0.5, -0.1, "sigma_next must lie in"), (0.5, 0.5, "sigma_next must be <"),
     (0.3, 0.6, "sigma_next must be <")],
)
def test_bad_sigmas_raise(sigma, sigma_next, match):
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=match):
        sde_step(x, x, sigma, sigma_next, noise_level=0.7)
    with pytest.raises(ValueError, match=match):
        ode_step(x, x, sigma, sigma_next)


def test_nonfinite_velocity_raises_naming_rows():
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    v[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"velocity has NaN or inf values \(batch rows \[1\]\)"):
        sde_step(v, x, 0.5, 0.3, noise_level=0.7)


def test_cps_final_step_demands_ode():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="use ode_step"):
        sde_step(x, x, 0.2, 0.0, noise_level=0.7, kind="cps")


def test_unknown_kind_and_bad_shapes_raise():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="unknown SDE kind"):
        sde_step(x, x, 0.5, 0.3, noise_level=0.7, kind="ddpm")
    with pytest.raises(ValueError, match=r"\[B\] tensor with B=2"):
        sde_step(x, x, torch.tensor([0.5, 0.4, 0.3]), 0.2, noise_level=0.7)
    with pytest.raises(ValueError, match="noise shape"):
        sde_step(x, x, 0.5, 0.3, noise_level=0.7, noise=torch.randn(3, 3))


def test_squared_error_log_prob_is_flow_grpos_cps_log_prob():
    """sde_type 'cps' in flow_grpo's sd3_sde_with_logprob.py: std = sigma_prev sin(a pi/2),
    mean = (x - sigma v)(1 - sigma_prev) + (x + v (1 - sigma)) sqrt(sigma_prev^2 - std^2),
    log_prob = -(prev - mean)^2 averaged over all but the batch dim ("remove all constants")."""
    g = torch.Generator().manual_seed(5)
    x, v, prev = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    sigma, sigma_prev, a = 0.7, 0.55, 0.8
    std = sigma_prev * math.sin(a * math.pi / 2)
    mean = (x - sigma * v) * (1 - sigma_prev) + (x + v * (1 - sigma)) * math.sqrt(sigma_prev**2 - std**2)
    ref = -((prev - mean) ** 2).mean(dim=(1, 2, 3))
    out = sde_step(v, x, sigma, sigma_prev, noise_level=a, kind="cps", prev_sample=prev, log_prob_form="squared_error")
    torch.testing.assert_close(out.log_prob, ref, rtol=1e-6, atol=1e-6)
    # Against the full Gaussian form, the log-ratio of two policies scales by 2 std^2: a clip range of
    # 1e-5 on this form is 1e-5 / (2 std^2) on the Gaussian one.
    v2 = v + 0.01 * torch.randn(v.shape, generator=g)
    sq = [sde_step(w, x, sigma, sigma_prev, noise_level=a, kind="cps", prev_sample=prev, log_prob_form="squared_error")
          for w in (v, v2)]  # fmt: skip
    ga = [sde_step(w, x, sigma, sigma_prev, noise_level=a, kind="cps", prev_sample=prev) for w in (v, v2)]
    torch.testing.assert_close(sq[1].log_prob - sq[0].log_prob, 2 * std**2 * (ga[1].log_prob - ga[0].log_prob),
                               rtol=1e-3, atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="log_prob_form"):
        sde_step(v, x, sigma, sigma_prev, noise_level=a, kind="cps", prev_sample=prev, log_prob_form="mse")


def test_value_checks_read_cpu_tensors_and_host_numbers_always_and_device_values_only_when_asked(monkeypatch):
    """Checks of Python sigmas always run (on the host, for free); checks that read tensor values run on
    CPU tensors, and with FLOWRAY_DEBUG_CHECKS=0 (an accelerator's default: a read would stall it) not at all.
    tests/test_host_syncs.py runs the steps on tensors with no values."""
    x = torch.randn(2, 3)
    nan = x.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="sigma must lie in"):
        sde_step(x, x, torch.tensor([0.5, 1.5]), 0.2, noise_level=0.7)
    with pytest.raises(ValueError, match="sigma_next must be <"):
        ode_step(x, x, torch.tensor([0.5, 0.3]), torch.tensor([0.4, 0.4]))
    with pytest.raises(ValueError, match="sigma_prev must be >"):
        dpm_solver_2m_step(x, x, 0.5, 0.3, prev_x0=x, sigma_prev=torch.tensor([0.6, 0.4]))
    with pytest.raises(ValueError, match="use ode_step"):
        sde_step(x, x, torch.tensor([0.3, 0.2]), torch.tensor([0.1, 0.0]), noise_level=0.7, kind="cps")
    monkeypatch.setenv("FLOWRAY_DEBUG_CHECKS", "0")
    assert torch.isnan(ode_step(nan, x, 0.5, 0.3)).any()  # not read
    ode_step(x, x, torch.tensor([0.5, 0.3]), torch.tensor([0.4, 0.4]))
    with pytest.raises(ValueError, match="sigma must lie in"):
        ode_step(x, x, 1.5, 0.3)
    with pytest.raises(ValueError, match="sigma_next must be <"):
        sde_step(x, x, 0.3, 0.3, noise_level=0.7)
    with pytest.raises(ValueError, match="use ode_step"):
        sde_step(x, x, 0.2, 0.0, noise_level=0.7, kind="cps")  # the std from the host sigmas
