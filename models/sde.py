"""One denoising step of a flow-matching sampler, as pure float32 functions.

Time convention (docs/architecture.md): x_sigma = (1 - sigma) * x0 + sigma * eps, sigma = 1 is noise,
sigma = 0 is data, the model predicts v = eps - x0, and a step goes from sigma to sigma_next < sigma,
so dt = sigma_next - sigma < 0. Two identities are used throughout:

    x0_hat  = x - sigma * v            (the data prediction)
    eps_hat = x + (1 - sigma) * v      (the noise prediction; the score is -eps_hat / sigma)

Every function takes sigma and sigma_next explicitly (floats or [B] tensors): no hidden step counter.

Input checks run on the host without waiting for an accelerator: checks of shapes and of sigmas given as
Python numbers always run; a check that reads a tensor's values (NaN or inf in the velocity or the sample,
the range and order of [B] sigma tensors, a zero std) would make the host wait for the device at every step,
so it runs on CPU tensors (where reading costs no sync) and, on an accelerator, only with
FLOWRAY_DEBUG_CHECKS=1 (`value_checks_on`; FLOWRAY_DEBUG_CHECKS=0 skips them on the CPU too). The samplers
pass Python sigmas from a grid checked once (models/sampling.py), so every sigma check runs there for free.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import torch

SdeKind = Literal["flow_grpo", "dance", "cps"]
SDE_KINDS: tuple[str, ...] = ("flow_grpo", "dance", "cps")
KlForm = Literal["exact", "flow_grpo"]
LogProbForm = Literal["gaussian", "squared_error"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class SdeStepOutput:
    """Result of one stochastic step; every tensor is float32.

    `diffusion` is the SDE's diffusion coefficient s (Flow-GRPO's `std_dev_t`): the Gaussian std of the
    step is s * sqrt(-dt) for the flow_grpo and dance kinds and s itself for cps.
    """

    prev_sample: torch.Tensor  # x_next, [B, ...]
    log_prob: torch.Tensor  # [B], Gaussian log density averaged over the non-batch dims
    mean: torch.Tensor  # [B, ...]
    std: torch.Tensor  # broadcastable to the sample: [B, 1, ..., 1]
    diffusion: torch.Tensor  # [B, 1, ..., 1]


# ----------------------------------------------------------------------------- input checks

DEBUG_CHECKS_ENV = "FLOWRAY_DEBUG_CHECKS"


def value_checks_on(t: torch.Tensor) -> bool:
    """Whether a check may read `t`'s values: with FLOWRAY_DEBUG_CHECKS unset, only on the CPU, where reading
    costs no device sync; FLOWRAY_DEBUG_CHECKS=1 on every device (each check then stalls an accelerator's
    queue once), 0 on none."""
    flag = os.environ.get(DEBUG_CHECKS_ENV, "")
    if flag not in ("", "0", "1"):
        raise ValueError(f"{DEBUG_CHECKS_ENV} must be 1 (check on every device), 0 or unset, got {flag!r}")
    return flag == "1" or (flag == "" and t.device.type == "cpu")


def _as_batch_sigma(
    sigma: float | torch.Tensor, sample: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """sigma as a float32 tensor of shape [B, 1, ..., 1] that broadcasts over `sample`, and its values as a
    CPU tensor [B] for the checks (None where reading them would sync the device: `value_checks_on`).

    A Python number is checked on the host and filled on the device (no host-to-device copy)."""
    batch, ndim = sample.shape[0], sample.ndim
    if isinstance(sigma, torch.Tensor):
        host = sigma.detach().to("cpu", torch.float32) if value_checks_on(sigma) else None
        s = sigma.to(sample.device, torch.float32)
    else:
        host = torch.as_tensor(sigma, dtype=torch.float32)
        if host.ndim == 0:
            s = torch.full((), float(sigma), dtype=torch.float32, device=sample.device)
        else:
            s = host.to(sample.device)
    if s.ndim == 0:
        s = s.expand(batch)
        host = None if host is None else host.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"{name} must be a float or a [B] tensor with B={batch}, got shape {tuple(s.shape)}")
    if host is not None and not torch.all((host >= 0) & (host <= 1)):
        raise ValueError(f"{name} must lie in [0, 1] (sigma=1 is noise, 0 is data), got {host.tolist()}")
    return s.view(batch, *([1] * (ndim - 1))), host


def _check_step(sigma: torch.Tensor | None, sigma_next: torch.Tensor | None) -> None:
    if sigma is not None and sigma_next is not None and not torch.all(sigma_next < sigma):
        raise ValueError(
            f"sigma_next must be < sigma (steps go from noise to data), got sigma={sigma.flatten().tolist()} "
            f"sigma_next={sigma_next.flatten().tolist()}"
        )


def _check_finite(t: torch.Tensor, name: str) -> torch.Tensor:
    if value_checks_on(t) and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} has NaN or inf values (batch rows {bad})")
    return t


def _prepare(velocity, sample, sigma, sigma_next):
    """Validate the step inputs and lift them to float32 (the SDE math never runs in bf16/fp16); returns
    v, x, sigma and sigma_next on the device, and the two sigmas on the host (None: not read)."""
    v = _check_finite(velocity.float(), "velocity")
    x = _check_finite(sample.float(), "sample")
    if v.shape != x.shape:
        raise ValueError(f"velocity shape {tuple(v.shape)} differs from sample shape {tuple(x.shape)}")
    s, s_host = _as_batch_sigma(sigma, x, "sigma")
    s_next, s_next_host = _as_batch_sigma(sigma_next, x, "sigma_next")
    _check_step(s_host, s_next_host)
    return v, x, s, s_next, (s_host, s_next_host)


# ----------------------------------------------------------------------------- Gaussian helpers


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2), averaged over the non-batch dims -> [B].

    Averaging (not summing) follows the Flow-GRPO and DanceGRPO code; their clip range 1e-4 assumes it.
    """
    std = std.expand_as(mean)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.flatten(1).mean(1)


