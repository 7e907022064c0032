"""GRPO policy losses on per-transition log-probs, with the diagnostics that say whether RL is healthy.

A loss takes per-transition tensors ([N] each) and returns (scalar loss, diagnostics). Losses are
registered by name and chosen by `learner.loss` in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = fn
        return fn

    return wrap


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
    return LOSSES[name]


@dataclass(frozen=True)
class SigmaBins:
    """Edges for per-sigma diagnostics (minRF logs its loss binned by t; a flow RL run needs the same)."""

    edges: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

    def keys(self, prefix: str) -> list[str]:
        return [f"{prefix}/sigma_{lo:.1f}-{hi:.1f}" for lo, hi in zip(self.edges[:-1], self.edges[1:], strict=True)]


def binned_means(values: torch.Tensor, sigma: torch.Tensor, prefix: str, bins: SigmaBins = SigmaBins()) -> dict[str, float]:
    """Mean of `values` per sigma bin; empty bins are left out (not reported as 0)."""
    idx = torch.bucketize(sigma.float(), torch.tensor(bins.edges[1:-1]), right=True)
    out = {}
    for i, key in enumerate(bins.keys(prefix)):
        sel = idx == i
        if sel.any():
            out[key] = values[sel].float().mean().item()
    return out


def pooled_mean_std(parts: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Mean and population std of the union of groups given each group's (count, mean, population std):
    E[x] = sum n_i m_i / N, Var = sum n_i (s_i^2 + m_i^2) / N - E[x]^2."""
    n = sum(c for c, _, _ in parts)
    mean = sum(c * m for c, m, _ in parts) / n
    second = sum(c * (s * s + m * m) for c, m, s in parts) / n
    return mean, max(second - mean * mean, 0.0) ** 0.5


@register_loss("grpo_clip")
def grpo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float = 1e-4,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    sigma: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate of Flow-GRPO (paper Eq. 8) per transition:
    max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = exp(logp - logp_old), averaged, plus beta * mean KL.

    The max takes the pessimistic term, so a transition whose ratio has left the trust region in the
    direction its advantage pushes contributes no gradient.
    """
    if not (log_prob.shape == old_log_prob.shape == advantages.shape) or log_prob.ndim != 1:
        raise ValueError(
            f"log_prob, old_log_prob and advantages must be equal 1-D shapes, got {tuple(log_prob.shape)}, "
            f"{tuple(old_log_prob.shape)}, {tuple(advantages.shape)}"
        )
    if not torch.isfinite(log_prob).all():
        raise ValueError("log_prob has NaN or inf: the policy produced a non-finite velocity")
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(ratio.dtype)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_transition = torch.maximum(unclipped, clipped)
    policy_loss = per_transition.mean()
    loss = policy_loss
    with torch.no_grad():
        diag = {
            "policy/loss": policy_loss.item(),
            # 0.5 E[(log r)^2]: the estimator Flow-GRPO logs; ~KL(old || new) for small steps.
            "policy/approx_kl": (0.5 * log_ratio.pow(2).mean()).item(),
            "policy/clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean().item(),
            "policy/clipfrac_high": (ratio > 1.0 + clip_range).float().mean().item(),
            "policy/clipfrac_low": (ratio < 1.0 - clip_range).float().mean().item(),
            "policy/ratio_mean": ratio.mean().item(),
            "policy/ratio_std": ratio.std(unbiased=False).item(),
            "policy/advantage_abs_mean": adv.abs().mean().item(),
        }
    if kl is not None:
        if kl.shape != log_prob.shape:
            raise ValueError(f"kl shape {tuple(kl.shape)} differs from log_prob shape {tuple(log_prob.shape)}")
        kl_mean = kl.mean()
        loss = loss + beta * kl_mean
        diag["policy/kl"] = kl_mean.item()
    diag["policy/total_loss"] = loss.item()
    if sigma is not None:
        with torch.no_grad():
            diag.update(binned_means(per_transition, sigma, "policy/loss"))
            if kl is not None:
                diag.update(binned_means(kl, sigma, "policy/kl"))
    return loss, diag
