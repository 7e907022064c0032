"""The losses' math, with the diagnostics that say whether RL is healthy: pure tensor functions.

The algorithm units (algorithms/) call these from their `loss`, one call signature per family:
- per step (Flow-GRPO, DanceGRPO, MixGRPO, G2RPO): per-transition tensors ([N] each: log-probs of stored
  SDE steps) into `grpo_clip_loss`;
- forward process (DiffusionNFT, AWM): velocities at re-noised final samples, v* [N, ...], sigma and
  advantages [N], target = eps - x0 (learner/forward_process.py draws x_t and feeds them).
Every loss returns (scalar loss, `Diagnostics`). The diagnostics stay device tensors until read: reading
one on the host makes the host wait for an accelerator's queue, so the learner keeps its micro-batches'
diagnostics as tensors and reads them once per iteration (`DiagnosticSums`), and the input checks that
read values run where that is free (models/sde.py `value_checks_on`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from models.sde import value_checks_on


@dataclass(frozen=True)
class SigmaBins:
    """Edges for per-sigma diagnostics (minRF logs its loss binned by t; a flow RL run needs the same)."""

    edges: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

    def keys(self, prefix: str) -> list[str]:
        return [f"{prefix}/sigma_{lo:.1f}-{hi:.1f}" for lo, hi in zip(self.edges[:-1], self.edges[1:], strict=True)]


def binned_means(values: torch.Tensor, sigma: torch.Tensor, prefix: str, bins: SigmaBins = SigmaBins()) -> dict[str, float]:
    """Mean of `values` per sigma bin; empty bins are left out (not reported as 0). Reads the values:
    `Diagnostics` calls it on the host copies when the diagnostics are read."""
    idx = torch.bucketize(sigma.float(), torch.tensor(bins.edges[1:-1]), right=True)
    out = {}
    for i, key in enumerate(bins.keys(prefix)):
        sel = idx == i
        if sel.any():
            out[key] = values[sel].float().mean().item()
    return out


def to_host(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """CPU copies of `tensors` (detached, same shapes and dtypes), those on an accelerator in one transfer:
    flattened into one float64 buffer, which holds every float dtype's values and ints below 2^53 exactly."""
    out = [t.detach() for t in tensors]
    remote = [i for i, t in enumerate(out) if t.device.type != "cpu"]
    if remote:
        flat = torch.cat([out[i].reshape(-1).to(torch.float64) for i in remote]).cpu()
        for i, part in zip(remote, flat.split([out[i].numel() for i in remote]), strict=True):
            out[i] = part.view(out[i].shape).to(out[i].dtype)
    return out


class Diagnostics(Mapping[str, float]):
    """A loss's diagnostics as a mapping name -> float whose values stay tensors until first read.

    `scalars`: name -> detached 0-dim tensor; `binned`: prefix -> (values [N], sigma [N]), reported as the
    mean per sigma bin (`binned_means`, '<prefix>/sigma_<lo>-<hi>'). Reading a key, iterating or `read_all`
    moves everything unread to the host at once; `scalars` and `binned` can be inspected without reading.
    """

    def __init__(self) -> None:
        self.scalars: dict[str, torch.Tensor] = {}
        self.binned: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._values: dict[str, float] | None = None

    def scalar(self, name: str, value: torch.Tensor) -> None:
        self.scalars[name] = value.detach()

    def bin(self, prefix: str, values: torch.Tensor, sigma: torch.Tensor) -> None:
        self.binned[prefix] = (values.detach(), sigma.detach())

    @staticmethod
    def read_all(diags: Sequence[Diagnostics]) -> None:
        """Read every unread one of `diags` to the host in one transfer (`to_host`)."""
        unread = [d for d in diags if d._values is None]
        tensors = []
        for d in unread:
            tensors += [*d.scalars.values(), *(t for pair in d.binned.values() for t in pair)]
        host = iter(to_host(tensors))
        for d in unread:
            values = {name: next(host).item() for name in d.scalars}
            for prefix in d.binned:
                values.update(binned_means(next(host), next(host), prefix))
            d._values = values

    def _read(self) -> dict[str, float]:
        if self._values is None:
            Diagnostics.read_all([self])
        return self._values

    def __getitem__(self, name: str) -> float:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


