"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117): online RL on the forward process. Implicit positive
and negative velocities around the sampling policy, v+ = (1 - beta) v_old + beta v and
v- = (1 + beta) v_old - beta v, trained with the flow-matching loss weighted by the optimality
probability of each sample's advantage (algorithms/losses.py `nft_loss`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.forward_process import ForwardProcessAlgorithm
from algorithms.losses import nft_loss


@register_algorithm
class DiffusionNFT(ForwardProcessAlgorithm):
    """DiffusionNFT with the NVlabs code's adaptive weighting and its EMA sampling policy (old_policy 'ema')."""

    legacy_keys: ClassVar[dict[str, str]] = {**ForwardProcessAlgorithm.legacy_keys, "learner.nft_beta": "nft_beta"}

    name: Literal["diffusion_nft"] = "diffusion_nft"
    nft_beta: float = Field(
        1.0, gt=0, le=1, description="beta of the implicit policies v+ = (1 - beta) v_old + beta v, "
        "v- = (1 + beta) v_old - beta v, in (0, 1] (the paper: 1, and 0.1 for OCR and multi-reward).",
    )

    def loss(self, v, v_old, target, sigma, advantages, *, learner, v_ref=None, terms=None):
        """nft_loss with learner.adv_clip and the KL weight learner.beta."""
        return nft_loss(v, v_old, target, sigma, advantages, beta=self.nft_beta, adv_clip=learner.adv_clip,
                        v_ref=v_ref, kl_beta=learner.beta)