def squared_error_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """-(x - mean)^2 averaged over the non-batch dims -> [B]: the Flow-GRPO code's CPS log-prob with
    every constant removed (flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, sde_type 'cps').

    Its log-ratio is the Gaussian one times 2 std^2, so its clip range (1e-5 in the fast configs of
    flow_grpo/config/grpo.py) is not the Gaussian form's.
    """
    return -((x - mean) ** 2).flatten(1).mean(1)


# Named log-prob forms of a step (`sampling.log_prob_form`).
LOG_PROB_FORMS = {"gaussian": gaussian_log_prob, "squared_error": squared_error_log_prob}


def gaussian_kl_equal_std(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(mean_ref, std^2)) = |mean - mean_ref|^2 / (2 std^2), averaged over dims -> [B]."""
    return (((mean - mean_ref) ** 2) / (2 * std.expand_as(mean) ** 2)).flatten(1).mean(1)


# The std that divides the KL, by form: 'exact' uses the step's std; 'flow_grpo' uses the diffusion
# coefficient s without sqrt(-dt), as the Flow-GRPO code does (its published beta was tuned so).
KL_SCALES = {"exact": lambda out: out.std, "flow_grpo": lambda out: out.diffusion}


def kl_scale(out: SdeStepOutput, form: KlForm) -> torch.Tensor:
    """The std that divides the KL under `form` (`KL_SCALES`)."""
    if form not in KL_SCALES:
        raise ValueError(f"unknown KL form {form!r}; expected one of {sorted(KL_SCALES)}")
    return KL_SCALES[form](out)


def kl_to_reference(out: SdeStepOutput, mean_ref: torch.Tensor, form: KlForm = "flow_grpo") -> torch.Tensor:
    """Per-sample KL between the policy's step Gaussian and the reference policy's -> [B]."""
    return gaussian_kl_equal_std(out.mean, mean_ref.float(), kl_scale(out, form))


# ----------------------------------------------------------------------------- step means and stds


def _flow_grpo_mean_std(v, x, sigma, sigma_next, a):
    """Flow-GRPO SDE (paper Eq. 9): s = a * sqrt(sigma / (1 - sigma)),
    mean = x + (v + s^2 / (2 sigma) * eps_hat) dt, std = s * sqrt(-dt).

    At sigma = 1 the denominator 1 - sigma would be 0; Flow-GRPO substitutes the first sigma below 1,
    which for the first step of a schedule is sigma_next.
    """
    dt = sigma_next - sigma
    denom_sigma = torch.where(sigma >= 1.0, sigma_next, sigma)
    s = a * torch.sqrt(sigma / (1.0 - denom_sigma))
    eps_hat = x + (1.0 - sigma) * v
    mean = x + (v + s**2 / (2.0 * sigma) * eps_hat) * dt
    return mean, s * torch.sqrt(-dt), s


def _dance_mean_std(v, x, sigma, sigma_next, eta):
    """DanceGRPO SDE: the same drift with a constant diffusion eta; std = eta * sqrt(-dt)."""
    dt = sigma_next - sigma
    s = torch.full_like(sigma, float(eta))
    eps_hat = x + (1.0 - sigma) * v
    mean = x + (v + s**2 / (2.0 * sigma) * eps_hat) * dt
    return mean, s * torch.sqrt(-dt), s


def _cps_mean_std(v, x, sigma, sigma_next, a):
    """Coefficient-preserving sampling: s = sigma_next * sin(a * pi / 2),
    mean = (1 - sigma_next) * x0_hat + sqrt(sigma_next^2 - s^2) * eps_hat, std = s."""
    s = sigma_next * math.sin(a * math.pi / 2.0)
    x0_hat = x - sigma * v
    eps_hat = x + (1.0 - sigma) * v
    mean = (1.0 - sigma_next) * x0_hat + torch.sqrt(torch.clamp(sigma_next**2 - s**2, min=0.0)) * eps_hat
    return mean, s, s


_MEAN_STD = {"flow_grpo": _flow_grpo_mean_std, "dance": _dance_mean_std, "cps": _cps_mean_std}


def _has_zero_std(kind: str, sigma: torch.Tensor | None, sigma_next: torch.Tensor | None, a: float) -> bool:
    """Whether a row's step std is 0, from the same formula on the host sigmas [B] (False when not read)."""
    if sigma is None or sigma_next is None:
        return False
    zeros = torch.zeros(sigma.shape[0], 1)
    _, std, _ = _MEAN_STD[kind](zeros, zeros, sigma.view(-1, 1), sigma_next.view(-1, 1), a)
    return not torch.all(std > 0)