class DiagnosticSums:
    """Row-weighted means of an iteration's micro-batch diagnostics: kept as tensors as they come, read to
    the host once (`means`), then averaged as sum(value * rows) / sum(rows) per name over the micro-batches
    that report it (an empty sigma bin does not count)."""

    def __init__(self) -> None:
        self.parts: list[tuple[Diagnostics, float]] = []

    def add(self, diag: Diagnostics, rows: float) -> None:
        self.parts.append((diag, rows))

    def means(self) -> dict[str, float]:
        Diagnostics.read_all([d for d, _ in self.parts])
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, float] = defaultdict(float)
        for diag, rows in self.parts:
            for name, value in diag.items():
                sums[name] += value * rows
                counts[name] += rows
        return {name: sums[name] / counts[name] for name in sums}


def pooled_mean_std(parts: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Mean and population std of the union of groups given each group's (count, mean, population std):
    E[x] = sum n_i m_i / N, Var = sum n_i (s_i^2 + m_i^2) / N - E[x]^2."""
    n = sum(c for c, _, _ in parts)
    mean = sum(c * m for c, m, _ in parts) / n
    second = sum(c * (s * s + m * m) for c, m, s in parts) / n
    return mean, max(second - mean * mean, 0.0) ** 0.5


def _ratio_diagnostics(policy_loss: torch.Tensor, log_ratio: torch.Tensor, ratio: torch.Tensor,
                       adv: torch.Tensor) -> Diagnostics:
    """The diagnostics every ratio-based per-step loss logs (the clip or mask share is the loss's own)."""
    diag = Diagnostics()
    with torch.no_grad():
        diag.scalar("policy/loss", policy_loss)
        # 0.5 E[(log r)^2]: the estimator Flow-GRPO logs; ~KL(old || new) for small steps.
        diag.scalar("policy/approx_kl", 0.5 * log_ratio.pow(2).mean())
        diag.scalar("policy/ratio_mean", ratio.mean())
        diag.scalar("policy/ratio_std", ratio.std(unbiased=False))
        diag.scalar("policy/advantage_abs_mean", adv.abs().mean())
    return diag


def grpo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float = 1e-4,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    sigma: torch.Tensor | None = None,
    clip_range_high: float | None = None,
) -> tuple[torch.Tensor, Diagnostics]:
    """Clipped surrogate of Flow-GRPO (paper Eq. 8) per transition:
    max(-A r, -A clip(r, 1 - eps, 1 + eps_high)), r = exp(logp - logp_old), averaged, plus beta * mean KL.
    eps_high = `clip_range_high`, or eps when None (the symmetric range of the papers' code).

    The max takes the pessimistic term, so a transition whose ratio has left the trust region in the
    direction its advantage pushes contributes no gradient.
    """
    if not (log_prob.shape == old_log_prob.shape == advantages.shape) or log_prob.ndim != 1:
        raise ValueError(
            f"log_prob, old_log_prob and advantages must be equal 1-D shapes, got {tuple(log_prob.shape)}, "
            f"{tuple(old_log_prob.shape)}, {tuple(advantages.shape)}"
        )
    if value_checks_on(log_prob) and not torch.isfinite(log_prob).all():
        raise ValueError("log_prob has NaN or inf: the policy produced a non-finite velocity")
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(ratio.dtype)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    per_transition = torch.maximum(unclipped, clipped)
    policy_loss = per_transition.mean()
    loss = policy_loss
    diag = _ratio_diagnostics(policy_loss, log_ratio, ratio, adv)
    with torch.no_grad():
        diag.scalar("policy/clipfrac", ((ratio > 1.0 + high) | (ratio < 1.0 - clip_range)).float().mean())
        diag.scalar("policy/clipfrac_high", (ratio > 1.0 + high).float().mean())
        diag.scalar("policy/clipfrac_low", (ratio < 1.0 - clip_range).float().mean())
    if kl is not None:
        if kl.shape != log_prob.shape:
            raise ValueError(f"kl shape {tuple(kl.shape)} differs from log_prob shape {tuple(log_prob.shape)}")
        kl_mean = kl.mean()
        loss = loss + beta * kl_mean
        diag.scalar("policy/kl", kl_mean)
    diag.scalar("policy/total_loss", loss)
    if sigma is not None:
        diag.bin("policy/loss", per_transition, sigma)
        if kl is not None:
            diag.bin("policy/kl", kl, sigma)
    return loss, diag


def guard_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor,
                    std: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's normalised log-ratio per transition [N] (arXiv 2510.22319, RatioNorm, as Flow-Factory's
    GRPOGuardTrainer computes it): sigma_s * log r + mse / (2 sigma_s), with sigma_s the step's std and
    mse = mean_d (mean - old_mean)^2. For x_next = old_mean + sigma_s eps this equals mean_d(eps * delta),
    delta = mean - old_mean: the raw log-ratio's bias -mse / (2 sigma_s^2) (its on-policy drift below 1) and
    its 1 / sigma_s scale (larger at low noise) are gone, so the ratio centres on 1 at every step.
    Needs the mean-reduced Gaussian log-prob (sampling.log_prob_form 'gaussian')."""
    sigma_s = std.expand_as(mean).flatten(1)[:, 0].to(log_prob.dtype)
    mse = (mean - old_mean).pow(2).flatten(1).mean(1).to(log_prob.dtype)
    return sigma_s * (log_prob - old_log_prob) + mse / (2.0 * sigma_s)


def dppo_keep_mask(ratio: torch.Tensor, advantages: torch.Tensor, kl: torch.Tensor, threshold: float) -> torch.Tensor:
    """Flow-DPPO's per-transition mask (arXiv 2606.11025; UniRL's FlowDPPO): a transition is dropped when its
    step's Gaussian KL between the new and old policies is at least `threshold` AND the ratio has moved the way
    its advantage pushes (r > 1 with A > 0, or r < 1 with A < 0); inside the bound, and for moves back
    towards the old policy, it is kept. Returns a bool [N], True = kept."""
    pushing = ((ratio > 1.0) & (advantages > 0)) | ((ratio < 1.0) & (advantages < 0))
    return ~((kl >= threshold) & pushing)


def dppo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    step_kl: torch.Tensor,
    *,
    threshold: float,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    sigma: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Diagnostics]:
    """Flow-DPPO per transition: mean(keep * (-A r)) with the unclipped ratio r = exp(logp - logp_old) and
    `dppo_keep_mask` on `step_kl` = KL(new || old) of the step's Gaussians [N], plus beta * the mean KL to the
    reference (`kl`; the reference implementation has none, beta 0 in the presets)."""
    if not (log_prob.shape == old_log_prob.shape == advantages.shape == step_kl.shape) or log_prob.ndim != 1:
        raise ValueError(
            f"log_prob, old_log_prob, advantages and step_kl must be equal 1-D shapes, got {tuple(log_prob.shape)}, "
            f"{tuple(old_log_prob.shape)}, {tuple(advantages.shape)}, {tuple(step_kl.shape)}"
        )
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(ratio.dtype)
    keep = dppo_keep_mask(ratio.detach(), adv, step_kl.detach(), threshold)
    per_transition = torch.where(keep, -adv * ratio, torch.zeros_like(ratio))
    policy_loss = per_transition.mean()
    loss = policy_loss
    diag = _ratio_diagnostics(policy_loss, log_ratio, ratio, adv)
    with torch.no_grad():
        diag.scalar("policy/step_kl", step_kl.mean())
        diag.scalar("policy/clipfrac", (~keep).float().mean())  # the masked share: what clipping was
    if kl is not None:
        kl_mean = kl.mean()
        loss = loss + beta * kl_mean
        diag.scalar("policy/kl", kl_mean)
    diag.scalar("policy/total_loss", loss)
    if sigma is not None:
        diag.bin("policy/loss", per_transition, sigma)
    return loss, diag


# ----------------------------------------------------------------------------- the forward-process family


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def velocity_kl(v: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of (v - v_ref)^2: the KL to the reference that DiffusionNFT (train_nft_sd3.py,
    `kl_div_loss`) and Flow-Factory's AWM ('v-based') add, weighted by learner.beta."""
    return _per_sample_mean((v - v_ref.detach()) ** 2)