# ----------------------------------------------------------------------------- public steps


def sde_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    noise_level: float,
    kind: SdeKind = "flow_grpo",
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    log_prob_form: LogProbForm = "gaussian",
) -> SdeStepOutput:
    """One Gaussian policy step x -> x_next and its log-prob in the named `log_prob_form`.

    Draws x_next = mean + std * noise, or, given `prev_sample`, evaluates that sample's log-prob
    instead of drawing (how the learner recomputes log-probs of stored transitions). Gradients flow
    through the mean (the velocity), never through the stored sample.
    """
    if kind not in _MEAN_STD:
        raise ValueError(f"unknown SDE kind {kind!r}; expected one of {SDE_KINDS}")
    if log_prob_form not in LOG_PROB_FORMS:
        raise ValueError(f"unknown log_prob_form {log_prob_form!r}; expected one of {sorted(LOG_PROB_FORMS)}")
    if noise_level < 0 or not math.isfinite(noise_level):
        raise ValueError(f"noise_level must be a finite number >= 0, got {noise_level}")
    v, x, s, s_next, host_sigmas = _prepare(velocity, sample, sigma, sigma_next)
    mean, std, diffusion = _MEAN_STD[kind](v, x, s, s_next, noise_level)
    if noise_level == 0:
        # A zero-noise SDE is the deterministic step; it has no density to evaluate.
        if prev_sample is not None:
            raise ValueError("noise_level=0 gives a deterministic step: there is no log-prob to evaluate")
        return SdeStepOutput(mean, torch.zeros(x.shape[0], device=x.device), mean, std, diffusion)
    if _has_zero_std(kind, *host_sigmas, noise_level):
        raise ValueError(
            f"the {kind} step has zero std (sigma_next=0 for cps): use ode_step for a deterministic final step"
        )
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        elif noise.shape != x.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from sample shape {tuple(x.shape)}")
        prev_sample = mean + std * noise.float()
    else:
        if prev_sample.shape != x.shape:
            raise ValueError(f"prev_sample shape {tuple(prev_sample.shape)} differs from sample shape {tuple(x.shape)}")
        prev_sample = _check_finite(prev_sample.detach().float(), "prev_sample")
    log_prob = LOG_PROB_FORMS[log_prob_form](prev_sample.detach(), mean, std)
    return SdeStepOutput(prev_sample, log_prob, mean, std, diffusion)


def ode_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
) -> torch.Tensor:
    """Euler step of the probability-flow ODE: x_next = x + (sigma_next - sigma) * v."""
    v, x, s, s_next, _ = _prepare(velocity, sample, sigma, sigma_next)
    return x + (s_next - s) * v


def dpm_solver_2m_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    prev_x0: torch.Tensor | None = None,
    sigma_prev: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver++(2M) step for flow matching (Lu et al. 2022, Alg. 2) -> (x_next, x0_hat).

    With alpha = 1 - sigma and lambda = log(alpha / sigma): x_next = (sigma_next / sigma) x
    + alpha_next (1 - e^{-h}) D, h = lambda_next - lambda, where D = x0_hat (first order) or
    D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev, r = h_prev / h (second order, given the previous
    step's x0_hat and sigma). The step to sigma_next = 0 is first order (it returns x0_hat), as
    diffusers' `lower_order_final` does; a previous step from sigma = 1 also falls back to first order.
    Return x0_hat and pass it as `prev_x0` to the next call.
    """
    v, x, s, s_next, (s_host, _) = _prepare(velocity, sample, sigma, sigma_next)
    x0 = x - s * v
    alpha, alpha_next = 1.0 - s, 1.0 - s_next
    final = s_next <= 0
    # e^{-h} = (sigma_next / alpha_next) * (alpha / sigma): computed without logs so sigma = 1 gives 0.
    exp_neg_h = torch.where(final, torch.zeros_like(s), s_next * alpha / (torch.where(final, 1.0, alpha_next) * s))
    d = x0
    if prev_x0 is not None:
        if sigma_prev is None:
            raise ValueError("dpm_solver_2m_step: prev_x0 given without sigma_prev")
        s_prev, s_prev_host = _as_batch_sigma(sigma_prev, x, "sigma_prev")
        if s_prev_host is not None and s_host is not None and not torch.all(s_prev_host > s_host):
            raise ValueError("sigma_prev must be > sigma (the previous step came from higher noise)")
        second = (~final) & (s_prev < 1.0) & (s < 1.0)

        def lam(t):
            return torch.log((1.0 - t).clamp_min(1e-12)) - torch.log(t.clamp_min(1e-12))

        h = lam(torch.where(final, 0.5, s_next)) - lam(s)
        h_prev = lam(s) - lam(torch.where(second, s_prev, 0.5))
        r = h_prev / h
        d2 = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * prev_x0.float()
        d = torch.where(second, d2, x0)
    x_next = torch.where(final, x0, (s_next / s) * x + alpha_next * (1.0 - exp_neg_h) * d)
    return x_next, x0