def nft_optimality(advantages: torch.Tensor, adv_clip: float) -> torch.Tensor:
    """DiffusionNFT's optimality probability r = clip(A, -c, c) / (2c) + 1/2 in [0, 1] (NVlabs code:
    `normalized_advantages_clip`, c = adv_clip_max = 5): A = 0 gives 1/2, A = +-c gives 1 and 0."""
    return (advantages.clamp(-adv_clip, adv_clip) / adv_clip / 2.0 + 0.5).clamp(0.0, 1.0)


def adaptive_x0_loss(v: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample ||x0_hat - x0||^2 / sg(mean |x0_hat - x0|): DiffusionNFT's adaptive weighting (NVlabs
    train_nft_sd3.py: x0_prediction = x_t - t v, weight_factor = mean |x0_prediction - x0| clipped at
    1e-5, in float64). With x_t = (1 - s) x0 + s eps, x0_hat - x0 = -s (v - (eps - x0)), so this is the
    flow-matching error ||v - target||^2 weighted by s^2 / sg(s mean |v - target|)."""
    err = _expand(sigma, v) * (v - target)
    weight = _per_sample_mean(err.detach().double().abs()).clamp_min(1e-5)
    return _per_sample_mean(err**2) / weight.to(err.dtype)


def nft_loss(
    v: torch.Tensor,
    v_old: torch.Tensor,
    target: torch.Tensor,
    sigma: torch.Tensor,
    advantages: torch.Tensor,
    *,
    beta: float,
    adv_clip: float,
    v_ref: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> tuple[torch.Tensor, Diagnostics]:
    """DiffusionNFT (arXiv 2509.16117, Eq. 8 with the code's adaptive weighting): implicit velocities
    v+ = (1 - beta) v_old + beta v and v- = (1 + beta) v_old - beta v; per sample
    (r L(v+) + (1 - r) L(v-)) / beta * adv_clip with L = `adaptive_x0_loss`, r = `nft_optimality`;
    the 1 / beta and adv_clip scales are the NVlabs code's (`ori_policy_loss`, `policy_loss`). Plus
    kl_beta * mean `velocity_kl` when v_ref is given."""
    if not (v.shape == v_old.shape == target.shape) or not (sigma.shape == advantages.shape == (v.shape[0],)):
        raise ValueError(f"nft_loss: shapes v {tuple(v.shape)}, v_old {tuple(v_old.shape)}, target "
                         f"{tuple(target.shape)}, sigma {tuple(sigma.shape)}, advantages {tuple(advantages.shape)}")
    if value_checks_on(v) and not torch.isfinite(v).all():
        raise ValueError("velocity has NaN or inf: the policy produced a non-finite velocity")
    v_old = v_old.detach()
    r = nft_optimality(advantages.detach().to(v.dtype), adv_clip)
    positive = adaptive_x0_loss((1.0 - beta) * v_old + beta * v, target, sigma)
    negative = adaptive_x0_loss((1.0 + beta) * v_old - beta * v, target, sigma)
    per_sample = (r * positive + (1.0 - r) * negative) / beta * adv_clip
    loss = policy_loss = per_sample.mean()
    diag = Diagnostics()
    with torch.no_grad():
        diag.scalar("policy/loss", policy_loss)
        diag.scalar("policy/nft_r_mean", r.mean())
        diag.scalar("policy/nft_positive_loss", positive.mean())
        diag.scalar("policy/nft_negative_loss", negative.mean())
        # how far the trained policy has moved from the sampling one (NVlabs logs `old_deviate`)
        diag.scalar("policy/old_deviation", _per_sample_mean((v - v_old) ** 2).mean())
        diag.scalar("policy/advantage_abs_mean", advantages.abs().mean())
        diag.bin("policy/loss", per_sample, sigma)
    if v_ref is not None:
        kl = velocity_kl(v, v_ref)
        loss = loss + kl_beta * kl.mean()
        diag.scalar("policy/kl", kl.mean())
        diag.bin("policy/kl", kl, sigma)
    diag.scalar("policy/total_loss", loss)
    return loss, diag


def fm_log_likelihood(
    v: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, weighting: str = "uniform", power: float = 0.25
) -> torch.Tensor:
    """AWM's log-likelihood surrogate (arXiv 2509.25050): minus the per-sample flow-matching loss,
    -mean (v - (eps - x0))^2, optionally time-weighted as Flow-Factory's `compute_weighted_log_prob`:
    't' multiplies by sigma; 'ghuber' is -((mse + 1e-10)^p - 1e-10^p) sigma / p. Computed in float64."""
    mse = _per_sample_mean((v.double() - target.double()) ** 2)
    s = sigma.double()
    if weighting == "uniform":
        return -mse
    if weighting == "t":
        return -mse * s
    if weighting == "ghuber":
        return -((mse + 1e-10) ** power - 1e-10**power) * s / power
    raise ValueError(f"algorithm.weighting {weighting!r}: expected 'uniform', 't' or 'ghuber'")


# ----------------------------------------------------------------------------- likelihood from the final sample


def elbo_log_likelihood(v: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The ELBO surrogate of log p(x0) of arXiv 2602.04663 ('adaptive', every script's default): per sample
    -mean (x0_hat - x0)^2 / sg(mean |x0_hat - x0|) at one re-noised (x_t, t), in float64. It is minus
    DiffusionNFT's adaptive x0 loss (`adaptive_x0_loss`): the same self-normalised weighting."""
    return -adaptive_x0_loss(v.double(), target.double(), sigma)


def soft_clip(advantages: torch.Tensor, eta: float) -> torch.Tensor:
    """V-GRPO's advantage soft clipping eta * tanh(A / eta): the identity near 0, bounded by +-eta."""
    return eta * torch.tanh(advantages / eta)


def elbo_pg_loss(
    elbo: torch.Tensor, elbo_old: torch.Tensor, advantages: torch.Tensor, *, proximal: bool = False
) -> tuple[torch.Tensor, Diagnostics]:
    """The policy gradient of arXiv 2602.04663 on the ELBO surrogate, per (sample, t), averaged:
    'EPG' -sg(rho) A ELBO, 'PEPG' (`proximal`) -sg(rho) (A - log rho) ELBO, with log rho = sg(ELBO) -
    ELBO_old the importance weight to the sampling policy, detached and never clipped. Its gradient is the
    flow-matching gradient weighted by rho A: samples with A > 0 have their x0 error lowered."""
    if not (elbo.shape == elbo_old.shape == advantages.shape) or elbo.ndim != 1:
        raise ValueError(f"elbo_pg_loss: shapes elbo {tuple(elbo.shape)}, elbo_old {tuple(elbo_old.shape)}, "
                         f"advantages {tuple(advantages.shape)}")
    adv = advantages.detach().to(elbo.dtype)
    log_ratio = elbo.detach() - elbo_old.detach()
    ratio = torch.exp(log_ratio)
    weight = adv - log_ratio if proximal else adv
    per_sample = -ratio * weight * elbo
    loss = per_sample.mean()
    diag = _ratio_diagnostics(loss, log_ratio, ratio, adv)
    with torch.no_grad():
        diag.scalar("policy/elbo", elbo.mean())
        diag.scalar("policy/clipfrac", torch.zeros((), dtype=elbo.dtype))  # nothing is clipped
    return loss, diag


def dsm_loss(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample denoising score-matching loss mean (v - (eps - x0))^2 in float64 (DGPO's `dsm`)."""
    return _per_sample_mean((v.double() - target.double()) ** 2)


def dgpo_group_weights(dsm_old: torch.Tensor, dsm_ref: torch.Tensor, advantages: torch.Tensor, block: torch.Tensor,
                       group_size: torch.Tensor, beta_dpo: float) -> torch.Tensor:
    """DGPO's (arXiv 2510.08425) detached group weight per row: sigmoid of the group logit
    x_b = (beta_dpo / G) sum_{i in b} A_i (dsm_i - dsm_ref_i) over the rows of its block b (one prompt group at
    one shared draw). x_b is minus the implicit reward difference R(G+) - R(G-): the weight is near 1 while
    the group's preference (positives fitting better than the reference, negatives worse) is violated and
    falls to 0 once it is met. dsm_i is the policy's at the update's start (the loss's stop-gradient)."""
    term = advantages.double() * (dsm_old.double() - dsm_ref.double())
    sums = torch.zeros(int(block.max()) + 1, dtype=term.dtype, device=term.device).index_add_(0, block, term)
    return torch.sigmoid(beta_dpo / group_size.double() * sums[block])


def dgpo_loss(
    v: torch.Tensor, target: torch.Tensor, advantages: torch.Tensor, group_weight: torch.Tensor,
    dsm_old: torch.Tensor, *, clip_range: float, sigma: torch.Tensor,
) -> tuple[torch.Tensor, Diagnostics]:
    """DGPO's loss, mean_i w_b(i) A_i dsm_i: gradient-equivalent to -log sigmoid(-x_b) of the group DPO (up
    to the positive constant G / beta_dpo). With the reference code's `clip_dsm`, a row whose likelihood
    ratio exp(dsm_old - dsm) already moved past 1 + clip_range (A > 0) or below 1 - clip_range (A <= 0)
    keeps its value but loses its gradient."""
    dsm = dsm_loss(v, target)
    adv = advantages.detach().double()
    ratio = torch.exp(dsm_old.double() - dsm.detach())
    clipped = ((adv > 0) & (ratio > 1.0 + clip_range)) | ((adv <= 0) & (ratio < 1.0 - clip_range))
    per_sample = group_weight.double() * adv * torch.where(clipped, dsm.detach(), dsm)
    loss = per_sample.mean()
    diag = _ratio_diagnostics(loss, torch.log(ratio), ratio, adv)
    with torch.no_grad():
        diag.scalar("policy/clipfrac", clipped.double().mean())
        diag.scalar("policy/dgpo_weight_mean", group_weight.double().mean())
        diag.scalar("policy/dsm", dsm.mean())
        diag.bin("policy/loss", per_sample, sigma)
    return loss, diag
